"""Device tokens: HMAC-SHA256 over (device id, client id, generation, expiry), minted by the OTA
endpoint for paired devices.

Format: "v2.<generation>.<expiry unix seconds>.<base64url signature>". The generation is the
device's registry generation (server/pairing): revoking a device bumps it, so every token it
holds stops working at once without a revocation list. The secret lives in
<data_dir>/auth_secret (created once with mode 0600) unless config gives one, so a restart does
not invalidate every device's token (the reference server regenerates its key on each start).

Whatever a client sends as a token is parsed strictly (ASCII, fixed shape): a malformed token
is a plain rejection, never an exception.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("server.auth")

_TOKEN = re.compile(r"v2\.(\d{1,9})\.(\d{1,12})\.([A-Za-z0-9_-]{43})", re.ASCII)
MAX_AUTHORIZATION_CHARS = 512


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


def bearer_token(authorization: str) -> str:
    """The token of an Authorization value ("Bearer xyz" or a bare token), "" if none."""
    value = authorization.strip()[:MAX_AUTHORIZATION_CHARS]
    scheme, _, rest = value.partition(" ")
    return rest.strip() if scheme.lower() == "bearer" else value


@dataclass(slots=True, frozen=True)
class AuthResult:
    reason: str | None  # None: accepted; else why not (for the log, never for the client)
    generation: int | None = None  # from a valid token
    allow_listed: bool = False

    @property
    def ok(self) -> bool:
        return self.reason is None


@dataclass(slots=True)
class TokenAuth:
    secret: bytes
    ttl_seconds: float
    enabled: bool = False
    allowed_devices: frozenset[str] = frozenset()

    def _sign(self, device_id: str, client_id: str, generation: int, expiry: int) -> str:
        msg = f"v2|{device_id.lower()}|{client_id}|{generation}|{expiry}".encode("utf-8", "replace")
        return _b64(hmac.new(self.secret, msg, hashlib.sha256).digest())

    def mint(self, device_id: str, client_id: str, now: float | None = None, generation: int = 0) -> str:
        expiry = int((now if now is not None else time.time()) + self.ttl_seconds)
        return f"v2.{generation}.{expiry}.{self._sign(device_id, client_id, generation, expiry)}"

    def verify_token(self, token: str, device_id: str, client_id: str, now: float | None = None) -> AuthResult:
        m = _TOKEN.fullmatch(token) if len(token) <= MAX_AUTHORIZATION_CHARS else None
        if m is None:
            return AuthResult("malformed token")
        generation, expiry, signature = int(m.group(1)), int(m.group(2)), m.group(3)
        expected = self._sign(device_id, client_id, generation, expiry)
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            return AuthResult("bad signature (token minted for another device/client, or another secret)")
        if expiry < (now if now is not None else time.time()):
            return AuthResult("expired token")
        return AuthResult(None, generation=generation)

    def verify(self, token: str, device_id: str, client_id: str, now: float | None = None) -> str | None:
        """None when valid, else the reason it is not (for the log, never for the client)."""
        return self.verify_token(token, device_id, client_id, now).reason

    def check(self, device_id: str, client_id: str, authorization: str) -> AuthResult:
        """Decide a connection's credentials (the registry generation is checked by the caller)."""
        if not self.enabled:
            return AuthResult(None)
        if device_id.lower() in self.allowed_devices:
            return AuthResult(None, allow_listed=True)
        token = bearer_token(authorization)
        if not token:
            return AuthResult("no token")
        return self.verify_token(token, device_id, client_id)
