"""What the OTA endpoint does about pairing, on top of a DeviceRegistry.

The firmware's own flow (xiaozhi-protocol.md §5.5): an OTA answer with an `activation` section
makes the device show and speak the 6-digit code, then poll `POST .../activate` (202 = not yet,
200 = done) and re-run the OTA check, whose answer then carries the token and no `activation`.
Here the owner confirms the code on the server (`python -m server devices pair 123456`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from server.pairing.config import PairingConfig
from server.pairing.registry import CodeTaken, DeviceRecord, DeviceRegistry, PendingCode

log = logging.getLogger("server.pairing")

_MESSAGE = {
    "zh": "配对码 {code}\n请在服务器上确认",
    "en": "Pairing code {code}\nconfirm it on the server",
}


@dataclass(slots=True, frozen=True)
class OtaDecision:
    paired: bool
    generation: int = 0
    # The OTA answer's `activation` section while the device waits for the owner.
    activation: dict[str, Any] | None = None
    # Too many codes waiting: answer "retry later" (the firmware retries with back-off).
    busy: bool = False


ActivationProof = Literal["no-key", "proven", "bad"]
_HEX_KEY = re.compile(r"^(?:[0-9a-f]{2}){16,64}$")


def normalize_key(text: str) -> str | None:
    """A device HMAC key as lowercase hex (16-64 bytes), or None when it is not one."""
    value = text.strip().lower()
    return value if _HEX_KEY.match(value) else None


def expected_hmacs(key_hex: str, challenge: str) -> list[str]:
    """The HMACs a holder of the key computes: the firmware signs with the raw eFuse key (the hex
    decoded); py-xiaozhi signs with the hex text of its `hmac_key` (efuse.json) as the key."""
    msg = challenge.encode("utf-8", "replace")
    return [hmac.new(key, msg, hashlib.sha256).hexdigest()
            for key in (bytes.fromhex(key_hex), key_hex.encode())]


def new_code() -> str:
    return f"{secrets.randbelow(1_000_000):06d}"


class Pairing:
    def __init__(self, registry: DeviceRegistry, config: PairingConfig,
                 clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.config = config
        self.clock = clock

    async def on_ota(self, *, device_id: str, client_id: str, board: str, firmware: str, address: str,
                     language: str = "en") -> OtaDecision:
        now = self.clock()
        record = await self.registry.get(device_id)
        if record is not None and record.paired and record.client_id == client_id:
            await self.registry.touch(device_id, client_id, board, firmware, now)
            return OtaDecision(paired=True, generation=record.generation)
        pending = await self._pending_code(device_id, client_id, board, firmware, address, now)
        if pending is None:
            return OtaDecision(paired=False, busy=True)
        lang = "zh" if language.lower().startswith("zh") else "en"
        return OtaDecision(paired=False, activation={
            "code": pending.code,
            "message": _MESSAGE[lang].format(code=pending.code),
            "challenge": pending.challenge,
            "timeout_ms": int(max(0.0, pending.expires - now) * 1000),
        })

    async def _pending_code(self, device_id: str, client_id: str, board: str, firmware: str, address: str,
                            now: float) -> PendingCode | None:
        for _ in range(20):
            candidate = PendingCode(device_id=device_id, client_id=client_id, board=board, firmware=firmware,
                                    code=new_code(), challenge=secrets.token_hex(16), address=address,
                                    created=now, expires=now + self.config.code_ttl_s)
            try:
                stored = await self.registry.add_pending(candidate, self.config.caps, now)
            except CodeTaken:
                continue
            if stored is candidate:
                log.info("pairing code issued to %s (board %s, from %s); confirm with: "
                         "python -m server devices pair <code shown on the device>", device_id, board or "?",
                         address)
            return stored
        log.warning("no free pairing code after 20 draws: too many pending")
        return None

    async def is_paired(self, device_id: str, client_id: str) -> bool:
        """For `POST /xiaozhi/ota/activate`: 200 once true, 202 before."""
        record = await self.registry.get(device_id)
        return record is not None and record.paired and record.client_id == client_id

    async def current_generation(self, device_id: str, client_id: str) -> int | None:
        """The generation a valid token of this device must carry; None when not paired."""
        record = await self.registry.get(device_id)
        if record is None or not record.paired or record.client_id != client_id:
            return None
        return record.generation

    async def check_activation(self, device_id: str, client_id: str, body: dict[str, Any]) -> ActivationProof:
        """Activation-Version 2 (xiaozhi-protocol.md §5.5): a board with an eFuse serial number
        sends HMAC-SHA256(key, challenge). The server cannot know the eFuse key of a stock board,
        so this is checked only when the owner registered the device's key
        (`python -m server devices key ID HEX`): then a matching HMAC over the device's pending
        challenge is recorded as proof, and the code cannot be confirmed without one."""
        key = await self.registry.get_key(device_id)
        if key is None:
            return "no-key"
        pending = await self.registry.pending(device_id, self.clock())
        if pending is None or pending.client_id != client_id:
            return "bad"
        payload = body.get("Payload") if isinstance(body.get("Payload"), dict) else body
        given, challenge = payload.get("hmac"), payload.get("challenge")
        if not isinstance(given, str) or challenge != pending.challenge:
            log.warning("activation of %s: no HMAC over its challenge, but a key is registered; the code "
                        "cannot be confirmed until the device proves it", device_id)
            return "bad"
        if not any(hmac.compare_digest(given.strip().lower(), expected)
                   for expected in expected_hmacs(key, pending.challenge)):
            log.warning("activation of %s: HMAC does not match the registered key (another board "
                        "using this id?); the code cannot be confirmed", device_id)
            return "bad"
        await self.registry.add_proof(device_id, pending.challenge, self.clock())
        return "proven"

    async def confirm(self, code: str, owner: str = "owner") -> DeviceRecord | None:
        code = code.strip()
        if len(code) != 6 or not code.isascii() or not code.isdigit():
            return None
        return await self.registry.confirm(code, owner, self.clock())
