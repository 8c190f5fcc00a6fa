"""What a device session needs from its connection (a WebSocket today, MQTT+UDP later), and
what the handshake told us about the device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class Connection(Protocol):
    """A message channel to one device: text frames (JSON), binary frames (audio), close."""

    async def send_text(self, text: str) -> None: ...

    async def send_binary(self, data: bytes) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


@dataclass(slots=True)
class DeviceInfo:
    device_id: str
    client_id: str = ""
    remote: str = ""
    protocol_version: int = 1
    user_agent: str = ""
    host: str = ""  # the Host header the device used (it can reach us under that name)
    # The registry generation of the token this connection authenticated with (pairing on);
    # None without one. Vision tokens handed to the device carry it, so revoking stops them too.
    auth_generation: int | None = None
    # Whose memory this connection gets ("" = the device id): a connection that did not prove its
    # device id gets its own (server/pairing/memory_identity.py).
    memory_identity: str = ""
