"""What the OTA endpoint does about pairing, on top of a DeviceRegistry.

The firmware's own flow (xiaozhi-protocol.md §5.5): an OTA answer with an `activation` section
makes the device show and speak the 6-digit code, then poll `POST .../activate` (202 = not yet,
200 = done) and re-run the OTA check, whose answer then carries the token and no `activation`.
Here the owner confirms the code on the server (`python -m server devices pair 123456`).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
                stored = await self.registry.add_pending(candidate, self.config.max_pending,
                                                         self.config.max_pending_per_address, now)
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

    async def confirm(self, code: str, owner: str = "owner") -> DeviceRecord | None:
        code = code.strip()
        if len(code) != 6 or not code.isascii() or not code.isdigit():
            return None
        return await self.registry.confirm(code, owner, self.clock())
