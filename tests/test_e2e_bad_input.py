"""Bad input never crashes a session and never disturbs the others. Each case: the offending
device is still served afterwards (or closed for a stated reason), and a bystander device that
is mid-conversation at the same time finishes its turn normally."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Awaitable, Callable

import pytest
from websockets.asyncio.client import connect

from harness.devsim import SimDevice
from harness.devsim.server_process import ServerProcess
from tests.conftest import http_get, http_json, speech

pytestmark = pytest.mark.e2e


async def metrics(server: ServerProcess) -> dict:
    return await http_json(server.http_url + "/metrics")


async def still_answers(dev: SimDevice) -> None:
    """The session is alive and fully working: a typed turn completes."""
    result = await dev.ask_text("Say hello.")
    assert result.completed, result.error
    assert result.frames_played > 0


async def with_bystander(server: ServerProcess, attack: Callable[[], Awaitable[None]]) -> None:
    """Run `attack` while another device holds a spoken conversation; that device must not notice."""
    async with SimDevice() as bystander:
        await bystander.ota(server.http_url)
        await bystander.connect()
        clip = await speech("What is the capital of France?")
        turn = asyncio.create_task(bystander.ask_audio(clip))
        await attack()
        result = await turn
        assert result.completed, result.error
        assert "france" in result.stt_text.lower()
        assert result.frames_played > 0 and result.overflow_drops == 0
        assert not bystander.violations


@pytest.mark.parametrize("frame", [
    "this is not json",
    "{broken json",
    '["a", "list"]',
    "42",
    '{"no_type": true}',
    '{"type": "teleport"}',
    '{"type": 17}',
    '{"type": "listen", "state": 5}',
    '{"type": "listen", "state": "start", "mode": "turbo"}',
    '{"type": "hello", "audio_params": "opus"}',
    '{"type": "mcp", "payload": "not an object"}',
    '{"type": "abort", "reason": ["x"]}',
    '{"type": "stt", "text": "devices do not send stt"}',
])
async def test_bad_text_frames(device: SimDevice, frame: str) -> None:
    await device.send_text_raw(frame)
    await still_answers(device)


async def test_bad_text_with_a_bystander(server: ServerProcess, device: SimDevice) -> None:
    async def attack() -> None:
        for frame in ("garbage", '{"type": "nope"}', '{"type":"listen","state":{}}') * 20:
            await device.send_text_raw(frame)
    await with_bystander(server, attack)
    await still_answers(device)


async def test_binary_before_hello_is_dropped(server: ServerProcess) -> None:
    before = (await metrics(server))["counters"].get("audio_before_hello", 0)
    headers = {"Device-Id": "02:00:00:00:00:01", "Client-Id": "c", "Protocol-Version": "1"}
    async with connect(server.ws_url, additional_headers=headers, compression=None) as ws:
        for _ in range(5):
            await ws.send(b"\x01\x02\x03")
        await ws.send(json.dumps({"type": "hello", "version": 1, "transport": "websocket",
                                  "audio_params": {"format": "opus", "sample_rate": 16000, "channels": 1,
                                                   "frame_duration": 60}}))
        hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert hello["type"] == "hello" and hello["transport"] == "websocket"
    assert (await metrics(server))["counters"].get("audio_before_hello", 0) >= before + 5


async def test_undecodable_opus(server: ServerProcess, device: SimDevice) -> None:
    before = (await metrics(server))["counters"].get("bad_opus_frames", 0)
    await device.listen_start("auto")

    async def attack() -> None:
        for _ in range(20):
            await device.send_opus(b"\xff\xff\xff\xff\xfe" * 10)
    await with_bystander(server, attack)
    assert (await metrics(server))["counters"].get("bad_opus_frames", 0) >= before + 20
    # Real speech right after the garbage is still understood.
    result = await device.ask_audio(await speech("What is the capital of France?"))
    assert "france" in result.stt_text.lower()


@pytest.mark.parametrize("version,bad", [
    (2, struct.pack(">HHIII", 2, 0, 0, 0, 500) + b"x" * 10),  # says 500, carries 10
    (2, b"\x00\x02\x00"),  # shorter than the header
    (3, struct.pack(">BBH", 0, 0, 3) + b"x" * 40),  # says 3, carries 40
    (3, b"\x00"),
])
async def test_framing_size_mismatch(server: ServerProcess, version: int, bad: bytes) -> None:
    before = (await metrics(server))["counters"].get("bad_binary_frames", 0)
    async with SimDevice() as dev:
        await dev.ota(server.http_url)
        await dev.connect(protocol_version=version)
        await dev.listen_start("auto")
        for _ in range(3):
            await dev.send_binary_raw(bad)
        result = await dev.ask_audio(await speech("What is the capital of France?"))
        assert "france" in result.stt_text.lower()
        assert result.frames_played > 0
    assert (await metrics(server))["counters"].get("bad_binary_frames", 0) >= before + 3


async def test_oversized_message_closes_with_1009(server: ServerProcess) -> None:
    async with SimDevice() as dev:
        await dev.ota(server.http_url)
        await dev.connect()
        await dev.send_binary_raw(b"\x00" * (256 * 1024))
        closed = await dev.wait_for(lambda e: e.kind == "close", timeout=5)
        assert closed.close_code == 1009
    # The server is fine: a new connection works.
    async with SimDevice() as dev:
        await dev.ota(server.http_url)
        await dev.connect()
        await still_answers(dev)


async def test_flood_faster_than_real_time_stays_bounded(server: ServerProcess) -> None:
    rss_before = server.rss_bytes()
    dropped_before = (await metrics(server))["counters"].get("uplink_frames_dropped", 0)
    clip = await speech("This is a flood of audio that arrives much faster than real time.")

    async with SimDevice() as flooder:
        await flooder.ota(server.http_url)
        await flooder.connect()
        await flooder.listen_start("manual")

        async def attack() -> None:
            # ~3 minutes of audio as fast as the socket takes it.
            for _ in range(40):
                await flooder.stream_audio(clip, realtime=False)

        await with_bystander(server, attack)
        assert (await metrics(server))["counters"].get("uplink_frames_dropped", 0) > dropped_before
        # Growth stays far below what buffering everything would cost.
        assert server.rss_bytes() - rss_before < 150 * 1024 * 1024
        await flooder.listen_stop()
        aborted = await flooder.abort()
        await flooder.wait_for(lambda e: e.is_msg("tts", "stop") and e.t >= aborted, timeout=10)
        await still_answers(flooder)


async def test_disconnect_mid_turn_cleans_up(server: ServerProcess) -> None:
    dev = SimDevice()
    await dev.ota(server.http_url)
    await dev.connect()
    await dev.listen_start("manual")
    await dev.listen_detect("Tell me a long story about the sea.")
    await dev.wait_for(lambda e: e.kind == "binary", timeout=30)
    await dev.close(abrupt=True)
    for _ in range(50):
        health = await http_json(server.http_url + "/health")
        if health["sessions"] == 0:
            break
        await asyncio.sleep(0.1)
    assert health["sessions"] == 0
    assert "Traceback" not in server.log_text()
    assert any(t["interrupted"] for t in (await metrics(server))["turns"])


async def test_no_device_id_gets_an_identity_of_its_own(server: ServerProcess) -> None:
    """Issue 7: a connection without any device id is served under a per-connection identity
    (server/transport/device_id.py) instead of being refused or sharing one."""
    async with connect(server.ws_url, compression=None) as ws:
        await ws.send(json.dumps({"type": "hello", "version": 1, "transport": "websocket"}))
        hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert hello["type"] == "hello"
    assert await server.wait_for_log("no device id; using a per-connection identity")


async def test_query_string_identity_for_browsers(server: ServerProcess) -> None:
    url = server.ws_url + "?device-id=02:00:00:00:00:99&client-id=web"
    async with connect(url, compression=None) as ws:
        await ws.send(json.dumps({"type": "hello", "version": 1, "transport": "websocket"}))
        hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert hello["type"] == "hello"


async def test_plain_http_get_gets_a_status_text(server: ServerProcess) -> None:
    status, body = await http_get(f"http://127.0.0.1:{server.ws_port}/")
    assert status == 200 and b"running" in body


async def test_no_tracebacks_in_the_log(server: ServerProcess) -> None:
    assert "Traceback" not in server.log_text()
