"""Device tokens: HMAC-SHA256 over (device id, client id, expiry), minted by the OTA endpoint.

Format: "v1.<expiry unix seconds>.<base64url signature>". The secret lives in
<data_dir>/auth_secret (created once with mode 0600) unless config gives one, so a restart does
not invalidate every device's token (the reference server regenerates its key on each start).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("server.auth")


def load_or_create_secret(path: Path) -> bytes:
    try:
        text = path.read_text().strip()
        if text:
            return text.encode()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    log.info("created a new auth secret in %s", path)
    return value.encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(slots=True)
class TokenAuth:
    secret: bytes
    ttl_seconds: float
    enabled: bool = False
    allowed_devices: frozenset[str] = frozenset()

    def _sign(self, device_id: str, client_id: str, expiry: int) -> str:
        msg = f"v1|{device_id.lower()}|{client_id}|{expiry}".encode()
        return _b64(hmac.new(self.secret, msg, hashlib.sha256).digest())

    def mint(self, device_id: str, client_id: str, now: float | None = None) -> str:
        expiry = int((now if now is not None else time.time()) + self.ttl_seconds)
        return f"v1.{expiry}.{self._sign(device_id, client_id, expiry)}"

    def verify(self, token: str, device_id: str, client_id: str, now: float | None = None) -> str | None:
        """None when valid, else the reason it is not (for the log, never for the client)."""
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != "v1" or not parts[1].isdigit():
            return "malformed token"
        expiry = int(parts[1])
        expected = self._sign(device_id, client_id, expiry)
        if not hmac.compare_digest(expected, parts[2]):
            return "bad signature (token minted for another device/client, or another secret)"
        if expiry < (now if now is not None else time.time()):
            return "expired token"
        return None

    def check(self, device_id: str, client_id: str, authorization: str) -> str | None:
        """Decide a connection. None = accept; a string = the reason to reject with 401."""
        if not self.enabled:
            return None
        if device_id.lower() in self.allowed_devices:
            return None
        token = authorization.strip()
        scheme, _, rest = token.partition(" ")
        if scheme.lower() == "bearer":
            token = rest.strip()
        if not token:
            return "no token"
        return self.verify(token, device_id, client_id)
