"""A local stand-in for Microsoft's Edge read-aloud TTS WebSocket, for testing the edge-tts client.

It speaks the same wire format as `speech.platform.bing.com/.../edge/v1` as edge-tts 7.x expects
it: the client sends a `Path:speech.config` and a `Path:ssml` text message; the service answers
with `Path:turn.start` and `Path:response` text messages, binary audio messages (2-byte big-endian
header length, `Path:audio` headers, MP3 bytes), `Path:audio.metadata` sentence boundaries, an
empty binary `Path:audio` message without Content-Type, and `Path:turn.end`.

The audio is real MP3 (24 kHz mono 48 kbit/s, the format edge-tts requests) of espeak-ng speaking
the SSML's text, so the client's decode path runs on genuine frames.

Failure modes, chosen per connection from `script` (then `default_mode`):
  ok                  full answer
  no_audio            turn.start / response / turn.end, no audio (what an unknown voice gets)
  stall_before_audio  turn.start, then silence with the socket open
  stall_mid_stream    `partial_chunks` audio messages, then silence with the socket open
  close_mid_stream    `partial_chunks` audio messages, then a normal close without turn.end
  dead_mid_stream     `partial_chunks` audio messages, then the service stops reading and
                      writing altogether (a dead peer: the client's close handshake is never
                      answered), until the fake is closed
  http_<status>       the WebSocket handshake is refused with that HTTP status (e.g. http_503)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar
from xml.sax.saxutils import unescape

from aiohttp import WSMsgType, web

from .http_base import FakeHTTPServer

PATH = "/consumer/speech/synthesize/readaloud/edge/v1"
TRUSTED_CLIENT_TOKEN = "6A5AA1D4EAFF4E9FB37E23D68491D6F4"
MP3_RATE = 24000

_mp3_cache: dict[tuple[str, str], bytes] = {}


def espeak_voice(edge_voice: str) -> str:
    """The espeak-ng voice for an Edge voice ('zh-CN-XiaoxiaoNeural' or the long SSML form)."""
    if "zh-" in edge_voice:
        return "cmn"
    return "en-us"


async def pcm_to_mp3(pcm: bytes, rate: int, out_rate: int = MP3_RATE, kbps: int = 48) -> bytes:
    """PCM16 mono -> MP3 (mono, `kbps` CBR, bare frames like Edge's), encoded in-process with PyAV."""
    from harness.audio_files import encode_pcm

    return await asyncio.to_thread(encode_pcm, pcm, rate, "mp3", out_rate=out_rate, kbps=kbps)


async def speech_mp3(text: str, voice: str = "en-us") -> bytes:
    """espeak-ng speaking `text`, as the MP3 Edge would send (cached per text and voice)."""
    key = (text, voice)
    if key not in _mp3_cache:
        from harness.devsim import synthesize_speech

        pcm = await synthesize_speech(text, voice=voice)
        _mp3_cache[key] = await pcm_to_mp3(pcm, 16000)
    return _mp3_cache[key]


@dataclass
class EdgeRequest:
    """What one connection asked for, and what the fake did, for assertions."""

    mode: str
    query: dict[str, str]
    headers: dict[str, str]
    speech_config: dict[str, Any] | None = None
    ssml: str = ""
    voice: str = ""
    rate: str = ""
    volume: str = ""
    pitch: str = ""
    text: str = ""
    mp3: bytes = b""
    audio_messages_sent: int = 0
    turn_end_sent: bool = False
    first_audio_at: float | None = None
    turn_end_at: float | None = None
    closed_by_client: bool = False  # hung up before the answer was complete


@dataclass
class FakeEdgeServer(FakeHTTPServer):
    chunk_bytes: int = 2048  # audio bytes per binary message (the real service sends a few KB)
    chunk_interval_s: float = 0.0  # pause between audio messages, to make streaming observable
    partial_chunks: int = 2  # audio messages sent before a *_mid_stream failure
    default_mode: str = "ok"
    script: list[str] = field(default_factory=list)
    requests: list[EdgeRequest] = field(default_factory=list)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    # aiohttp's defaults: stalled handlers are released through _stopping before the cleanup.
    runner_options: ClassVar[dict[str, Any]] = {}

    @property
    def wss_url(self) -> str:
        """Drop-in for edge_tts.constants.WSS_URL (plain ws:// on loopback)."""
        return f"ws://{self.host}:{self.port}{PATH}?TrustedClientToken={TRUSTED_CLIENT_TOKEN}"

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(PATH, self._handle)
        return app

    async def close(self) -> None:
        self._stopping.set()  # releases handlers that play dead or stall
        await super().close()

    # ------------------------------------------------------------------ protocol

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        mode = self.script.pop(0) if self.script else self.default_mode
        rec = EdgeRequest(mode=mode, query=dict(request.query), headers=dict(request.headers))
        self.requests.append(rec)
        if mode.startswith("http_"):
            return web.Response(status=int(mode.removeprefix("http_")), text="refused by the fake")
        if request.query.get("TrustedClientToken") != TRUSTED_CLIENT_TOKEN:
            return web.Response(status=403, text="bad TrustedClientToken")

        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if mode == "dead_mid_stream":
            await self._play_dead(ws, rec)
            return ws
        # Like the real service, keep reading while answering, so a client that hangs up
        # mid-answer (barge-in, timeout) is noticed at once and the answer stops.
        answer: asyncio.Task[None] | None = None
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            headers, body = _parse_text(msg.data)
            path = headers.get("Path")
            if path == "speech.config":
                rec.speech_config = json.loads(body)
            elif path == "ssml" and answer is None:
                self._read_ssml(rec, body)
                answer = asyncio.create_task(self._answer(ws, rec, headers.get("X-RequestId", uuid.uuid4().hex)))
        if answer is not None and not answer.done():
            rec.closed_by_client = True
            answer.cancel()
        if answer is not None:
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await answer
        if not ws.closed:
            await ws.close()
        return ws

    async def _play_dead(self, ws: web.WebSocketResponse, rec: EdgeRequest) -> None:
        """Answer in line (no concurrent reader), then go silent without reading the client's close."""
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                headers, body = _parse_text(msg.data)
                if headers.get("Path") == "ssml":
                    self._read_ssml(rec, body)
                    await self._answer(ws, rec, headers.get("X-RequestId", uuid.uuid4().hex))
                    return

    @staticmethod
    def _read_ssml(rec: EdgeRequest, ssml: str) -> None:
        rec.ssml = ssml
        voice = re.search(r"<voice name='([^']*)'>", ssml)
        prosody = re.search(r"<prosody pitch='([^']*)' rate='([^']*)' volume='([^']*)'>", ssml)
        rec.voice = voice.group(1) if voice else ""
        if prosody:
            rec.pitch, rec.rate, rec.volume = prosody.groups()
        inner = re.search(r"<prosody[^>]*>(.*)</prosody>", ssml, re.S)
        rec.text = unescape(inner.group(1)) if inner else ""

    async def _answer(self, ws: web.WebSocketResponse, rec: EdgeRequest, request_id: str) -> None:
        stream_id = uuid.uuid4().hex.upper()
        await ws.send_str(_text_message(request_id, "turn.start", {"context": {"serviceTag": "fake"}}))
        if rec.mode == "stall_before_audio":
            await self._stopping.wait()
            return
        response = {"context": {"serviceTag": "fake"}, "audio": {"type": "inline", "streamId": stream_id}}
        await ws.send_str(_text_message(request_id, "response", response))
        if rec.mode != "no_audio":
            rec.mp3 = await speech_mp3(rec.text, espeak_voice(rec.voice))
            chunks = [rec.mp3[i:i + self.chunk_bytes] for i in range(0, len(rec.mp3), self.chunk_bytes)]
            if rec.mode in ("stall_mid_stream", "close_mid_stream", "dead_mid_stream"):
                chunks = chunks[:self.partial_chunks]
            for n, chunk in enumerate(chunks):
                if n and self.chunk_interval_s:
                    await asyncio.sleep(self.chunk_interval_s)
                await ws.send_bytes(_audio_message(request_id, stream_id, chunk))
                rec.audio_messages_sent += 1
                if rec.first_audio_at is None:
                    rec.first_audio_at = time.monotonic()
                if n == 0:
                    await ws.send_str(_text_message(request_id, "audio.metadata", _sentence_boundary(rec.text)))
            if rec.mode in ("stall_mid_stream", "dead_mid_stream"):
                await self._stopping.wait()
                return
            if rec.mode == "close_mid_stream":
                await ws.close()
                return
            await ws.send_bytes(_audio_message(request_id, stream_id, b""))
        await ws.send_str(_text_message(request_id, "turn.end", {}))
        rec.turn_end_sent = True
        rec.turn_end_at = time.monotonic()


def _parse_text(data: str) -> tuple[dict[str, str], str]:
    head, _, body = data.partition("\r\n\r\n")
    headers = {}
    for line in head.split("\r\n"):
        key, sep, value = line.partition(":")
        if sep:
            headers[key] = value
    return headers, body


def _timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


def _text_message(request_id: str, path: str, body: dict[str, Any]) -> str:
    return (f"X-RequestId:{request_id}\r\nContent-Type:application/json; charset=utf-8\r\n"
            f"Path:{path}\r\nX-Timestamp:{_timestamp()}\r\n\r\n{json.dumps(body)}")


def _audio_message(request_id: str, stream_id: str, audio: bytes) -> bytes:
    # The final, empty audio message carries no Content-Type: edge-tts treats it as end-of-audio.
    content_type = "Content-Type:audio/mpeg\r\n" if audio else ""
    header = f"X-RequestId:{request_id}\r\n{content_type}X-StreamId:{stream_id}\r\nPath:audio\r\n".encode()
    return len(header).to_bytes(2, "big") + header + audio


def _sentence_boundary(text: str) -> dict[str, Any]:
    return {"Metadata": [{"Type": "SentenceBoundary", "Data": {
        "Offset": 1_000_000, "Duration": 10_000_000,
        "text": {"Text": text, "Length": len(text), "BoundaryType": "SentenceBoundary"}}}]}
