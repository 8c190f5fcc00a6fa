"""EdgeTTS end to end against a local Edge endpoint that speaks the real wire format.

edge-tts (7.x) builds its URL from the module global `edge_tts.communicate.WSS_URL` on every
connection, so the tests point that one constant at harness/fakes/edge_server.py on 127.0.0.1; the
library's own WebSocket client, DRM token, SSML, framing and error paths all run unchanged. (Its
public `connector`/`proxy` parameters cannot redirect it: TLS is verified against certifi for
speech.platform.bing.com.) A guard makes any DNS lookup fail, so a test can never reach the
internet, even if a future edge-tts stopped reading that constant.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.fakes.edge_server import FakeEdgeServer
from harness.fakes.net_guard import block_internet
from server.audio.mp3 import decode_mp3
from server.providers.base import AudioChunk, ProviderContext, ProviderError, ProviderUnavailable
from server.providers.tts.edge import EdgeSettings, EdgeTTS
from tests.conftest import similarity, transcribe

pytestmark = pytest.mark.timeout(60)



@pytest.fixture(autouse=True)
def no_internet(monkeypatch: pytest.MonkeyPatch) -> None:
    block_internet(monkeypatch)


@pytest.fixture
async def edge(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeEdgeServer]:
    import edge_tts.communicate

    async with FakeEdgeServer() as server:
        monkeypatch.setattr(edge_tts.communicate, "WSS_URL", server.wss_url)
        yield server


ROOT = Path(__file__).resolve().parents[1]


async def make_tts(**settings: Any) -> EdgeTTS:
    root = ROOT
    ctx = ProviderContext(root_dir=root, data_dir=root / "data", models_dir=root / "models")
    tts = EdgeTTS(EdgeSettings(**settings), ctx)
    await tts.load()
    return tts


async def collect(tts: EdgeTTS, text: str) -> tuple[list[AudioChunk], list[float]]:
    chunks, times = [], []
    async for chunk in tts.synthesize(text):
        chunks.append(chunk)
        times.append(time.monotonic())
    return chunks, times


def rms(pcm: bytes) -> float:
    return float(np.sqrt(np.mean(np.frombuffer(pcm, np.int16).astype(np.float64) ** 2)))


async def test_streams_decoded_speech_as_it_arrives(edge: FakeEdgeServer, whisper: Any) -> None:
    edge.chunk_bytes, edge.chunk_interval_s = 1024, 0.03
    tts = await make_tts(voice="en-US-AriaNeural", rate="+10%", pitch="-5Hz", volume="+20%")
    text = "The weather in Beijing is sunny today."
    try:
        chunks, times = await collect(tts, text)
    finally:
        await tts.close()

    [req] = edge.requests
    # What the real service needs from the client.
    assert req.voice == "Microsoft Server Speech Text to Speech Voice (en-US, AriaNeural)"
    assert (req.rate, req.pitch, req.volume, req.text) == ("+10%", "-5Hz", "+20%", text)
    fmt = req.speech_config["context"]["synthesis"]["audio"]["outputFormat"]
    assert fmt == "audio-24khz-48kbitrate-mono-mp3"
    assert {"ConnectionId", "Sec-MS-GEC", "Sec-MS-GEC-Version"} <= set(req.query)

    # Streamed: several chunks, the first one before the service had even finished sending.
    assert len(chunks) >= 5 and req.audio_messages_sent >= 5
    assert req.turn_end_at is not None and times[0] < req.turn_end_at
    assert {c.sample_rate for c in chunks} == {24000}

    # The chunks are exactly the decode of the MP3 that was sent, and it is intelligible speech.
    pcm = b"".join(c.pcm for c in chunks)
    whole, rate = decode_mp3(req.mp3)
    assert pcm == whole and rate == 24000
    assert rms(pcm) > 300
    heard = transcribe(whisper, pcm, 24000)
    assert similarity(heard, text) >= 0.6, heard


async def test_barge_in_closes_the_connection_at_once(edge: FakeEdgeServer) -> None:
    edge.chunk_bytes, edge.chunk_interval_s = 512, 0.05
    tts = await make_tts(voice="en-US-AriaNeural")
    stream = tts.synthesize("This is a long answer that the user interrupts after the first words.")
    first = await anext(stream)
    t0 = time.monotonic()
    await stream.aclose()  # what the session does when the user starts talking
    assert time.monotonic() - t0 < 1.0
    assert first.pcm
    for _ in range(100):
        if edge.requests[0].closed_by_client:
            break
        await asyncio.sleep(0.01)
    req = edge.requests[0]
    assert req.closed_by_client and not req.turn_end_sent
    assert req.audio_messages_sent * 512 < len(req.mp3)


async def test_default_voice_is_chinese_xiaoxiao(edge: FakeEdgeServer) -> None:
    tts = await make_tts()
    try:
        chunks, _ = await collect(tts, "你好，今天天气很好。")
    finally:
        await tts.close()
    assert edge.requests[0].voice == "Microsoft Server Speech Text to Speech Voice (zh-CN, XiaoxiaoNeural)"
    assert edge.requests[0].text == "你好，今天天气很好。"
    assert rms(b"".join(c.pcm for c in chunks)) > 300


async def test_text_without_words_is_not_sent(edge: FakeEdgeServer) -> None:
    tts = await make_tts()
    assert (await collect(tts, " 😊 …！"))[0] == []
    assert edge.requests == []


async def test_stall_before_audio_times_out_and_retries(edge: FakeEdgeServer) -> None:
    edge.default_mode = "stall_before_audio"
    tts = await make_tts(timeout_s=0.5, retries=1)
    t0 = time.monotonic()
    with pytest.raises(ProviderError) as err:
        await collect(tts, "Hello there.")
    elapsed = time.monotonic() - t0
    assert err.value.retryable and "stalled before any audio" in str(err.value)
    assert err.value.provider == "tts.edge"
    assert len(edge.requests) == 2  # the first try and one retry
    assert 1.0 <= elapsed < 4.0


async def test_stall_mid_stream_raises_after_partial_audio_without_retry(edge: FakeEdgeServer) -> None:
    edge.default_mode = "stall_mid_stream"
    tts = await make_tts(timeout_s=0.5, retries=2)
    chunks: list[AudioChunk] = []
    with pytest.raises(ProviderError) as err:
        async for chunk in tts.synthesize("Hello there, this sentence will stall."):
            chunks.append(chunk)
    assert chunks, "the audio that did arrive was passed on"
    assert err.value.retryable and "stalled mid-stream" in str(err.value)
    assert len(edge.requests) == 1  # never restarted once the user heard something
    for _ in range(100):  # the fake notices the client's close a moment later
        if edge.requests[0].closed_by_client:
            break
        await asyncio.sleep(0.01)
    assert edge.requests[0].closed_by_client, "the stalled socket was closed, not leaked"


async def test_a_dead_peer_fails_on_time(edge: FakeEdgeServer) -> None:
    """A connection that went dead (no data, no answer to the close handshake) must not hold the
    turn for aiohttp's 10 s close timeout on top of ours."""
    edge.default_mode = "dead_mid_stream"
    tts = await make_tts(timeout_s=0.5)
    t0 = time.monotonic()
    with pytest.raises(ProviderError) as err:
        await collect(tts, "Hello there, this connection will die.")
    assert "stalled mid-stream" in str(err.value)
    assert time.monotonic() - t0 < 2.0

    # Barge-in while the peer is dead: closing the stream must not wait for a close handshake.
    stream = tts.synthesize("Hello there, this connection will die too.")
    await anext(stream)
    t0 = time.monotonic()
    await stream.aclose()
    assert time.monotonic() - t0 < 1.0
    await tts.close()


