"""Whose memory a connection gets when it has not proven who it is.

With auth on and pairing on, every connection carries a token the registry vouches for, so its
device id is its memory identity. Without that (auth off, the default; or auth on with pairing
off, where the OTA endpoint hands a token to anyone), a device id is only a claim: anyone can send
another device's MAC. The rule then is trust on first use:

- the first client id seen with a device id owns that id's memory (recorded in the registry, so
  memory written before this rule existed is kept: the first client to come back claims it);
- a connection with the same device id and another client id, or none, gets a memory identity
  of its own, derived from both ids (logged once per pair);
- a device paired in the registry never gives its memory to a connection without its valid
  token, even with auth off (a token it still sends is checked and honoured).

Real clients keep their client id: the firmware's is a UUID stored in NVS (a new one only after
a full flash erase), py-xiaozhi's is in its config.json, and the reference project's browser page
sends the fixed `web_test_client` with a random MAC kept in the browser's localStorage. A board
that lost its client id (flash erased) is handed its memory back with
`python -m server devices release ID`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

from server.pairing.registry import DeviceRegistry
from server.transport.auth import TokenAuth, bearer_token
from server.transport.device_id import _SeenOnce

log = logging.getLogger("server.pairing")


def derived_identity(device_id: str, client_id: str) -> str:
    """A memory identity for (device id, client id) that no other pair shares and that no
    `memory.identities` entry (keyed by device id) matches."""
    digest = hashlib.sha256(f"{device_id}|{client_id}".encode("utf-8", "replace")).hexdigest()[:16]
    return f"{device_id}~{digest}"


class MemoryIdentities:
    def __init__(self, registry: DeviceRegistry, auth: TokenAuth, clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.auth = auth
        self.clock = clock
        self._logged = _SeenOnce()

    async def _token_vouches(self, device_id: str, client_id: str, authorization: str) -> bool:
        """A token a paired device sends even while auth is off still proves it is that device."""
        token = bearer_token(authorization)
        if not token:
            return False
        result = self.auth.verify_token(token, device_id, client_id)
        if not result.ok:
            return False
        record = await self.registry.get(device_id)
        return (record is not None and record.paired and record.client_id == client_id
                and record.generation == result.generation)

    async def resolve(self, device_id: str, client_id: str, authorization: str) -> str:
        """The memory identity of a connection whose token nobody checked (rule above)."""
        if await self._token_vouches(device_id, client_id, authorization):
            return device_id
        record = await self.registry.get(device_id)
        if record is not None and record.paired:
            self._separate(device_id, client_id, "is paired, and this connection has no valid token")
            return derived_identity(device_id, client_id)
        # A device the owner once paired (since revoked) stays its paired client's; others: first use.
        owner = (record.client_id if record is not None
                 else await self.registry.claim_memory(device_id, client_id, self.clock()))
        if owner == client_id:
            return device_id
        why = ("could not be claimed (claim table full)" if owner is None
               else f"first came with another client id (this one: {client_id or 'none'})")
        self._separate(device_id, client_id, why)
        return derived_identity(device_id, client_id)

    def _separate(self, device_id: str, client_id: str, why: str) -> None:
        if self._logged.first(f"{device_id}|{client_id}"):
            log.warning("device id %s %s: this connection gets a memory of its own (%s), never that "
                        "device's; if it is the same board after a flash erase: python -m server devices release %s",
                        device_id, why, derived_identity(device_id, client_id), device_id)
