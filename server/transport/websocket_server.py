"""The device-facing WebSocket server (websockets library).

Handshake rules follow the firmware: headers Device-Id, Client-Id, Authorization (Bearer),
Protocol-Version; browsers, which cannot set headers, may pass the same as query parameters.
Authentication is decided before the upgrade, so a rejected device gets a plain HTTP 401 (the
firmware then shows "server not connected" at once instead of waiting 10 s for a hello). A plain
HTTP GET (no upgrade) gets a one-line status text.
"""

from __future__ import annotations

import http
import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from server.protocol import framing
from server.services import Services
from server.session.device import DeviceInfo
from server.session.session import Session
from server.transport.auth import TokenAuth

log = logging.getLogger("server.ws")

STATUS_TEXT = "xiaozhi voice server is running. Devices connect here over WebSocket.\n"


class WsEndpoint:
    def __init__(self, connection: ServerConnection) -> None:
        self.connection = connection

    async def send_text(self, text: str) -> None:
        await self.connection.send(text)

    async def send_binary(self, data: bytes) -> None:
        await self.connection.send(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.connection.close(code, reason)


def device_info_from(request: Request, remote: str) -> DeviceInfo:
    headers = request.headers
    query = {k.lower(): v[0] for k, v in parse_qs(urlsplit(request.path).query).items() if v}
    device_id = (headers.get("Device-Id") or query.get("device-id") or query.get("device_id") or "").strip().lower()
    client_id = (headers.get("Client-Id") or query.get("client-id") or query.get("client_id") or "").strip()
    version = headers.get("Protocol-Version") or query.get("protocol-version")
    return DeviceInfo(device_id=device_id, client_id=client_id, remote=remote,
                      protocol_version=framing.negotiate_version(version),
                      user_agent=headers.get("User-Agent", ""), host=headers.get("Host", ""))


def authorization_from(request: Request) -> str:
    header = request.headers.get("Authorization")
    if header:
        return header
    query = {k.lower(): v[0] for k, v in parse_qs(urlsplit(request.path).query).items() if v}
    return query.get("authorization") or query.get("token") or ""


class DeviceServer:
    def __init__(self, services: Services, auth: TokenAuth) -> None:
        self.services = services
        self.auth = auth

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if "upgrade" not in request.headers.get("Connection", "").lower():
            return connection.respond(http.HTTPStatus.OK, STATUS_TEXT)
        remote = _remote(connection)
        info = device_info_from(request, remote)
        if not info.device_id:
            log.warning("rejected connection from %s: no Device-Id header or device-id query parameter", remote)
            return connection.respond(http.HTTPStatus.BAD_REQUEST,
                                      "Device-Id header (or ?device-id= query parameter) is required\n")
        reason = self.auth.check(info.device_id, info.client_id, authorization_from(request))
        if reason is not None:
            log.warning("rejected %s from %s: %s", info.device_id, remote, reason)
            self.services.metrics.count("auth_rejected")
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, "authentication failed\n")
        connection.device_info = info  # type: ignore[attr-defined]
        return None

    async def handler(self, connection: ServerConnection) -> None:
        info: DeviceInfo = connection.device_info  # type: ignore[attr-defined]
        session = Session(self.services, WsEndpoint(connection), info)
        try:
            await session.run(connection)
        except ConnectionClosed:
            pass
        except Exception:  # noqa: BLE001 - one broken session never affects the others
            log.exception("[%s] session crashed", info.device_id)


def _remote(connection: Any) -> str:
    addr = getattr(connection, "remote_address", None)
    if isinstance(addr, tuple) and addr:
        return f"{addr[0]}:{addr[1]}"
    return str(addr or "?")
