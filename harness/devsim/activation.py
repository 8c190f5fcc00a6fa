"""The firmware's activation loop (Application::CheckNewVersion + Ota::Activate), for a server
that answers the OTA check with an `activation` section (xiaozhi-protocol.md §5.5):

    loop:
      POST ota; no activation code/challenge -> done (the answer carries the token)
      show and speak the code
      up to 10x: POST <ota_url>activate -> 200 done | 202 wait 3 s | other wait 10 s
      (then POST ota again)

`on_code` plays the user reading the code off the screen (a test runs the pairing CLI there).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from harness.devsim.identity import (
    firmware_ota_headers,
    ota_url,
    post_raw,
    py_xiaozhi_ota_headers,
)

ACTIVATE_TRIES = 10  # Application::CheckNewVersion
WAIT_ACCEPTED_S = 3.0  # HTTP 202 (ESP_ERR_TIMEOUT)
WAIT_ERROR_S = 10.0  # anything else


@dataclass
class ActivationLog:
    codes: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    activate_statuses: list[int] = field(default_factory=list)
    ota_rounds: int = 0


def activate_url(ota: str) -> str:
    # Ota::Activate appends "activate" to an URL ending in "/", else "/activate".
    return ota + ("activate" if ota.endswith("/") else "/activate")


def activate_body(device: Any, challenge: str) -> str:
    """Ota::GetActivationPayload: `{}` for a board without an eFuse serial number (Activation-
    Version 1); with one, HMAC-SHA256 of the challenge under the raw eFuse key. py-xiaozhi's v2
    mode wraps the same object in "Payload" and keys the HMAC with the *text* of its efuse.json
    `hmac_key` (a hex SHA-256 of its machine fingerprint)."""
    cfg = device.config
    if cfg.py_xiaozhi:
        key_text = (cfg.efuse_hmac_key
                    or hashlib.sha256(f"py-xiaozhi-sim|{device.identity.client_id}".encode()).hexdigest())
        payload = {"algorithm": "hmac-sha256", "serial_number": f"SN-{device.identity.mac.replace(':', '')}",
                   "challenge": challenge,
                   "hmac": hmac.new(key_text.encode(), challenge.encode(), hashlib.sha256).hexdigest()}
        return json.dumps({"Payload": payload})
    if not cfg.serial_number:
        return "{}"
    key = bytes.fromhex(cfg.efuse_hmac_key)  # esp_hmac_calculate(HMAC_KEY0, challenge)
    return json.dumps({"algorithm": "hmac-sha256", "serial_number": cfg.serial_number, "challenge": challenge,
                       "hmac": hmac.new(key, challenge.encode(), hashlib.sha256).hexdigest()},
                      separators=(",", ":"))


async def activate_like_firmware(device: Any, http_base_url: str,
                                 on_code: Callable[[str, str], Awaitable[None]] | None = None, *,
                                 max_ota_rounds: int = 3, wait_accepted_s: float = WAIT_ACCEPTED_S,
                                 wait_error_s: float = WAIT_ERROR_S) -> ActivationLog:
    """Run the loop until an OTA answer has no activation section; return what happened. The
    device's ws url/token are stored by its own `ota()` as on the real board."""
    url = ota_url(http_base_url)
    record = ActivationLog()
    for _ in range(max_ota_rounds):
        data = await device.ota(http_base_url)
        record.ota_rounds += 1
        activation = data.get("activation")
        if not isinstance(activation, dict) or not (isinstance(activation.get("code"), str)
                                                   or isinstance(activation.get("challenge"), str)):
            return record
        code, message = str(activation.get("code") or ""), str(activation.get("message") or "")
        record.codes.append(code)
        record.messages.append(message)
        if on_code is not None:
            await on_code(code, message)
        challenge = activation.get("challenge")
        if not isinstance(challenge, str):
            continue  # Ota::Activate refuses without a challenge: straight back to the OTA check
        headers = (py_xiaozhi_ota_headers(device.identity) if device.config.py_xiaozhi
                   else firmware_ota_headers(device.identity))
        if device.config.py_xiaozhi or device.config.serial_number:
            headers["Activation-Version"] = "2"
        for _ in range(ACTIVATE_TRIES):
            status, _text = await post_raw(activate_url(url), headers, activate_body(device, challenge),
                                           local_address=device.config.local_address)
            record.activate_statuses.append(status)
            if status == 200:
                break
            await asyncio.sleep(wait_accepted_s if status == 202 else wait_error_s)
    raise TimeoutError(f"still not activated after {max_ota_rounds} OTA rounds: {record}")