async def test_close_mid_stream_is_reported(edge: FakeEdgeServer) -> None:
    # edge-tts itself ends quietly here; the provider notices the missing turn.end.
    edge.default_mode = "close_mid_stream"
    tts = await make_tts(timeout_s=2)
    chunks: list[AudioChunk] = []
    with pytest.raises(ProviderError) as err:
        async for chunk in tts.synthesize("Hello there, this sentence will be cut."):
            chunks.append(chunk)
    assert chunks
    assert "closed the connection mid-sentence" in str(err.value)
    assert len(edge.requests) == 1


async def test_no_audio_is_not_retried_and_names_the_voice(edge: FakeEdgeServer) -> None:
    edge.default_mode = "no_audio"
    tts = await make_tts(voice="zh-CN-NoSuchVoiceNeural", retries=3)
    with pytest.raises(ProviderError) as err:
        await collect(tts, "你好")
    assert "no audio received" in str(err.value) and "zh-CN-NoSuchVoiceNeural" in str(err.value)
    assert not err.value.retryable
    assert len(edge.requests) == 1


async def test_server_error_then_success_is_retried(edge: FakeEdgeServer) -> None:
    edge.script = ["http_503"]
    tts = await make_tts(retries=1)
    chunks, _ = await collect(tts, "Second time lucky.")
    assert [r.mode for r in edge.requests] == ["http_503", "ok"]
    assert rms(b"".join(c.pcm for c in chunks)) > 300


async def test_refused_token_is_explained(edge: FakeEdgeServer) -> None:
    # edge-tts retries a 403 once itself (after adjusting its clock skew from the Date header).
    edge.default_mode = "http_403"
    tts = await make_tts(retries=2)
    with pytest.raises(ProviderError) as err:
        await collect(tts, "Hello.")
    assert "HTTP 403" in str(err.value) and "upgrade edge-tts" in str(err.value)
    assert not err.value.retryable


async def test_unreachable_endpoint_is_a_retryable_connection_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    import edge_tts.communicate

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(edge_tts.communicate, "WSS_URL", f"ws://127.0.0.1:{port}/edge/v1?TrustedClientToken=x")
    tts = await make_tts(retries=0)
    with pytest.raises(ProviderError) as err:
        await collect(tts, "Hello.")
    assert err.value.retryable and "cannot connect" in str(err.value)


async def test_the_guard_keeps_the_real_service_unreachable() -> None:
    """Without the redirect, the provider would try speech.platform.bing.com: the guard refuses it."""
    tts = await make_tts(retries=0)
    with pytest.raises(ProviderError) as err:
        await collect(tts, "Hello.")
    assert "DNS lookup" in str(err.value) and "speech.platform.bing.com" in str(err.value)


@pytest.mark.parametrize("bad", [{"rate": "10%"}, {"pitch": "+5%"}, {"volume": "loud"}, {"unknown_key": 1}])
def test_settings_are_checked_when_config_is_read(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        EdgeSettings(**bad)


async def test_malformed_voice_fails_at_startup() -> None:
    with pytest.raises(ProviderUnavailable, match="voice"):
        await make_tts(voice="Xiaoxiao")
