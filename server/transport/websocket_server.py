"""The device-facing WebSocket server (websockets library).

Handshake rules follow the firmware: headers Device-Id, Client-Id, Authorization (Bearer),
Protocol-Version; browsers, which cannot set headers, may pass the same as query parameters.
Authentication is decided before the upgrade, so a rejected device gets a plain HTTP 401 (the
firmware then shows "server not connected" at once instead of waiting 10 s for a hello). A plain
HTTP GET (no upgrade) gets a one-line status text.

Connections are counted against the limits from the TCP accept, not from the upgrade: a client
that opens sockets and never finishes (or never starts) its handshake holds a slot like any other,
and one beyond the limits is answered 503 and closed at once, before it costs a handshake.
"""

from __future__ import annotations

import asyncio
import http
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State

from server.pairing import Pairing
from server.pairing.memory_identity import MemoryIdentities, derived_identity
from server.protocol import framing
from server.runtime import Services
from server.session.device import DeviceInfo
from server.session.session import Session
from server.transport.auth import TokenAuth
from server.transport.device_id import resolve_identity, safe_client_id
from server.transport.fast_frames import at_frame_boundary, size_limit, take_frames
from server.transport.limits import ConnectionSlots, client_address, host_of

log = logging.getLogger("server.ws")

STATUS_TEXT = "xiaozhi voice server is running. Devices connect here over WebSocket.\n"
_FULL = b"too many connections\n"
FULL_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(_FULL), _FULL))
# A refused socket is half-closed after the 503 and dropped this much later, so the client reads
# the answer (closing with its request unread would reset the connection and lose the 503).
REFUSED_LINGER_S = 1.0
# A message is written straight away (WsEndpoint._send_now) while the socket has at most this
# much unsent; websockets' own send would wait for a drain only far above it (32 KiB).
FAST_SEND_MAX_BUFFERED = 16 * 1024


