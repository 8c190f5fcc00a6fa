"""Tests of the simulated device and the speech generator. None of them needs the project's
server: wire behaviour is checked against small scripted WebSocket/HTTP peers defined here."""

from __future__ import annotations

import asyncio
import json
import math
import struct
import time
import uuid
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from websockets.asyncio.server import ServerConnection, serve

from harness.devsim import (
    DeviceConnectError,
    DeviceMcpServer,
    EspeakNotFound,
    HelloTimeout,
    McpProperty,
    McpTool,
    PlaybackQueueModel,
    SimDevice,
    SpeechSynthesisError,
    UplinkEncoder,
    filler_tools,
    opus_packet_duration_ms,
    pad,
    silence,
    synthesize_speech,
)
from harness.devsim import speech as speech_mod
from server.audio.opus import OpusDecoder, OpusEncoder
from server.audio.pcm import resample
from server.protocol import pack, unpack

SENTENCE_EN = "The quick brown fox jumps over the lazy dog near the river bank."
SENTENCE_ZH = "今天天气很好，我们一起去公园散步吧。"


def rms(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float64)
    return float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0


@pytest.fixture(scope="module")
async def english_speech(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return await synthesize_speech(SENTENCE_EN, cache_dir=tmp_path_factory.mktemp("speech"))


# ---------------------------------------------------------------------------------------- speech


def test_silence_and_pad_lengths() -> None:
    assert silence(60) == b"\x00\x00" * 960
    assert len(silence(1000, sample_rate=24000)) == 48000
    padded = pad(b"\x01\x00" * 10, before_ms=10, after_ms=20)
    assert len(padded) == (160 + 10 + 320) * 2
    assert padded[320:340] == b"\x01\x00" * 10


async def test_english_speech_is_plausible(english_speech: bytes) -> None:
    seconds = len(english_speech) / 2 / 16000
    # ~13 words at 150 wpm: a few seconds, certainly more than one.
    assert 2.0 < seconds < 10.0
    assert rms(english_speech) > 500
    # Speech has pauses: the loudest 100 ms window is far louder than the quietest.
    windows = [rms(english_speech[i:i + 3200]) for i in range(0, len(english_speech) - 3200, 3200)]
    assert max(windows) > 10 * (min(windows) + 1)


async def test_mandarin_speech_is_plausible(tmp_path: Any) -> None:
    pcm = await synthesize_speech(SENTENCE_ZH, voice="cmn", cache_dir=tmp_path)
    assert len(pcm) / 2 / 16000 > 1.5
    assert rms(pcm) > 500
    english = await synthesize_speech(SENTENCE_ZH, voice="en-us", cache_dir=tmp_path)
    assert pcm != english  # the voice is part of what was synthesized (and of the cache key)


async def test_speech_cache_memory_and_disk(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    text = f"cache check {uuid.uuid4().hex[:6]}"
    first = await synthesize_speech(text, rate_wpm=170, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.wav"))
    assert len(files) == 1
    # With espeak "uninstalled", both the memory and the disk cache must still answer.
    monkeypatch.setattr(speech_mod, "ESPEAK_BINARY", "espeak-ng-definitely-missing")
    assert await synthesize_speech(text, rate_wpm=170, cache_dir=tmp_path) == first
    speech_mod.clear_memory_cache()
    assert await synthesize_speech(text, rate_wpm=170, cache_dir=tmp_path) == first
    # A different rate is a different key, so it needs espeak.
    with pytest.raises(EspeakNotFound, match="espeak-ng-definitely-missing"):
        await synthesize_speech(text, rate_wpm=171, cache_dir=tmp_path)


async def test_unknown_voice_is_a_clear_error() -> None:
    with pytest.raises(SpeechSynthesisError, match="xx-nonexistent"):
        await synthesize_speech("hello", voice="xx-nonexistent", cache_dir=None)


# ----------------------------------------------------------------------------------------- opus


def best_correlation(a: np.ndarray, b: np.ndarray, max_lag: int) -> float:
    """Highest normalised correlation of b against a over lags 0..max_lag (the codec delay).
    Element-wise sums on purpose: the first BLAS call (np.dot) can take seconds to spin up."""
    n = min(len(a), len(b)) - max_lag
    ref = a[:n]
    ref_norm = math.sqrt(float((ref * ref).sum()))
    scores = []
    for lag in range(max_lag):
        seg = b[lag:lag + n]
        scores.append(float((ref * seg).sum()) / (ref_norm * math.sqrt(float((seg * seg).sum())) + 1e-9))
    return max(scores)


async def test_opus_round_trip_of_speech(english_speech: bytes) -> None:
    encoder = UplinkEncoder(frame_ms=60)
    assert encoder.dtx
    packets = encoder.encode_all(english_speech)
    assert len(packets) == math.ceil(len(english_speech) / 1920)
    assert all(opus_packet_duration_ms(p) == 60.0 for p in packets)
    decoder = OpusDecoder(16000)
    decoded = b"".join(decoder.decode(p) for p in packets)
    assert len(decoded) == len(packets) * 960 * 2
    original = np.frombuffer(english_speech, dtype=np.int16).astype(np.float64)
    restored = np.frombuffer(decoded, dtype=np.int16).astype(np.float64)
    assert best_correlation(original, restored, max_lag=480) > 0.8
    # The same packets decode at the downlink rate too (Opus output rate is the decoder's choice).
    at_24k = b"".join(OpusDecoder(24000).decode(p) for p in packets)
    assert len(at_24k) == len(packets) * 1440 * 2


def test_dtx_turns_silence_into_tiny_packets() -> None:
    packets = UplinkEncoder(frame_ms=60).encode(silence(3000))
    assert len(packets) == 50
    assert sum(len(p) <= 3 for p in packets) > 35


def test_py_xiaozhi_20ms_uplink_frames() -> None:
    packets = UplinkEncoder(frame_ms=20).encode_all(silence(1000))
    assert len(packets) == 50
    assert {opus_packet_duration_ms(p) for p in packets} == {20.0}


def test_opus_toc_durations() -> None:
    assert opus_packet_duration_ms(bytes([0x18])) == 60.0  # SILK config 3, one frame
    assert opus_packet_duration_ms(bytes([0xF8])) == 20.0  # CELT config 31
    assert opus_packet_duration_ms(bytes([0xF9])) == 40.0  # code 1: two frames
    assert opus_packet_duration_ms(bytes([0xFB, 0x03])) == 60.0  # code 3, 3 frames
    assert opus_packet_duration_ms(bytes([0x1B, 0x03])) is None  # 3 x 60 ms > 120 ms
    assert opus_packet_duration_ms(b"") is None


# ------------------------------------------------------------------------------------------ MCP


def rpc(method: str, params: dict[str, Any] | None = None, id_: Any = 1) -> dict[str, Any]:
    out: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id_}
    if params is not None:
        out["params"] = params
    return out


def test_tools_list_pagination_covers_every_tool() -> None:
    mcp = DeviceMcpServer.with_defaults(filler_tools(40, description_bytes=700))
    assert sum(len(t.to_json()) for t in mcp.tools) > 3 * 8000
    names: list[str] = []
    cursor = ""
    pages = 0
    while True:
        raw = mcp.handle(rpc("tools/list", {"cursor": cursor} if cursor else None, id_=2))
        assert raw is not None
        reply = json.loads(raw)
        result_bytes = len(json.dumps(reply["result"], ensure_ascii=False, separators=(",", ":")).encode())
        assert result_bytes <= 8000
        pages += 1
        page_names = [t["name"] for t in reply["result"]["tools"]]
        assert page_names
        names += page_names
        if "nextCursor" not in reply["result"]:
            break
        cursor = reply["result"]["nextCursor"]
        # The cursor is the first tool that did not fit, i.e. the next tool in order.
        assert cursor == mcp.tools[len(names)].name
    assert pages >= 4
    assert names == [t.name for t in mcp.tools]
    assert names[:2] == ["self.get_device_status", "self.audio_speaker.set_volume"]


def test_tools_list_exact_bytes_and_user_only_tools() -> None:
    tool = McpTool("self.reboot", "Reboot the system", (), user_only=True)
    mcp = DeviceMcpServer.with_defaults([tool])
    listed = mcp.handle(rpc("tools/list"))
    assert listed is not None and "self.reboot" not in listed
    with_user = mcp.handle_obj(rpc("tools/list", {"withUserTools": True}))
    assert with_user is not None
    assert with_user["result"]["tools"][-1] == {
        "name": "self.reboot", "description": "Reboot the system",
        "inputSchema": {"type": "object", "properties": {}}, "annotations": {"audience": ["user"]}}
    assert mcp.tools[1].to_json().endswith(
        '"inputSchema":{"type":"object","properties":{"volume":{"type":"integer","minimum":0,"maximum":100}},'
        '"required":["volume"]}}')


def test_tools_list_single_oversized_tool_is_an_error() -> None:
    mcp = DeviceMcpServer(tools=[McpTool("self.huge", "x" * 9000)])
    reply = mcp.handle_obj(rpc("tools/list", id_=5))
    assert reply == {"jsonrpc": "2.0", "id": 5,
                     "error": {"message": "Failed to add tool self.huge because of payload size limit"}}


def test_mcp_requests_the_firmware_ignores() -> None:
    mcp = DeviceMcpServer.with_defaults()
    assert mcp.handle(rpc("tools/list", id_="2")) is None  # string id
    assert mcp.handle({"jsonrpc": "2.0", "method": "notifications/initialized"}) is None
    assert mcp.handle({"jsonrpc": "1.0", "method": "tools/list", "id": 1}) is None
    assert mcp.handle({"jsonrpc": "2.0", "id": 1, "result": {}}) is None  # a response, no method
    assert mcp.handle(rpc("tools/list", id_=None)) is None
    assert mcp.handle({"jsonrpc": "2.0", "method": "tools/list", "id": 1, "params": None}) is None
    assert mcp.handle({"jsonrpc": "2.0", "method": "tools/list", "id": 1, "params": [1]}) is None
    assert mcp.handle(rpc("tools/list", id_=True)) is None  # JSON true is not a number for cJSON
    assert [r.ignored is not None for r in mcp.requests] == [True] * 8
    assert mcp.calls == []


def test_mcp_errors_have_no_code() -> None:
    mcp = DeviceMcpServer.with_defaults()
    assert mcp.handle(rpc("ping", id_=7)) == (
        '{"jsonrpc":"2.0","id":7,"error":{"message":"Method not implemented: ping"}}')
    cases = [
        ({"name": "self.nope"}, "Unknown tool: self.nope"),
        ({"arguments": {}}, "Missing name"),
        ({"name": "self.audio_speaker.set_volume", "arguments": []}, "Invalid arguments"),
        ({"name": "self.audio_speaker.set_volume", "arguments": {}}, "Missing valid argument: volume"),
        ({"name": "self.audio_speaker.set_volume", "arguments": {"volume": "50"}}, "Missing valid argument: volume"),
        ({"name": "self.audio_speaker.set_volume", "arguments": {"volume": 101}}, "Value exceeds maximum allowed: 100"),
        ({"name": "self.audio_speaker.set_volume", "arguments": {"volume": -1}}, "Value is below minimum allowed: 0"),
    ]
    for i, (params, message) in enumerate(cases, start=10):
        reply = mcp.handle_obj(rpc("tools/call", params, id_=i))
        assert reply == {"jsonrpc": "2.0", "id": i, "error": {"message": message}}
    assert mcp.handle_obj(rpc("tools/call", None, id_=3)) == {
        "jsonrpc": "2.0", "id": 3, "error": {"message": "Missing params"}}
    assert mcp.status.volume == 70  # nothing above changed it
    assert len(mcp.calls) == len(cases) + 1


def test_mcp_tool_calls_and_initialize() -> None:
    mcp = DeviceMcpServer.with_defaults()
    init = mcp.handle(rpc("initialize", {"protocolVersion": "2024-11-05", "capabilities": {
        "vision": {"url": "http://10.0.0.1:8003/mcp/vision/explain", "token": "tok"}}}, id_=1))
    assert init == ('{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2024-11-05","capabilities":'
                    '{"tools":{}},"serverInfo":{"name":"bread-compact-wifi","version":"2.4.2"}}}')
    assert (mcp.vision_url, mcp.vision_token) == ("http://10.0.0.1:8003/mcp/vision/explain", "tok")
    ok = mcp.handle(rpc("tools/call", {"name": "self.audio_speaker.set_volume", "arguments": {"volume": 35.9}},
                        id_=3.0))
    assert ok == '{"jsonrpc":"2.0","id":3,"result":{"content":[{"type":"text","text":"true"}],"isError":false}}'
    assert mcp.status.volume == 35  # cJSON valueint truncates
    status = mcp.handle_obj(rpc("tools/call", {"name": "self.get_device_status"}, id_=4))
    assert status is not None
    assert json.loads(status["result"]["content"][0]["text"])["audio_speaker"] == {"volume": 35}
    assert [(c.id, c.payload["params"]["name"]) for c in mcp.calls] == [
        (3, "self.audio_speaker.set_volume"), (4, "self.get_device_status")]


def test_mcp_custom_tool_defaults_and_exceptions() -> None:
    seen: list[dict[str, Any]] = []

    def handler(args: dict[str, Any]) -> dict[str, Any]:
        seen.append(args)
        if args["mode"] == "boom":
            raise RuntimeError("lamp is broken")
        return {"on": args["on"], "mode": args["mode"]}

    tool = McpTool("self.lamp.set", "Set the lamp", (McpProperty("on", "boolean", default=False),
                                                     McpProperty("mode", "string")), handler)
    mcp = DeviceMcpServer(tools=[tool])
    assert '"required":["mode"]' in tool.to_json()
    reply = mcp.handle_obj(rpc("tools/call", {"name": "self.lamp.set", "arguments": {"mode": "warm"}}))
    assert reply is not None
    assert reply["result"]["content"][0]["text"] == '{"on":false,"mode":"warm"}'
    error = mcp.handle_obj(rpc("tools/call", {"name": "self.lamp.set", "arguments": {"mode": "boom", "on": 1}}))
    assert error == {"jsonrpc": "2.0", "id": 1, "error": {"message": "lamp is broken"}}
    assert seen[-1] == {"on": False, "mode": "boom"}  # 1 is not a JSON boolean: default used


# ------------------------------------------------------------------------------ playback model


def test_burst_overflows_the_decode_queue() -> None:
    model = PlaybackQueueModel()
    results = [model.push(100.0, 0.06) for _ in range(50)]
    assert results.count(True) == 40
    assert model.overflow_drops == 10
    assert model.max_depth == 40
    assert model.drained_at() == pytest.approx(100.0 + 40 * 0.06)


def test_paced_frames_keep_the_queue_short() -> None:
    model = PlaybackQueueModel()
    for i in range(200):
        assert model.push(10.0 + i * 0.06, 0.06)
    assert model.max_depth <= 2
    assert model.overflow_drops == 0
    assert model.underruns == 0


def test_prebuffer_then_realtime_stays_bounded() -> None:
    # Reference-server style: 5 packets at once, then one per 60 ms.
    model = PlaybackQueueModel()
    for _ in range(5):
        model.push(0.0, 0.06)
    for i in range(100):
        model.push(0.06 * (i + 1), 0.06)
    assert model.max_depth <= 6
    assert model.overflow_drops == 0


def test_slightly_fast_sender_eventually_overflows() -> None:
    # 10 % faster than real time gains one packet every ~0.6 s: 40 packets ahead after ~24 s.
    model = PlaybackQueueModel()
    for i in range(600):
        model.push(i * 0.054, 0.06)
    assert model.max_depth == 40
    assert model.overflow_drops > 0


def test_gaps_count_as_underruns_and_reset_flushes() -> None:
    model = PlaybackQueueModel()
    model.push(0.0, 0.06)
    model.push(0.5, 0.06)  # the queue ran dry at 0.06: a 440 ms gap
    assert model.underruns == 1
    assert model.underrun_s == pytest.approx(0.44)
    for _ in range(10):
        model.push(0.55, 0.06)  # the packet from 0.5 is still playing: no new gap
    assert model.underruns == 1
    assert model.depth(0.6) == 10
    model.reset()  # entering speaking again: ResetDecoder()
    assert model.depth(0.6) == 0
    assert model.push(0.7, 0.06)
    assert model.underruns == 1  # no gap is counted across a reset


# ----------------------------------------------------------------------- scripted peers (wire)

Script = Callable[[ServerConnection, "FakeServer"], Awaitable[None]]


class FakeServer:
    """A scripted WebSocket peer standing in for a xiaozhi server."""

    def __init__(self, script: Script, process_request: Any = None) -> None:
        self.script = script
        self.process_request = process_request
        self.requests: list[Any] = []
        self.texts: list[dict[str, Any]] = []
        self.binaries: list[tuple[float, bytes]] = []
        self.url = ""

    async def __aenter__(self) -> FakeServer:
        self._server = await serve(self._handler, "127.0.0.1", 0, compression=None,
                                   process_request=self.process_request)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/xiaozhi/v1/"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _handler(self, ws: ServerConnection) -> None:
        self.requests.append(ws.request)
        try:
            await self.script(ws, self)
        except Exception:
            pass

    async def recv_json(self, ws: ServerConnection, timeout: float = 10.0) -> dict[str, Any]:
        """Next text message; binary frames met on the way are collected."""
        while True:
            data = await asyncio.wait_for(ws.recv(), timeout)
            if isinstance(data, bytes):
                self.binaries.append((time.monotonic(), data))
                continue
            message = json.loads(data)
            self.texts.append(message)
            return message

    async def recv_until(self, ws: ServerConnection, type_: str, state: str | None = None) -> dict[str, Any]:
        while True:
            message = await self.recv_json(ws)
            if message.get("type") == type_ and (state is None or message.get("state") == state):
                return message


SERVER_HELLO = {"type": "hello", "transport": "websocket", "session_id": "sess-1",
                "audio_params": {"format": "opus", "sample_rate": 24000, "channels": 1, "frame_duration": 60}}


async def hello_then_idle(ws: ServerConnection, srv: FakeServer) -> None:
    await srv.recv_json(ws)
    await ws.send(json.dumps(SERVER_HELLO))
    await ws.wait_closed()


def tts_packets(pcm16k: bytes) -> list[bytes]:
    encoder = OpusEncoder(sample_rate=24000, frame_ms=60)
    pcm = resample(pcm16k, 16000, 24000)
    return encoder.encode(pcm) + encoder.flush()


async def test_handshake_headers_and_hello() -> None:
    async with FakeServer(hello_then_idle) as srv:
        async with SimDevice() as dev:
            hello = await dev.connect(srv.url, token="abc", protocol_version=1)
            assert hello["session_id"] == "sess-1"
            assert dev.session_id == "sess-1"
            assert (dev.downlink_sample_rate, dev.downlink_frame_duration) == (24000, 60)
            await dev.listen_start("auto")
            await asyncio.sleep(0.1)
        headers = srv.requests[0].headers
        assert headers["Authorization"] == "Bearer abc"
        assert headers["Protocol-Version"] == "1"
        assert headers["Device-Id"] == dev.identity.mac == dev.identity.mac.lower()
        assert uuid.UUID(headers["Client-Id"]).version == 4
        assert "User-Agent" not in headers
        assert "Sec-WebSocket-Extensions" not in headers  # no permessage-deflate offered
        assert srv.texts[0] == {
            "type": "hello", "version": 1, "features": {"mcp": True, "glyph_push": False},
            "transport": "websocket",
            "audio_params": {"format": "opus", "sample_rate": 16000, "channels": 1, "frame_duration": 60}}
        assert dev.sent[1].data == '{"session_id":"sess-1","type":"listen","state":"start","mode":"auto"}'
        assert dev.violations == []


async def test_token_rules_and_py_xiaozhi_style() -> None:
    async with FakeServer(hello_then_idle) as srv:
        async with SimDevice() as dev:
            await dev.connect(srv.url, token="")
        async with SimDevice() as dev:
            await dev.connect(srv.url, token="Bearer already-prefixed")
        async with SimDevice(py_xiaozhi=True, frame_duration=20) as pyx:
            await pyx.connect(srv.url, token="")
            await pyx.listen_start("manual")
            assert pyx.session_id == ""  # py-xiaozhi does not store the session id
        assert "Authorization" not in srv.requests[0].headers
        assert srv.requests[1].headers["Authorization"] == "Bearer already-prefixed"
        assert srv.requests[2].headers["Authorization"] == "Bearer test-token"
        pyx_hello = json.loads(pyx.sent[0].data)
        assert pyx_hello["features"] == {"mcp": True}
        assert pyx_hello["audio_params"]["frame_duration"] == 20
        assert json.loads(pyx.sent[1].data)["session_id"] == ""


async def test_rejections_surface_as_connect_errors() -> None:
    def unauthorized(connection: ServerConnection, request: Any) -> Any:
        return connection.respond(HTTPStatus.UNAUTHORIZED, "bad token\n")

    async with FakeServer(hello_then_idle, process_request=unauthorized) as srv:
        with pytest.raises(DeviceConnectError) as info:
            await SimDevice().connect(srv.url, token="x")
        assert info.value.status == 401

    async def reference_style_reject(ws: ServerConnection, srv: FakeServer) -> None:
        await srv.recv_json(ws)
        await ws.send("认证失败")
        await ws.close()

    async with FakeServer(reference_style_reject) as srv:
        dev = SimDevice()
        with pytest.raises(DeviceConnectError, match="before the server hello"):
            await dev.connect(srv.url)
        assert any("non-JSON" in v for v in dev.violations)
        assert dev.events[-1].kind == "close" and dev.events[-1].close_code == 1000


async def test_bad_server_hello_is_a_violation_and_times_out() -> None:
    async def no_transport(ws: ServerConnection, srv: FakeServer) -> None:
        await srv.recv_json(ws)
        await ws.send(json.dumps({"type": "hello", "session_id": "x"}))
        await ws.wait_closed()

    async with FakeServer(no_transport) as srv:
        dev = SimDevice(hello_timeout=0.5)
        with pytest.raises(HelloTimeout):
            await dev.connect(srv.url)
        assert any("transport" in v and "NULL" in v for v in dev.violations)
        assert dev.closed


async def test_downlink_audio_state_machine_over_v2_framing() -> None:
    frames = tts_packets(pad(b"", 0, 3300))  # 55 packets of 60 ms

    async def script(ws: ServerConnection, srv: FakeServer) -> None:
        await srv.recv_json(ws)
        await ws.send(json.dumps(SERVER_HELLO))
        for p in frames[:3]:  # before tts start: dropped by the device
            await ws.send(pack(2, p, timestamp=1))
        await ws.send(json.dumps({"type": "tts", "state": "start"}))
        for p in frames[3:53]:  # 50 packets at once: 10 overflow
            await ws.send(pack(2, p, timestamp=7))
        await ws.send(b"\x00\x02garbage")  # malformed v2 frame
        await ws.send("not json at all")
        await ws.send(json.dumps([1, 2]))
        await ws.send(json.dumps({"type": "tts", "state": "sentence_end"}))
        await ws.send(json.dumps({"type": "tts", "state": "stop"}))
        for p in frames[53:]:  # after tts stop: dropped
            await ws.send(pack(2, p))
        await ws.send(json.dumps({"type": "stt", "text": "still alive"}))
        await ws.wait_closed()

    async with FakeServer(script) as srv:
        async with SimDevice(auto_relisten=False) as dev:
            await dev.connect(srv.url, protocol_version=2)
            await dev.wait_for_message("stt", timeout=5)
            assert srv.requests[0].headers["Protocol-Version"] == "2"
            assert json.loads(dev.sent[0].data)["version"] == 2
            assert dev.dropped_not_speaking == 5
            assert dev.overflow_drops == 10
            assert dev.max_queue_depth == 40
            assert dev.malformed_frames == 1
            accepted = [e for e in dev.events if e.kind == "binary" and e.accepted]
            assert len(accepted) == 40
            assert all(e.timestamp == 7 and e.pcm is not None and len(e.pcm) == 1440 * 2 for e in accepted)
            assert len(dev.violations) == 3  # malformed frame, non-JSON, non-object
            assert any("sentence_end" in w for w in dev.warnings)
            assert dev.state == "listening"  # auto mode: tts stop -> listening


async def test_state_change_delay_drops_audio_sent_right_after_tts_start() -> None:
    frames = tts_packets(silence(600))  # 10 packets

    async def script(ws: ServerConnection, srv: FakeServer) -> None:
        await srv.recv_json(ws)
        await ws.send(json.dumps({**SERVER_HELLO, "audio_params": {"sample_rate": 16000, "frame_duration": 60}}))
        await ws.send(json.dumps({"type": "tts", "state": "start"}))
        for p in frames[:4]:  # the device's main loop has not switched to speaking yet
            await ws.send(p)
        await asyncio.sleep(0.15)
        for p in frames[4:]:
            await ws.send(p)
        await ws.send(json.dumps({"type": "tts", "state": "stop"}))
        await ws.wait_closed()

    async with FakeServer(script) as srv:
        async with SimDevice(state_change_delay_ms=50, auto_relisten=False) as dev:
            await dev.connect(srv.url)
            await dev.wait_for_message("tts", "stop", timeout=5)
            await asyncio.sleep(0.1)
            assert dev.dropped_not_speaking == 4
            played = [e for e in dev.events if e.accepted]
            assert len(played) == 6
            assert all(e.pcm is not None and len(e.pcm) == 960 * 2 for e in played)  # declared 16 kHz
            assert dev.state == "listening"


async def test_hello_quirks_and_py_xiaozhi_decode_rate() -> None:
    async def script(ws: ServerConnection, srv: FakeServer) -> None:
        await srv.recv_json(ws)
        await ws.send(json.dumps({"type": "hello", "transport": "websocket", "session_id": 'a"b',
                                  "audio_params": {"sample_rate": 44100, "frame_duration": 20}}))
        await ws.send(json.dumps({"type": "tts", "state": "start"}))
        await asyncio.sleep(0.02)
        await ws.send(tts_packets(silence(60))[0])  # a 60 ms packet, longer than the declared 20 ms
        await ws.send(json.dumps({"type": "alert", "status": "x", "message": 5, "emotion": "sad"}))
        await ws.send(json.dumps({"type": "goodbye"}))
        await ws.wait_closed()

    async with FakeServer(script) as srv:
        async with SimDevice(py_xiaozhi=True) as dev:
            await dev.connect(srv.url)
            await dev.wait_for_message("goodbye", timeout=5)
            assert dev.session_id == ""
            assert dev.downlink_sample_rate == 24000  # 44100 rejected, default kept
            assert dev.downlink_frame_duration == 20
            played = [e for e in dev.events if e.accepted]
            assert len(played) == 1 and played[0].pcm is not None and len(played[0].pcm) == 1440 * 2
            joined = "\n".join(dev.violations)
            assert "unescaped" in joined and "44100" in joined and "longer than the declared" in joined
            assert "alert" in joined
            assert any("goodbye" in w for w in dev.warnings)


async def test_wake_word_frames_precede_detect_and_abrupt_close() -> None:
    closed: list[int | None] = []

    async def script(ws: ServerConnection, srv: FakeServer) -> None:
        await srv.recv_json(ws)
        await ws.send(json.dumps(SERVER_HELLO))
        await srv.recv_until(ws, "listen", "detect")
        await ws.wait_closed()
        closed.append(ws.close_code)

    async with FakeServer(script) as srv:
        dev = SimDevice()
        await dev.connect(srv.url)
        await dev.send_wake_word(silence(2000), "你好小智")
        await asyncio.sleep(0.1)
        await dev.close(abrupt=True)
        await asyncio.sleep(0.1)
    assert len(srv.binaries) == 34  # ~2 s of 60 ms packets, before the detect message
    assert srv.texts[-1] == {"session_id": "sess-1", "type": "listen", "state": "detect", "text": "你好小智"}
    assert closed == [1006]  # no close frame, like the firmware destroying its socket
    assert dev.events[-1].kind == "close"


async def test_device_answers_mcp_over_the_wire() -> None:
    extra = filler_tools(25, description_bytes=700)

    async def script(ws: ServerConnection, srv: FakeServer) -> None:
        await srv.recv_json(ws)
        await ws.send(json.dumps(SERVER_HELLO))
        await ws.send(json.dumps({"type": "mcp", "payload": rpc("initialize", {"capabilities": {}}, id_=1)}))
        await srv.recv_until(ws, "mcp")
        cursor = None
        while True:
            params = {"cursor": cursor} if cursor else None
            await ws.send(json.dumps({"type": "mcp", "payload": rpc("tools/list", params, id_=2)}))
            reply = await srv.recv_until(ws, "mcp")
            cursor = reply["payload"]["result"].get("nextCursor")
            if cursor is None:
                break
        await ws.send(json.dumps({"type": "mcp", "payload": rpc(
            "tools/call", {"name": "self.audio_speaker.set_volume", "arguments": {"volume": 42}}, id_=3)}))
        await srv.recv_until(ws, "mcp")
        await ws.wait_closed()

    async with FakeServer(script) as srv:
        async with SimDevice(extra_tools=extra) as dev:
            await dev.connect(srv.url)
            await dev.wait_for(lambda e: e.is_msg("mcp") and e.get("payload", {}).get("id") == 3, timeout=5)
            for _ in range(50):
                if dev.mcp.status.volume == 42 and len(srv.texts) >= 6:
                    break
                await asyncio.sleep(0.02)
        replies = [m for m in srv.texts if m.get("type") == "mcp"]
        assert all(m["session_id"] == "sess-1" for m in replies)
        listed = [t["name"] for m in replies if "result" in m["payload"] and "tools" in m["payload"]["result"]
                  for t in m["payload"]["result"]["tools"]]
        assert len(listed) == 27 and len(set(listed)) == 27
        assert dev.mcp.status.volume == 42
        assert [c.payload["params"]["arguments"] for c in dev.mcp_calls] == [{"volume": 42}]


async def test_ask_audio_turn_paces_uplink_and_measures_latency(english_speech: bytes) -> None:
    speech = english_speech[: 16000 * 2]  # 1 s keeps the test short
    reply = tts_packets(english_speech[: 16000 * 2 * 2])  # ~2 s of reply audio

    async def script(ws: ServerConnection, srv: FakeServer) -> None:
        await srv.recv_json(ws)
        await ws.send(json.dumps(SERVER_HELLO))
        start = await srv.recv_until(ws, "listen", "start")
        assert start["mode"] == "auto"
        # "VAD": answer once 1 s of speech plus 300 ms of silence arrived.
        while len(srv.binaries) < 22:
            await _collect_binary(ws, srv)
        await ws.send(json.dumps({"type": "stt", "text": "hello"}))
        await ws.send(json.dumps({"type": "tts", "state": "start"}))
        await ws.send(json.dumps({"type": "llm", "emotion": "happy", "text": "🙂"}))
        await ws.send(json.dumps({"type": "tts", "state": "sentence_start", "text": "Hi there."}))
        t0 = time.monotonic()
        for i, packet in enumerate(reply):  # 3 packets pre-buffer, then real time
            delay = t0 + max(0, i - 3) * 0.06 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await ws.send(packet)
        await ws.send(json.dumps({"type": "tts", "state": "stop"}))
        await srv.recv_until(ws, "listen", "start")  # the device listens again after playback
        srv.texts.append({"relisten_at": time.monotonic()})
        await ws.wait_closed()

    async with FakeServer(script) as srv:
        async with SimDevice() as dev:
            await dev.connect(srv.url)
            turn = await dev.ask_audio(speech, mode="auto", trailing_silence_ms=1500, timeout=20)
            assert turn.completed, turn.error
            await dev.wait_relisten()
            await asyncio.sleep(0.1)
        assert turn.stt_text == "hello"
        assert turn.sentences == ["Hi there."]
        assert turn.emotions == ["happy"]
        assert turn.frames_received == turn.frames_played == len(reply)
        assert turn.overflow_drops == turn.dropped_not_speaking == 0
        assert turn.max_queue_depth <= 6
        assert len(turn.reply_pcm) == len(reply) * 1440 * 2
        timings = turn.timings()
        for key in ("stt_ms", "tts_start_ms", "first_audio_ms", "speaking_ms", "total_ms", "reply_audio_ms"):
            assert key in timings
        assert 0 <= timings["first_audio_ms"] < 1000
        assert timings["speaking_ms"] == pytest.approx((len(reply) - 4) * 60, abs=150)
        # Uplink: ~17 speech packets, paced at 60 ms against the monotonic clock, then stopped by
        # the device entering speaking (well before the 1.5 s of trailing silence ran out).
        times = [t for t, _ in srv.binaries]
        assert 22 <= len(times) < 17 + 25
        gaps = np.diff(times[:22])
        assert float(np.mean(gaps)) == pytest.approx(0.06, abs=0.008)
        assert times[21] - times[0] == pytest.approx(21 * 0.06, abs=0.06)
        assert turn.t_last_speech_frame is not None and turn.t_input_end == turn.t_last_speech_frame
        # Relisten only after the reply finished playing (auto mode, playback drained).
        relisten_at = srv.texts[-1]["relisten_at"]
        assert turn.t_playback_end is not None and relisten_at >= turn.t_playback_end - 0.01


async def _collect_binary(ws: ServerConnection, srv: FakeServer) -> None:
    data = await asyncio.wait_for(ws.recv(), 5)
    if isinstance(data, bytes):
        srv.binaries.append((time.monotonic(), data))
    else:
        srv.texts.append(json.loads(data))


async def test_ask_text_and_manual_audio_turns(english_speech: bytes) -> None:
    async def script(ws: ServerConnection, srv: FakeServer) -> None:
        await srv.recv_json(ws)
        await ws.send(json.dumps(SERVER_HELLO))
        for _ in range(2):
            message = await srv.recv_until(ws, "listen")
            if message["state"] == "start":
                message = await srv.recv_until(ws, "listen")
            text = message.get("text", "spoken")
            await ws.send(json.dumps({"type": "stt", "text": text}))
            await ws.send(json.dumps({"type": "tts", "state": "start"}))
            await asyncio.sleep(0.02)
            for packet in tts_packets(silence(300)):
                await ws.send(packet)
            await ws.send(json.dumps({"type": "tts", "state": "stop"}))
        await ws.wait_closed()

    async with FakeServer(script) as srv:
        async with SimDevice() as dev:
            await dev.connect(srv.url)
            text_turn = await dev.ask_text("what time is it", timeout=10)
            assert dev.state == "idle"  # manual mode: tts stop -> idle
            audio_turn = await dev.ask_audio(english_speech[: 16000], mode="manual", timeout=10)
        listens = [(m["state"], m.get("mode"), m.get("text")) for m in srv.texts if m.get("type") == "listen"]
        assert listens == [("start", "manual", None), ("detect", None, "what time is it"),
                           ("start", "manual", None), ("stop", None, None)]
        assert text_turn.completed and text_turn.stt_text == "what time is it"
        assert text_turn.frames_played == 5
        assert audio_turn.completed and audio_turn.stt_text == "spoken"
        assert len(srv.binaries) == 9  # 0.5 s of speech in 60 ms packets
        assert audio_turn.t_input_end is not None and audio_turn.t_last_speech_frame is not None
        assert audio_turn.t_input_end >= audio_turn.t_last_speech_frame


async def test_turn_times_out_without_tts_stop() -> None:
    async with FakeServer(hello_then_idle) as srv:
        async with SimDevice() as dev:
            await dev.connect(srv.url)
            turn = await dev.ask_text("anyone there?", timeout=0.3)
        assert not turn.completed
        assert turn.error is not None and "timed out" in turn.error


async def test_unpack_round_trip_matches_firmware_layout() -> None:
    # The v2 header the device writes is byte-identical to the spec's example.
    frame = pack(2, b"\xaa" * 120, timestamp=0x1234)
    assert frame[:16] == bytes.fromhex("00020000000000000000123400000078")
    assert unpack(2, frame).payload == b"\xaa" * 120
    assert struct.unpack(">BBH", pack(3, b"\x01\x02")[:4]) == (0, 0, 2)


# ------------------------------------------------------------------------------------------ OTA


async def test_ota_request_matches_firmware_and_stores_websocket_config() -> None:
    seen: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.Response:
        seen["path"] = request.path
        seen["headers"] = dict(request.headers)
        seen["body"] = await request.text()
        return web.json_response({
            "server_time": {"timestamp": 1754650000000, "timezone_offset": 480},
            "firmware": {"version": "2.4.2", "url": ""},
            "websocket": {"url": "ws://127.0.0.1:1/xiaozhi/v1/", "token": "t0k", "version": 3},
        })

    app = web.Application()
    app.router.add_post("/xiaozhi/ota/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        dev = SimDevice()
        data = await dev.ota(f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()
    assert data["firmware"]["version"] == "2.4.2"
    assert (dev.ws_url, dev.ws_token, dev.ws_version) == ("ws://127.0.0.1:1/xiaozhi/v1/", "t0k", 3)
    assert seen["path"] == "/xiaozhi/ota/"
    headers = seen["headers"]
    assert headers["Activation-Version"] == "1"
    assert headers["Device-Id"] == dev.identity.mac
    assert headers["Client-Id"] == dev.identity.client_id
    assert headers["User-Agent"] == "bread-compact-wifi/2.4.2"
    assert headers["Accept-Language"] == "zh-CN"
    assert headers["Content-Type"] == "application/json"
    body = json.loads(seen["body"])
    assert '"partition_table": [' in seen["body"]
    assert body["minimum_free_heap_size"] == "123456"
    assert body["application"]["version"] == "2.4.2"
    assert body["board"]["type"] == "bread-compact-wifi"
    assert body["mac_address"] == body["board"]["mac"] == dev.identity.mac
    assert body["uuid"] == dev.identity.client_id
