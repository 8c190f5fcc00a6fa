"""Device and client ids from the outside world, checked before anything logs or stores them.

Ids arrive in headers (`Device-Id`, `Client-Id`), query strings (browser pages) and OTA bodies
(`mac_address`, `uuid`). Only two shapes are real: a MAC address (the firmware's id) and a UUID
(client ids; some boards use one as device id). Anything else is never echoed raw: a value with
`%0A` or a newline could forge log lines, and a placeholder such as `None` (py-xiaozhi with
`--skip-activation` and a fresh config sends `Device-Id: None`) would make every such client
share one identity, one memory and one persona.

`resolve_identity()` is the one rule for a connection: a valid device id is used as is; else a
valid client id (stable across reconnects, so memory still works); else a fresh per-connection
identity that nothing else can share. The fallback is logged once per offending value and
address, not per message.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger("server.device_id")

_HEX2 = "[0-9a-f]{2}"
_MAC = re.compile(rf"^{_HEX2}([:-]){_HEX2}(\1{_HEX2}){{4}}$")
_MAC_BARE = re.compile(r"^[0-9a-f]{12}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# Values that look like an id but name nobody: every client sending one would share it.
_PLACEHOLDER_MACS = {"00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff"}
_NIL_UUIDS = {"00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff"}
# Longest raw value we even look at; anything longer is malformed by definition.
MAX_RAW_LENGTH = 64

IdentitySource = Literal["device_id", "client_id", "connection"]


def normalize_device_id(raw: object) -> str | None:
    """The canonical form of a MAC (`aa:bb:cc:dd:ee:ff`) or UUID (lowercase, dashed), or None
    for anything else: missing, empty, `None`/`null`, placeholders, other shapes, control chars."""
    if not isinstance(raw, str) or not raw or len(raw) > MAX_RAW_LENGTH:
        return None
    value = raw.strip().lower()
    if _MAC.match(value):
        mac = value.replace("-", ":")
    elif _MAC_BARE.match(value):
        mac = ":".join(value[i:i + 2] for i in range(0, 12, 2))
    elif _UUID.match(value):
        return None if value in _NIL_UUIDS else value
    else:
        return None
    return None if mac in _PLACEHOLDER_MACS else mac


def normalize_client_id(raw: object) -> str | None:
    """A client id usable as an identity: a non-nil UUID (py-xiaozhi and the firmware generate
    one per install). Free-text client ids (`web_test_client`) are shared by many users."""
    value = normalize_device_id(raw)
    return value if value is not None and _UUID.match(value) else None


def is_valid_device_id(raw: object) -> bool:
    return normalize_device_id(raw) is not None


_SAFE_CLIENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def safe_client_id(raw: object) -> str:
    """A client id kept for token binding and logs: a UUID (canonical), another short plain
    token (`web_test_client`) as sent, or "" for anything else (control characters, `None`)."""
    value = normalize_client_id(raw)
    if value is not None:
        return value
    if not isinstance(raw, str):
        return ""
    raw = raw.strip()
    if raw.lower() in ("none", "null", "undefined") or not _SAFE_CLIENT_ID.match(raw):
        return ""
    return raw


def loggable(raw: object, limit: int = 40) -> str:
    """A raw value made safe to write into a log line: printable ASCII only, bounded length,
    quoted. Control characters (CR/LF forge log lines) become escapes."""
    if raw is None:
        return "<missing>"
    text = str(raw)
    # ascii() escapes CR, LF, every other control character and all non-ASCII.
    return ascii(text[:limit]) + ("..." if len(text) > limit else "")


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """Who a connection is. `device_id` is always a valid MAC or UUID string; `source` says
    where it came from; `anonymous` means it lasts only for this connection (no memory is
    carried over and none is shared)."""

    device_id: str
    source: IdentitySource
    client_id: str = ""  # the validated client id, or "" when the client sent none usable

    @property
    def anonymous(self) -> bool:
        return self.source == "connection"


class _SeenOnce:
    """Remembers recently logged keys so a bad value is logged once, with a bounded memory."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._keys: OrderedDict[str, None] = OrderedDict()

    def first(self, key: str) -> bool:
        if key in self._keys:
            self._keys.move_to_end(key)
            return False
        self._keys[key] = None
        if len(self._keys) > self.size:
            self._keys.popitem(last=False)
        return True

    def clear(self) -> None:
        self._keys.clear()


_logged = _SeenOnce()


def resolve_identity(device_id: object, client_id: object = None, *, remote: str = "",
                     where: str = "connection") -> DeviceIdentity:
    """The identity for one connection (rule above). Never raises, never returns a shared id."""
    valid_client = normalize_client_id(client_id) or ""
    valid_device = normalize_device_id(device_id)
    if valid_device is not None:
        return DeviceIdentity(valid_device, "device_id", valid_client)
    if valid_client:
        identity = DeviceIdentity(valid_client, "client_id", valid_client)
    else:
        identity = DeviceIdentity(str(uuid.uuid4()), "connection", "")
    host = remote.rsplit(":", 1)[0] if remote.count(":") == 1 else remote
    if _logged.first(f"{where}|{host}|{device_id!r}|{identity.source}"):
        what = "no device id" if device_id in (None, "") else f"device id {loggable(device_id)} is not a MAC or UUID"
        using = ("its client id" if identity.source == "client_id"
                 else "a per-connection identity (no memory carried over)")
        log.warning("%s from %s: %s; using %s %s", where, host or "?", what, using, identity.device_id)
    return identity
