"""The building blocks of the limits (pure), and the WebSocket send guard against a real
client that stops reading (websockets on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
from websockets.asyncio.server import serve

from harness.rawws import RawWebSocket
from server.config.schema import AppConfig
from server.conversation.metrics import MetricsLog
from server.protocol.errors import ProtocolError
from server.protocol.safe_json import depth_exceeds, loads_limited
from server.session.typed_text import TypedTextGuard
from server.transport.auth import TokenAuth
from server.transport.limits import ConnectionSlots, RateLimiter, client_address, host_of
from server.transport.websocket_server import DeviceServer, WsEndpoint


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_burst_refill_and_bounded_table() -> None:
    clock = Clock()
    limiter = RateLimiter(6, max_addresses=100, clock=clock)
    assert [limiter.allow("a") for _ in range(8)] == [True] * 6 + [False] * 2
    assert limiter.allow("b")  # another key has its own budget
    clock.now += 10  # 6 per minute: one more every 10 s
    assert limiter.allow("a") and not limiter.allow("a")
    for i in range(1000):
        limiter.allow(f"flood-{i}")
    assert len(limiter) == 100  # a flood of addresses costs a fixed amount of memory


def test_connection_slots() -> None:
    slots = ConnectionSlots(max_total=3, max_per_address=2)
    assert slots.acquire("a") is None and slots.acquire("a") is None
    assert "too many connections from a" in (slots.acquire("a") or "")
    assert slots.acquire("b") is None
    assert "server full" in (slots.acquire("c") or "")
    slots.release("a")
    assert slots.acquire("c") is None and slots.count("a") == 1 and slots.total == 3


def test_client_address_trusts_only_declared_proxies() -> None:
    headers = {"X-Forwarded-For": "10.0.0.9, 192.168.1.50"}
    assert client_address("203.0.113.5:4444", headers, frozenset()) == "203.0.113.5"
    assert client_address("127.0.0.1:4444", headers, frozenset({"127.0.0.1"})) == "192.168.1.50"
    assert client_address("127.0.0.1:1", {"X-Forwarded-For": "not an ip\\n"}, frozenset({"127.0.0.1"})) == "127.0.0.1"
    assert host_of("[::1]:80") == "::1" and host_of("::1") == "::1"


def test_typed_text_guard() -> None:
    clock = Clock()
    guard = TypedTextGuard(max_chars=20, per_minute=3, clock=clock)
    assert "characters" in (guard.refusal("x" * 21) or "")
    assert [guard.refusal("hi") for _ in range(3)] == [None] * 3
    assert "per minute" in (guard.refusal("hi") or "")
    clock.now += 60
    assert guard.refusal("hi") is None


def test_deep_json_is_a_protocol_error() -> None:
    for text in ("[" * 100_000 + "]" * 100_000, '{"a":' * 5000 + "1" + "}" * 5000, "[" * 50):
        with pytest.raises(ProtocolError):
            loads_limited(text)
    assert loads_limited(json.dumps({"a": [[{"b": 1}]]})) == {"a": [[{"b": 1}]]}
    assert not depth_exceeds([[1]], 2) and depth_exceeds([[[1]]], 2)


async def _guarded_server(handler) -> tuple[object, int]:  # noqa: ANN001
    server = await serve(handler, "127.0.0.1", 0)
    return server, next(iter(server.sockets)).getsockname()[1]


async def test_send_guard_drops_a_client_that_stops_reading() -> None:
    """A real server sending 64 KB messages to a client that never reads: the send waits on the
    full socket; past send_timeout_s the connection is aborted and the caller gets an error
    instead of an ever-growing backlog."""
    overflows: list[str] = []
    outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def handler(connection) -> None:  # noqa: ANN001
        endpoint = WsEndpoint(connection, max_pending=8, send_timeout_s=0.5, on_overflow=overflows.append)
        try:
            for _ in range(1000):  # 64 MB: far more than the socket buffers hold
                await endpoint.send_binary(b"\x00" * 65536)
            outcome.set_result("sent everything")
        except ConnectionError as exc:
            outcome.set_result(f"stopped: {exc}")

    server, port = await _guarded_server(handler)
    try:
        client, head = await RawWebSocket.connect(port, "/", {})
        assert head.startswith(b"HTTP/1.1 101")
        result = await asyncio.wait_for(outcome, 20)
        client.close()
    finally:
        server.close()
    assert result.startswith("stopped") and overflows and "waited more than" in overflows[0]


async def test_send_guard_caps_pending_sends() -> None:
    overflows: list[str] = []
    results: asyncio.Future[list[object]] = asyncio.get_running_loop().create_future()

    async def handler(connection) -> None:  # noqa: ANN001
        endpoint = WsEndpoint(connection, max_pending=4, send_timeout_s=30, on_overflow=overflows.append)
        sends = [endpoint.send_binary(b"\x00" * 262144) for _ in range(40)]
        results.set_result(await asyncio.gather(*sends, return_exceptions=True))

    server, port = await _guarded_server(handler)
    try:
        client, _ = await RawWebSocket.connect(port, "/", {})
        done = await asyncio.wait_for(results, 20)
        client.close()
    finally:
        server.close()
    assert any(isinstance(r, ConnectionError) for r in done)
    assert overflows and "more than 4 messages waiting" in overflows[0]


# ------------------------------------------------------------------------------ counted from the TCP accept


async def _read_now(reader: asyncio.StreamReader, within: float = 1.5) -> bytes | None:
    try:
        return await asyncio.wait_for(reader.read(200), within)
    except TimeoutError:
        return None


async def test_connections_count_from_the_tcp_accept_and_behind_a_proxy() -> None:
    """The device server's connection class on a real websockets server: half-open sockets hold
    slots, one over a cap gets 503 at once, slots come back on close; behind a declared proxy the
    per-address cap applies to the forwarded client address (the proxy's sockets count in the
    total only)."""
    cfg = AppConfig.model_validate({"server": {"trusted_proxies": ["127.0.0.1"],
                                               "limits": {"max_connections": 6, "max_connections_per_address": 2}}})
    devices = DeviceServer(SimpleNamespace(config=cfg, metrics=MetricsLog()),  # type: ignore[arg-type]
                           TokenAuth(secret=b"k" * 32, ttl_seconds=60))

    async def hold(connection) -> None:  # noqa: ANN001
        await connection.wait_closed()

    server = await serve(hold, "127.0.0.1", 0, process_request=devices.process_request,
                         create_connection=devices.connection_class())
    port = next(iter(server.sockets)).getsockname()[1]
    writers: list[asyncio.StreamWriter] = []
    clients: list[RawWebSocket] = []

    async def raw(local: str, send: bytes = b"") -> asyncio.StreamReader:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0))
        writer.write(send)
        writers.append(writer)
        return reader

    try:
        # Not a proxy: two half-open sockets (nothing sent; half a request) fill 127.0.0.9's share.
        assert await _read_now(await raw("127.0.0.9"), 0.3) is None
        assert await _read_now(await raw("127.0.0.9", b"GET / HTTP/1.1\r\nHost: x\r\nUpg"), 0.3) is None
        answer = await _read_now(await raw("127.0.0.9"))
        assert answer is not None and answer.startswith(b"HTTP/1.1 503")
        assert devices.slots.total == 2
        # Through the proxy (127.0.0.1): capped per forwarded client, not per proxy socket.
        for _ in range(2):
            client, head = await RawWebSocket.connect(port, "/", {"X-Forwarded-For": "10.1.1.1"})
            assert head.startswith(b"HTTP/1.1 101")
            clients.append(client)
        client, head = await RawWebSocket.connect(port, "/", {"X-Forwarded-For": "10.1.1.1"})
        assert head.startswith(b"HTTP/1.1 503")
        client.close()
        client, head = await RawWebSocket.connect(port, "/", {"X-Forwarded-For": "10.1.1.2"})
        assert head.startswith(b"HTTP/1.1 101")
        clients.append(client)
        # Total 6: two more half-open sockets from elsewhere fill it; the next is refused at once.
        await raw("127.0.0.10")
        await raw("127.0.0.11")
        await asyncio.sleep(0.2)
        assert devices.slots.total == 6
        answer = await _read_now(await raw("127.0.0.12"))
        assert answer is not None and answer.startswith(b"HTTP/1.1 503")
    finally:
        for w in writers:
            w.close()
        for c in clients:
            c.close()
    for _ in range(50):
        if devices.slots.total == 0:
            break
        await asyncio.sleep(0.05)
    assert devices.slots.total == 0 and devices.proxied.total == 0 and devices.slots.count("127.0.0.9") == 0
    server.close()
    await server.wait_closed()
