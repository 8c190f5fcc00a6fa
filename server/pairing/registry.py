"""The device registry interface. Implementations: SQLite (embedded, this package) and, for
several server processes sharing one database, PostgreSQL (server/state).

Every method is one atomic step on the store, so several processes (and the `devices` CLI
running next to a live server) can share one registry without races.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from server.pairing.networks import PendingCaps

# Memory claims kept at most (trust on first use, auth off): beyond this, new device ids get a
# memory identity of their own without a claim, so a flood of made-up ids costs bounded storage.
MAX_MEMORY_CLAIMS = 100_000


@dataclass(slots=True, frozen=True)
class DeviceRecord:
    device_id: str
    client_id: str
    board: str
    firmware: str
    first_seen: float
    last_seen: float
    paired_at: float | None  # None: not paired (never, or revoked)
    owner: str
    # Part of every token minted for the device; revoking bumps it, so old tokens stop at once.
    generation: int

    @property
    def paired(self) -> bool:
        return self.paired_at is not None


@dataclass(slots=True, frozen=True)
class PendingCode:
    device_id: str
    client_id: str
    board: str
    firmware: str
    code: str  # 6 digits, unique among pending codes
    challenge: str
    address: str  # the client address that asked (for the per-address cap)
    created: float
    expires: float


class DeviceRegistry(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def get(self, device_id: str) -> DeviceRecord | None: ...

    async def touch(self, device_id: str, client_id: str, board: str, firmware: str, now: float) -> None:
        """Update last_seen (and board/firmware) of a device already in the registry; unknown ids
        are not stored (a flood of made-up ids must not grow the table)."""
        ...

    async def pending(self, device_id: str, now: float) -> PendingCode | None:
        """The unexpired pending code of this device, if any."""
        ...

    async def add_pending(self, candidate: PendingCode, caps: PendingCaps, now: float) -> PendingCode | None:
        """Store `candidate` unless the device already has an unexpired code (returned instead,
        when it is for the same client id; replaced otherwise) or a cap is reached (None).
        Expired codes are dropped first; unexpired ones of other devices are never evicted.
        On a code collision the implementation raises CodeTaken (the caller draws another)."""
        ...

    async def confirm(self, code: str, owner: str, now: float) -> DeviceRecord | None:
        """Pair the device whose unexpired code this is; None for a wrong or expired code.
        Raises Unproven when the device has a registered HMAC key (Activation-Version 2) and no
        activate request proved it holds that key for this code's challenge."""
        ...

    async def revoke(self, device_id: str) -> DeviceRecord | None:
        """Unpair (tokens stop: generation + 1) and drop its pending code. None if unknown."""
        ...

    async def list_devices(self) -> list[DeviceRecord]: ...

    async def claim_memory(self, device_id: str, client_id: str, now: float) -> str | None:
        """Trust on first use: the client id that owns this device id's memory, recording
        `client_id` as owner when nobody holds it yet. None when unclaimed and the table is full
        (MAX_MEMORY_CLAIMS)."""
        ...

    async def release_memory(self, device_id: str) -> bool:
        """Forget the owner of a device id's memory (the next client to connect claims it)."""
        ...

    async def set_key(self, device_id: str, key_hex: str | None, now: float) -> None:
        """Register (or with None remove) the device's activation HMAC key, as hex."""
        ...

    async def get_key(self, device_id: str) -> str | None: ...

    async def add_proof(self, device_id: str, challenge: str, now: float) -> None:
        """The device proved its key for this challenge (a valid activate HMAC)."""
        ...

    async def list_pending(self, now: float) -> list[PendingCode]: ...

    async def generations(self, device_ids: list[str]) -> dict[str, int | None]:
        """device id -> generation if paired, None if not (unknown or revoked)."""
        ...


class CodeTaken(Exception):
    """The drawn code is already pending for another device."""


class Unproven(Exception):
    """The code's device has a registered HMAC key and has not proven it holds it."""

    def __init__(self, device_id: str) -> None:
        super().__init__(device_id)
        self.device_id = device_id
