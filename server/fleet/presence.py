"""A device has one live connection, fleet-wide.

When a device connects, its process announces (device id, session id) on the state bus; every
process, the announcer included, closes any *other* session of that device it still holds. A
board that lost Wi-Fi and reconnected through the balancer to another process would otherwise
leave a half-open stale session behind on the first one, still writing memory and holding a
turn. Embedded mode runs the same code over the in-process bus.
"""

from __future__ import annotations

import logging
from typing import Any

from server.state.base import Bus

log = logging.getLogger("server.fleet")

CHANNEL = "presence"


class DevicePresence:
    def __init__(self, bus: Bus, node_id: str, sessions: set[Any]) -> None:
        self.bus = bus
        self.node_id = node_id
        self.sessions = sessions
        self.kicked = 0

    async def start(self) -> None:
        await self.bus.subscribe(CHANNEL, self._on_message)

    async def connected(self, device_id: str, session_id: str) -> None:
        if not device_id:
            return
        try:
            await self.bus.publish(CHANNEL, {"device": device_id.lower(), "session": session_id,
                                             "node": self.node_id})
        except Exception as exc:  # noqa: BLE001 - a bus outage must not refuse devices
            log.warning("[%s] could not announce the connection to the fleet: %s", device_id, exc)

    async def _on_message(self, message: dict[str, Any]) -> None:
        device, session_id = message.get("device"), message.get("session")
        if not isinstance(device, str) or not isinstance(session_id, str):
            return
        for session in list(self.sessions):
            info = getattr(session, "device", None)
            if (info is not None and info.device_id.lower() == device
                    and session.session_id != session_id and not session.closed):
                self.kicked += 1
                where = "this process" if message.get("node") == self.node_id else f"process {message.get('node')}"
                log.info("[%s] closing a stale connection: the device connected again on %s", device, where)
                await session.close("replaced by a newer connection of this device")
