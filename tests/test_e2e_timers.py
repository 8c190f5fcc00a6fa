"""Idle handling: a silent client is closed, a quiet device hears a goodbye. Timeouts are
shortened through config; the mechanism is the same as with the defaults (10 s / 120 s)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from harness.devsim import SimDevice
from harness.devsim.server_process import ServerProcess, start_server
from server.pipeline.phrases import phrase
from tests.conftest import transcribe

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
async def quick_server() -> AsyncIterator[ServerProcess]:
    async with start_server({"session": {"hello_timeout_s": 1.5, "idle_timeout_s": 3,
                                         "wake_reply": "I'm listening."}}) as proc:
        yield proc


async def test_client_without_hello_is_closed(quick_server: ServerProcess) -> None:
    headers = {"Device-Id": "02:00:00:00:00:10", "Client-Id": "c"}
    async with connect(quick_server.ws_url, additional_headers=headers, compression=None) as ws:
        t0 = time.monotonic()
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), timeout=10)
        waited = time.monotonic() - t0
    assert 1.0 <= waited < 5, waited


async def test_idle_device_hears_goodbye_then_is_closed(quick_server: ServerProcess, whisper) -> None:
    async with SimDevice() as dev:
        await dev.ota(quick_server.http_url)
        await dev.connect()
        await dev.listen_start("auto")
        stop = await dev.wait_for(lambda e: e.is_msg("tts", "stop"), timeout=15)
        closed = await dev.wait_for(lambda e: e.kind == "close", timeout=10)
        assert closed.close_code == 1000 and closed.t >= stop.t
        frames = [e for e in dev.events if e.kind == "binary" and e.accepted]
        assert frames, "the goodbye is spoken"
        pcm = b"".join(e.pcm for e in frames if e.pcm)
        heard = transcribe(whisper, pcm, dev.decode_sample_rate)
        assert "bye" in heard.lower(), heard
        assert [m["text"] for m in dev.messages("tts", "sentence_start")]


async def test_activity_postpones_the_idle_goodbye(quick_server: ServerProcess) -> None:
    async with SimDevice() as dev:
        await dev.ota(quick_server.http_url)
        await dev.connect()
        for _ in range(3):
            await asyncio.sleep(2)  # under the 3 s idle limit, and the turns reset it
            result = await dev.ask_text("Hi.")
            assert result.completed
        said = [m["text"] for m in dev.messages("tts", "sentence_start")]
        assert phrase("idle_goodbye", "en") not in said
        assert not [e for e in dev.events if e.kind == "close"]


async def test_wake_word_gets_the_instant_reply(quick_server: ServerProcess, whisper) -> None:
    async with SimDevice() as dev:
        await dev.ota(quick_server.http_url)
        await dev.connect()
        t0 = time.monotonic()
        await dev.send_wake_word(b"\x00\x00" * 16000, wake_word="你好小智")
        stop = await dev.wait_for(lambda e: e.is_msg("tts", "stop"), timeout=10)
        assert [m["text"] for m in dev.messages("tts", "sentence_start")] == ["I'm listening."]
        pcm = b"".join(e.pcm for e in dev.events if e.kind == "binary" and e.accepted and e.pcm)
        assert "listening" in transcribe(whisper, pcm, dev.decode_sample_rate).lower()
        assert stop.t - t0 < 5
