"""A stand-in for the reference server (xinnan-tech/xiaozhi-esp32-server) as the benchmark sees it:
an OTA endpoint but no /health and no /metrics, a WebSocket that answers each utterance with
stt, tts start, paced Opus and a late tts stop, and that closes the socket when it gets an abort.

Only what `performance_tester.py --url` must cope with when pointed at a server that is not ours;
the speech is a tone, the recognised text fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiohttp import web
from websockets.asyncio.server import ServerConnection, serve

from server.audio.opus import OpusEncoder

FRAME_S = 0.06
REPLY_FRAMES = 20
FRAMES_PER_UTTERANCE = 25  # reply after ~1.5 s of uplink audio
STOP_DELAY_S = 0.42  # the reference waits this long after its queue drained


def _reply_packets() -> list[bytes]:
    import numpy as np

    encoder = OpusEncoder(sample_rate=24000, frame_ms=60)
    t = np.arange(int(24000 * FRAME_S * REPLY_FRAMES)) / 24000
    tone = (6000 * np.sin(2 * np.pi * 330 * t)).astype(np.int16).tobytes()
    return encoder.encode(tone) + encoder.flush()


class ReferenceLikeServer:
    def __init__(self) -> None:
        self.ws_port = 0
        self.http_port = 0
        self.aborts = 0
        self._ws_server: Any = None
        self._runner: web.AppRunner | None = None
        self._packets = _reply_packets()

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/xiaozhi/v1/"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    async def __aenter__(self) -> ReferenceLikeServer:
        self._ws_server = await serve(self._handle, "127.0.0.1", 0, compression=None)
        self.ws_port = self._ws_server.sockets[0].getsockname()[1]
        app = web.Application()
        app.router.add_post("/xiaozhi/ota/", self._ota)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._ws_server.close()
        await self._ws_server.wait_closed()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _ota(self, request: web.Request) -> web.Response:
        return web.json_response({"websocket": {"url": self.ws_url, "token": ""},
                                  "server_time": {"timestamp": 0, "timezone_offset": 480},
                                  "firmware": {"version": "0.0.0", "url": ""}})

    async def _handle(self, ws: ServerConnection) -> None:
        frames = 0
        replying: asyncio.Task[None] | None = None
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    frames += 1
                    if frames == FRAMES_PER_UTTERANCE and (replying is None or replying.done()):
                        replying = asyncio.create_task(self._reply(ws, "hello"))
                    continue
                msg = json.loads(message)
                kind, state = msg.get("type"), msg.get("state")
                if kind == "hello":
                    await ws.send(json.dumps({"type": "hello", "version": 1, "transport": "websocket",
                                              "session_id": "ref-1", "audio_params": {
                                                  "format": "opus", "sample_rate": 24000, "channels": 1,
                                                  "frame_duration": 60}}))
                elif kind == "listen" and state == "start":
                    frames = 0
                elif kind == "listen" and state == "detect" and msg.get("text"):
                    replying = asyncio.create_task(self._reply(ws, str(msg["text"]), long=True))
                elif kind == "abort":
                    self.aborts += 1
                    await ws.close()  # what the benchmark met: the socket goes away after an abort
                    return
        finally:
            if replying is not None:
                replying.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await replying

    async def _reply(self, ws: ServerConnection, text: str, long: bool = False) -> None:
        await ws.send(json.dumps({"type": "stt", "text": text}))
        await ws.send(json.dumps({"type": "tts", "state": "start"}))
        await ws.send(json.dumps({"type": "llm", "emotion": "happy", "text": "🙂"}))
        await ws.send(json.dumps({"type": "tts", "state": "sentence_start", "text": "A tone."}))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        packets = self._packets * (10 if long else 1)
        for i, packet in enumerate(packets):
            delay = t0 + max(0, i - 4) * FRAME_S - loop.time()  # 5 at once, then real time
            if delay > 0:
                await asyncio.sleep(delay)
            await ws.send(packet)
        await asyncio.sleep(STOP_DELAY_S)
        await ws.send(json.dumps({"type": "tts", "state": "stop"}))
