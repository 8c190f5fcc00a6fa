"""Reply audio for `reply_via: server_audio`: our TTS, encoded to MP3, served by our own HTTP
port under an unguessable, short-lived URL that the speaker fetches
(GET /xiaomi/audio/<token>.mp3). Kept in memory: a few seconds of MP3 per sentence, removed when
they expire; nothing is written to disk, and a URL cannot be guessed or listed."""

from __future__ import annotations

import io
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

ROUTE = "/xiaomi/audio/{name}"
MAX_ITEMS = 512  # a hard cap, whatever the TTL: 20 speakers x a few sentences is far below it


@dataclass(slots=True)
class _Item:
    data: bytes
    expires: float


class AudioStore:
    def __init__(self, ttl_s: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._items: OrderedDict[str, _Item] = OrderedDict()
        self.served = 0

    def add(self, mp3: bytes) -> str:
        """Store one clip; returns its path (`/xiaomi/audio/<token>.mp3`)."""
        self._expire()
        token = secrets.token_urlsafe(24)  # 192 bits
        self._items[token] = _Item(mp3, self.clock() + self.ttl_s)
        while len(self._items) > MAX_ITEMS:
            self._items.popitem(last=False)
        return f"/xiaomi/audio/{token}.mp3"

    def get(self, name: str) -> bytes | None:
        self._expire()
        token = name.removesuffix(".mp3")
        item = self._items.get(token)
        if item is None:
            return None
        self.served += 1
        return item.data

    def _expire(self) -> None:
        now = self.clock()
        for token in [t for t, item in self._items.items() if item.expires <= now]:
            del self._items[token]

    def __len__(self) -> int:
        return len(self._items)

    def add_routes(self, app: object) -> None:
        """Register GET /xiaomi/audio/<token>.mp3 on an aiohttp application."""
        from aiohttp import web

        async def serve(request: web.Request) -> web.StreamResponse:
            data = self.get(request.match_info["name"])
            if data is None:
                return web.Response(status=404, text="not found")
            return web.Response(body=data, content_type="audio/mpeg", headers={"Cache-Control": "no-store"})

        app.router.add_route("GET", ROUTE, serve)  # type: ignore[attr-defined]


def encode_mp3(pcm: bytes, sample_rate: int, bitrate: int = 48000) -> bytes:
    """PCM16 mono -> MP3 (LAME through PyAV). CPU work: call off the event loop."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=sample_rate, layout="mono")
        stream.bit_rate = bitrate
        samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype=np.int16)
        if samples.size:
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = sample_rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()
