"""The small formulas of the Xiaomi wire protocol (spec: shared/spec/xiaomi-cloud.md §1.4, §4.2).

Pure functions, shared by the client and by the fake cloud in harness/ (so both sides agree by
construction, and the tests check them against values computed by hand)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import string
import time
from typing import Any

from server.xiaomi.errors import BadResponse

JSON_PREFIX = "&&&START&&&"
_ID_ALPHABET = string.ascii_uppercase + string.digits


def parse_account_json(raw: bytes | str, what: str) -> dict[str, Any]:
    """Account answers start with `&&&START&&&`; `nonce` and `userId` are bare integers, and the
    nonce is larger than 2**53. Python's json keeps integers exact, so str(nonce) round-trips."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = text.strip()
    if text.startswith(JSON_PREFIX):
        text = text[len(JSON_PREFIX):]
    try:
        data = json.loads(text)
    except ValueError:
        raise BadResponse(f"{what}: the answer is not JSON ({text[:80]!r})") from None
    if not isinstance(data, dict):
        raise BadResponse(f"{what}: expected a JSON object, got {type(data).__name__}")
    return data


def password_hash(password: str) -> str:
    return hashlib.md5(password.encode()).hexdigest().upper()


def client_sign(nonce: int | str, ssecurity: str) -> str:
    """The STS `clientSign`: base64(sha1("nonce=<nonce>&<ssecurity>"))."""
    return base64.b64encode(hashlib.sha1(f"nonce={nonce}&{ssecurity}".encode()).digest()).decode()


def new_login_device_id() -> str:
    """16 upper-case letters/digits, like the phone apps' passport device id."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(16))


def request_id() -> str:
    return "app_ios_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(30))


def miot_nonce(now: float | None = None) -> str:
    """8 random bytes + the minute counter (big-endian), base64."""
    minutes = int((time.time() if now is None else now) / 60)
    return base64.b64encode(os.urandom(8) + minutes.to_bytes(4, "big")).decode()


def signed_nonce(ssecurity: str, nonce: str) -> str:
    digest = hashlib.sha256(base64.b64decode(ssecurity) + base64.b64decode(nonce)).digest()
    return base64.b64encode(digest).decode()


def miot_signature(uri: str, snonce: str, nonce: str, data: str) -> str:
    """HMAC-SHA256 keyed with the decoded signed nonce over "uri&snonce&nonce&data=<json>";
    `uri` is the path after /app."""
    msg = "&".join([uri, snonce, nonce, "data=" + data])
    return base64.b64encode(hmac.new(base64.b64decode(snonce), msg.encode(), hashlib.sha256).digest()).decode()


def miot_form(uri: str, ssecurity: str, payload: dict[str, Any], now: float | None = None) -> dict[str, str]:
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    nonce = miot_nonce(now)
    snonce = signed_nonce(ssecurity, nonce)
    return {"_nonce": nonce, "data": data, "signature": miot_signature(uri, snonce, nonce, data)}
