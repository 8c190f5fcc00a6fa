"""Two real server processes on one PostgreSQL behind a real HAProxy (127.0.0.1) behave as one
server: the OTA answer names the balancer and its token works on every process, devices are
routed by id, memory written through one process is read through the other, a stale connection
of a device is closed on the other process, a process killed mid-reply loses nothing a device
already finished saying, and each process exposes Prometheus metrics on a private port only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from harness.devsim import DeviceIdentity, SimDevice
from harness.fakes.openai_server import ChatReply, FakeOpenAIServer
from harness.fleet.cluster import Fleet, fleet

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
async def fake() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(require_key="fleet-key") as server:
        yield server


@pytest.fixture(scope="module")
async def two(pg_cluster: Any, fake: FakeOpenAIServer) -> AsyncIterator[Fleet]:
    async with fleet(await pg_cluster.new_database(), fake) as f:
        yield f


def served_by(dev: SimDevice) -> str:
    return dev.handshake_response_headers.get("X-Served-By") or dev.handshake_response_headers.get("x-served-by", "")


async def through_balancer(f: Fleet, identity: DeviceIdentity | None = None) -> SimDevice:
    dev = SimDevice(identity=identity) if identity else SimDevice()
    ota = await dev.ota(f.balancer.http_url)
    assert ota["websocket"]["url"] == f.balancer.ws_url
    await dev.connect()
    return dev


def prompt_text(fake: FakeOpenAIServer) -> str:
    body = fake.chat_requests()[-1].body
    return "\n".join(str(m.get("content") or "") for m in body["messages"])


async def wait_rows(f: Fleet, user: str, n: int, timeout: float = 10) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(f.state_url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            rows = await conn.fetch("SELECT user_text, assistant_text FROM exchanges WHERE user_id = $1 ORDER BY id",
                                    user)
            if len(rows) >= n or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def test_ota_names_the_balancer_and_its_token_works_on_every_process(two: Fleet) -> None:
    dev = SimDevice()
    ota = await dev.ota(two.balancer.http_url)
    assert ota["websocket"]["url"] == two.balancer.ws_url and ota["websocket"]["token"]
    for server in two.servers:  # straight to each process, bypassing the balancer
        hello = await dev.connect(url=server.ws_url)
        assert hello["session_id"]
        await dev.close()
    forged = SimDevice()
    with pytest.raises(Exception, match="401"):
        await forged.connect(url=two.servers[0].ws_url, token="v1.9999999999.forged")


async def test_devices_are_routed_by_id_consistently(two: Fleet) -> None:
    seen: dict[str, str] = {}
    for _ in range(12):
        dev = await through_balancer(two)
        seen[dev.identity.mac] = served_by(dev)
        await dev.close()
    assert set(seen.values()) == set(two.names), f"both processes get devices: {seen}"
    for mac, node in list(seen.items())[:4]:  # again, by header and by the browser's query parameter
        dev = SimDevice(identity=DeviceIdentity(mac=mac))
        await dev.ota(two.balancer.http_url)
        await dev.connect()
        assert served_by(dev) == node
        await dev.close()
        await dev.connect(extra_headers=None, query={"device-id": mac.upper()})
        assert served_by(dev) == node


async def test_memory_written_through_one_process_is_read_through_the_other(two: Fleet,
                                                                            fake: FakeOpenAIServer) -> None:
    ident = DeviceIdentity()
    dev = await through_balancer(two, ident)
    first = served_by(dev)
    result = await dev.ask_text("My cat is called Tom and I live in Hangzhou.")
    assert result.completed, result.error
    await dev.close()
    await wait_rows(two, ident.mac, 1)
    other = next(n for n in two.names if n != first)
    await two.balancer.command(f"set server ws/{first} state maint")
    try:
        dev = await through_balancer(two, ident)
        assert served_by(dev) == other
        result = await dev.ask_text("What is my cat called?")
        assert result.completed, result.error
        prompt = prompt_text(fake)
        assert "My cat is called Tom and I live in Hangzhou." in prompt
        assert "You said: My cat is called Tom" in prompt, "the earlier answer is part of the history too"
        await dev.close()
    finally:
        await two.balancer.command(f"set server ws/{first} state ready")


async def test_a_stale_connection_is_closed_on_the_other_process(two: Fleet) -> None:
    ident = DeviceIdentity()
    old = SimDevice(identity=ident)
    await old.ota(two.balancer.http_url)
    await old.connect(url=two.server("a").ws_url)  # e.g. half-open after a Wi-Fi drop
    new = SimDevice(identity=ident)
    await new.ota(two.balancer.http_url)
    await new.connect(url=two.server("b").ws_url)
    closed = await old.wait_for(lambda e: e.kind == "close", timeout=10)
    assert "replaced by a newer connection" in (closed.close_reason or "")
    result = await new.ask_text("Hello from the new connection.")
    assert result.completed, result.error
    assert not new.closed
    await new.close()


async def test_prometheus_is_private_and_counts_every_turn(two: Fleet, fake: FakeOpenAIServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{two.balancer.http_url}/metrics") as r:
            assert r.status == 403, "the balancer never exposes a process's metrics"

        async def turns() -> int:
            total = 0
            for name in two.names:
                async with http.get(two.prometheus_url(name)) as r:
                    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                    text = await r.text()
                for line in text.splitlines():
                    if line.startswith('xz_turns_total{kind="text",outcome="ok"}'):
                        total += int(line.split()[-1])
                assert "# TYPE xz_turn_first_audio_seconds histogram" in text
                assert "xz_sessions " in text
            return total

        before = await turns()
        fake.chat_script += [ChatReply(text="Okay.") for _ in range(4)]
        for _ in range(4):
            dev = await through_balancer(two)
            assert (await dev.ask_text("Count me.")).completed
            await dev.close()
        for _ in range(50):  # the last turn's metrics land just after its tts stop
            after = await turns()
            if after >= before + 4:
                break
            await asyncio.sleep(0.1)
        assert after == before + 4


async def test_process_killed_mid_reply_device_reconnects_with_history_intact(
        two: Fleet, fake: FakeOpenAIServer) -> None:
    """Last in this file: it kills one of the module's two processes."""
    ident = DeviceIdentity()
    dev = await through_balancer(two, ident)
    assert (await dev.ask_text("Remember that my favourite colour is green.")).completed
    await wait_rows(two, ident.mac, 1)
    victim = served_by(dev)
    fake.chat_script.append(ChatReply(text="This is a long story that goes on and on. " * 10, chunk_delay_s=0.15))
    await dev.listen_start("manual")
    await dev.listen_detect("Tell me a long story.")
    await dev.wait_for(lambda e: e.kind == "binary", timeout=20)  # mid-reply
    two.server(victim).proc.kill()
    await dev.wait_for(lambda e: e.kind == "close", timeout=10)
    # The firmware reconnects (and re-runs OTA at boot); the balancer sends it to the survivor.
    dev2 = await through_balancer(two, ident)
    assert served_by(dev2) != victim
    result = await dev2.ask_text("What is my favourite colour?")
    assert result.completed, result.error
    prompt = prompt_text(fake)
    assert "Remember that my favourite colour is green." in prompt
    assert "Tell me a long story." not in prompt, "the unfinished turn is not in the history"
    await dev2.close()