class WsEndpoint:
    """Sends to one device, with back-pressure bounds: a client that stops reading makes our
    sends wait (websockets waits for the socket to drain); more than `max_pending` sends waiting
    at once, or one waiting longer than `send_timeout_s`, closes the connection instead of
    piling up messages in memory."""

    def __init__(self, connection: ServerConnection, max_pending: int = 0, send_timeout_s: float = 0,
                 on_overflow: Any = None) -> None:
        self.connection = connection
        self.max_pending = max_pending
        self.send_timeout_s = send_timeout_s
        self.pending = 0
        self._on_overflow = on_overflow
        self._aborted = False
        # The shortcut in _send_now relies on these websockets internals (17.x); without them,
        # every message takes websockets' own send.
        self._fast = all(hasattr(connection, name) for name in ("send_in_progress", "protocol", "send_data"))

    async def _send(self, data: str | bytes) -> None:
        if self._aborted:
            raise ConnectionError("connection aborted: the client stopped reading")
        if self._send_now(data):
            return
        if self.max_pending and self.pending >= self.max_pending:
            self._abort(f"more than {self.max_pending} messages waiting to be sent")
            raise ConnectionError("too many pending sends")
        self.pending += 1
        try:
            if self.send_timeout_s:
                try:
                    # asyncio.timeout, not wait_for: no extra task per audio frame.
                    async with asyncio.timeout(self.send_timeout_s):
                        await self.connection.send(data)
                except TimeoutError:
                    self._abort(f"a send waited more than {self.send_timeout_s:g} s")
                    raise ConnectionError("send timed out") from None
            else:
                await self.connection.send(data)
        finally:
            self.pending -= 1

    def _send_now(self, data: str | bytes) -> bool:
        """Write a message at once when nothing can make it wait: the connection is open, no
        other send is in progress and the socket's buffer is nearly empty (so websockets would
        not wait for it to drain). This is every audio frame of a client that keeps up, and it
        spares each one websockets' send context and our send timeout (two timer handles and a
        context manager per frame, with every talking device at 16 frames a second)."""
        connection = self.connection
        transport = connection.transport
        if not self._fast or connection.send_in_progress is not None \
                or connection.protocol.state is not State.OPEN or transport is None or transport.is_closing() \
                or transport.get_write_buffer_size() > FAST_SEND_MAX_BUFFERED:
            return False
        if isinstance(data, str):
            connection.protocol.send_text(data.encode())
        else:
            connection.protocol.send_binary(data)
        connection.send_data()
        return True

    def _abort(self, why: str) -> None:
        if self._aborted:
            return
        self._aborted = True
        if self._on_overflow is not None:
            self._on_overflow(why)
        transport = getattr(self.connection, "transport", None)
        if transport is not None:
            transport.abort()  # a close handshake would wait on the same full buffer

    async def send_text(self, text: str) -> None:
        await self._send(text)

    async def send_binary(self, data: bytes) -> None:
        await self._send(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.connection.close(code, reason)


def device_info_from(request: Request, remote: str) -> DeviceInfo:
    headers = request.headers
    query = {k.lower(): v[0] for k, v in parse_qs(urlsplit(request.path).query).items() if v}
    raw_device = headers.get("Device-Id") or query.get("device-id") or query.get("device_id")
    raw_client = headers.get("Client-Id") or query.get("client-id") or query.get("client_id")
    # Missing, `None` or malformed ids get a per-connection identity (or the client id), never a
    # shared one, and never reach a log line raw (see server/transport/device_id.py).
    identity = resolve_identity(raw_device, raw_client, remote=remote, where="WebSocket")
    version = headers.get("Protocol-Version") or query.get("protocol-version")
    return DeviceInfo(device_id=identity.device_id, client_id=safe_client_id(raw_client), remote=remote,
                      protocol_version=framing.negotiate_version(version),
                      user_agent=headers.get("User-Agent", ""), host=headers.get("Host", ""),
                      # A per-connection identity is its own memory already: nothing to claim.
                      memory_identity=identity.device_id if identity.anonymous else "")


def authorization_from(request: Request) -> str:
    header = request.headers.get("Authorization")
    if header:
        return header
    query = {k.lower(): v[0] for k, v in parse_qs(urlsplit(request.path).query).items() if v}
    return query.get("authorization") or query.get("token") or ""


class DeviceServer:
    def __init__(self, services: Services, auth: TokenAuth, pairing: Pairing | None = None,
                 identities: MemoryIdentities | None = None) -> None:
        self.services = services
        self.auth = auth
        self.pairing = pairing
        self.identities = identities
        cfg = services.config.server
        # Counted from the TCP accept, by socket peer (a declared proxy's sockets count in the
        # total only) ...
        self.slots = ConnectionSlots(cfg.limits.max_connections, cfg.limits.max_connections_per_address)
        # ... and, behind a declared proxy, per forwarded client address once the request is read.
        self.proxied = ConnectionSlots(0, cfg.limits.max_connections_per_address)
        self.trusted_proxies = frozenset(cfg.trusted_proxies)
        self.allowed_origins = frozenset(cfg.allowed_origins)
        self._last_refusal_log = 0.0
        self._refused_since_log = 0

    # ------------------------------------------------------------------ counting from accept

    def connection_class(self) -> type[ServerConnection]:
        """The connection class for `serve(create_connection=...)`: it takes a slot when the TCP
        connection is accepted and gives it back when the socket closes, whatever the handshake
        did in between."""
        gate = self

        class CountedConnection(ServerConnection):
            slot: tuple[str | None] | None = None  # (address,) while this socket holds a slot
            proxied_slot: str | None = None
            refused = False
            take_audio_frame: Callable[[bytes], bool] | None = None  # set by the handler
            frame_limit: int | None = None  # websockets' size limit, read once by the handler

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                peer = transport.get_extra_info("peername")
                host = host_of(f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer))
                key = None if host in gate.trusted_proxies else host
                reason = gate.slots.acquire(key)
                if reason is not None:
                    # Refused before websockets sees it: no handler task, no handshake.
                    self.refused = True
                    gate._refused(reason)
                    assert isinstance(transport, asyncio.Transport)
                    transport.write(FULL_RESPONSE)
                    if transport.can_write_eof():
                        transport.write_eof()
                    asyncio.get_running_loop().call_later(REFUSED_LINGER_S, transport.abort)
                    return
                self.slot = (key,)
                super().connection_made(transport)

            def data_received(self, data: bytes) -> None:
                if self.refused:
                    return
                if self.take_audio_frame is not None and not _queued_frames(self) \
                        and at_frame_boundary(self.protocol):
                    # Plain microphone frames at the front of the chunk skip websockets' parser
                    # (server/transport/fast_frames.py); the rest goes the usual way, in order.
                    used = take_frames(data, self._take, self.frame_limit)
                    if used == len(data):
                        return
                    data = data[used:]
                super().data_received(data)

            def process_event(self, event: Any) -> None:  # a Request during the handshake, then Frames
                # Microphone frames parsed by websockets still go to the session from here when
                # it can take them in order (Session.take_audio_frame): no queueing and no task
                # wake-up per frame.
                if self.take_audio_frame is not None and event.opcode is Opcode.BINARY and event.fin \
                        and not _queued_frames(self) and self._take(event.data):
                    return
                super().process_event(event)

            def _take(self, payload: bytes) -> bool:
                assert self.take_audio_frame is not None
                try:
                    return self.take_audio_frame(payload)
                except Exception:  # noqa: BLE001 - one bad frame never breaks the socket
                    log.exception("audio frame handling failed; frame dropped")
                    return True

            def eof_received(self) -> bool | None:
                return None if self.refused else super().eof_received()

            def connection_lost(self, exc: Exception | None) -> None:
                if self.refused:
                    return
                try:
                    super().connection_lost(exc)
                finally:
                    if self.slot is not None:
                        gate.slots.release(self.slot[0])
                        self.slot = None
                    if self.proxied_slot is not None:
                        gate.proxied.release(self.proxied_slot)
                        self.proxied_slot = None

        return CountedConnection

    def _refused(self, reason: str) -> None:
        """Count every refusal; log at most one line per second (a flood must not flood the log)."""
        self.services.metrics.count("connections_refused")
        self._refused_since_log += 1
        now = time.monotonic()
        if now - self._last_refusal_log >= 1.0:
            log.warning("refused %d connection(s): %s", self._refused_since_log, reason)
            self._last_refusal_log, self._refused_since_log = now, 0

    def _refuse(self, connection: ServerConnection, status: http.HTTPStatus, text: str, counter: str) -> Response:
        self.services.metrics.count(counter)
        return connection.respond(status, text)

    async def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if "upgrade" not in request.headers.get("Connection", "").lower():
            return connection.respond(http.HTTPStatus.OK, STATUS_TEXT)
        remote = _remote(connection)
        address = client_address(remote, request.headers, self.trusted_proxies)
        origin = request.headers.get("Origin")
        if origin is not None and origin.strip().rstrip("/").lower() not in self.allowed_origins:
            # A web page the user happens to open must not talk to the server as a device.
            log.warning("rejected a browser connection from %s: origin %r is not in server.allowed_origins",
                        address, origin[:80])
            return self._refuse(connection, http.HTTPStatus.FORBIDDEN, "origin not allowed\n", "origin_rejected")
        if host_of(remote) in self.trusted_proxies:
            # The socket is counted (in the total) since its accept; its real client is known now.
            refusal = self.proxied.acquire(address)
            if refusal is not None:
                self._refused(refusal)
                return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
            connection.proxied_slot = address  # type: ignore[attr-defined]  # released when the socket closes
        info = device_info_from(request, remote)
        result = self.auth.check(info.device_id, info.client_id, authorization_from(request))
        reason = result.reason
        if reason is None and self.auth.enabled and self.pairing is not None and not result.allow_listed:
            current = await self.pairing.current_generation(info.device_id, info.client_id)
            if current is None:
                reason = "device is not paired (or was revoked)"
            elif current != result.generation:
                reason = "token of an earlier pairing (device was revoked since)"
        if reason is not None:
            log.warning("rejected %s from %s: %s", info.device_id, remote, reason)
            self.services.metrics.count("auth_rejected")
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, "authentication failed\n")
        if self.pairing is not None and not result.allow_listed:
            info.auth_generation = result.generation
        # Only a token the registry vouches for (or an allow-listed id) proves the device id;
        # anything else gets memory by trust on first use (server/pairing/memory_identity.py).
        verified = self.auth.enabled and (result.allow_listed or self.pairing is not None)
        if not verified and not info.memory_identity and self.identities is not None:
            try:
                info.memory_identity = await self.identities.resolve(info.device_id, info.client_id,
                                                                     authorization_from(request))
            except Exception:  # noqa: BLE001 - a registry hiccup: a memory of its own, never another's
                log.exception("[%s] memory identity check failed; using a separate memory", info.device_id)
                info.memory_identity = derived_identity(info.device_id, info.client_id)
        connection.device_info = info  # type: ignore[attr-defined]
        connection.client_address = address  # type: ignore[attr-defined]
        return None

    async def handler(self, connection: ServerConnection) -> None:
        info: DeviceInfo = connection.device_info  # type: ignore[attr-defined]
        # The connection holds its slot since the TCP accept (CountedConnection).
        limits = self.services.config.server.limits

        def overflow(why: str) -> None:
            self.services.metrics.count("slow_reader_closed")
            log.warning("[%s] closing: %s (the client is not reading)", info.device_id, why)

        endpoint = WsEndpoint(connection, limits.max_pending_sends, limits.send_timeout_s, overflow)
        session = Session(self.services, endpoint, info)
        if _queued_frames(connection) is not None:
            connection.frame_limit = size_limit(connection.protocol)  # type: ignore[attr-defined]
            connection.take_audio_frame = session.take_audio_frame  # type: ignore[attr-defined]
        try:
            await session.run(connection)
        except ConnectionClosed:
            pass
        except Exception:  # noqa: BLE001 - one broken session never affects the others
            log.exception("[%s] session crashed", info.device_id)

    async def watch_revocations(self) -> None:
        """End the open sessions of devices the owner revoked (their new connections are refused
        at once by the generation check; this closes the ones already open)."""
        if self.pairing is None or not self.auth.enabled:
            return
        every = self.pairing.config.revocation_check_s
        while True:
            await asyncio.sleep(every)
            sessions = [s for s in list(self.services.sessions)
                        if s.device.device_id.lower() not in self.auth.allowed_devices]
            if not sessions:
                continue
            try:
                generations = await self.pairing.registry.generations(sorted({s.device.device_id for s in sessions}))
            except Exception:  # noqa: BLE001 - a registry hiccup: try again next round
                log.exception("revocation check failed")
                continue
            for s in sessions:
                if generations.get(s.device.device_id) is None:
                    log.warning("[%s] device revoked: closing its session", s.device.device_id)
                    await s.close("device revoked")


def _queued_frames(connection: Any) -> int | None:
    """Frames waiting in websockets' message assembler (None: this websockets version keeps them
    elsewhere, and audio frames take the ordinary receive path)."""
    frames = getattr(getattr(connection, "recv_messages", None), "frames", None)
    return None if frames is None else len(frames)


def _remote(connection: Any) -> str:
    addr = getattr(connection, "remote_address", None)
    if isinstance(addr, tuple) and addr:
        return f"{addr[0]}:{addr[1]}"
    return str(addr or "?")
