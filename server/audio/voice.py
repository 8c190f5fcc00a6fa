"""Our spoken voice in an endpoint's audio format: TTS -> resample -> encode, plus a phrase cache.

A conversation does not know what its endpoint plays: a xiaozhi board wants Opus packets at its
downlink rate and frame length (`OpusVoice`); a bridge that hands audio to another player wants
PCM16 (`PcmVoice`). Both synthesize through the shared TTS provider, resample and encode off the
event loop in slices (the first packet leaves as soon as its own slice is ready, not after the
whole sentence), and cache fixed phrases (goodbye, apology, wake reply) once per process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from server.audio.opus import OpusEncoder
from server.audio.pcm import StreamResampler
from server.providers.base import TTSProvider

# PCM handed to the codec thread at a time: small enough that the first packet is quick.
ENCODE_SLICE_MS = 240


class Voice(Protocol):
    """What a conversation needs to speak in its endpoint's format. Packets are opaque to it."""

    def speak(self, text: str, on_first_chunk: Callable[[], None] | None = None) -> AsyncIterator[bytes]:
        """Synthesize `text`; yield packets as they are encoded. `on_first_chunk` fires when the
        TTS produced its first audio (for latency metrics)."""
        ...

    def encode_stream(self, chunks: AsyncIterator[bytes], sample_rate: int) -> AsyncIterator[bytes]:
        """PCM16 mono chunks at `sample_rate` (e.g. music from a tool) -> packets."""
        ...

    async def phrase_frames(self, text: str) -> list[bytes]:
        """Packets of a fixed phrase, synthesized once per process and cached."""
        ...


class _Converter(Protocol):
    def __call__(self, pcm: bytes, src_rate: int, last: bool) -> list[bytes]: ...


class _SlicedVoice:
    """TTS -> per-stream converter (resampler + encoder) on a codec thread, in slices."""

    def __init__(self, tts: TTSProvider, out_rate: int, pool: concurrent.futures.Executor) -> None:
        self.tts = tts
        self.out_rate = out_rate
        self.pool = pool
        self._phrases: dict[str, list[bytes]] = {}
        self._phrase_locks: dict[str, asyncio.Lock] = {}

    def _converter(self) -> _Converter:  # pragma: no cover - overridden
        raise NotImplementedError

    async def speak(self, text: str, on_first_chunk: Callable[[], None] | None = None) -> AsyncIterator[bytes]:
        chunks = self.tts.synthesize(text)

        async def pcm() -> AsyncIterator[tuple[bytes, int]]:
            nonlocal on_first_chunk
            async for chunk in chunks:
                if on_first_chunk is not None:
                    on_first_chunk()
                    on_first_chunk = None
                yield chunk.pcm, chunk.sample_rate

        try:
            async for packet in self._encode(pcm()):
                yield packet
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    async def encode_stream(self, chunks: AsyncIterator[bytes], sample_rate: int) -> AsyncIterator[bytes]:
        async def pcm() -> AsyncIterator[tuple[bytes, int]]:
            async for chunk in chunks:
                yield chunk, sample_rate

        async for packet in self._encode(pcm()):
            yield packet

    async def _encode(self, source: AsyncIterator[tuple[bytes, int]]) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        convert = self._converter()
        rate = self.out_rate
        async for data, rate in source:
            step = rate * 2 * ENCODE_SLICE_MS // 1000
            for i in range(0, len(data), step):
                for packet in await loop.run_in_executor(self.pool, convert, data[i:i + step], rate, False):
                    yield packet
        for packet in await loop.run_in_executor(self.pool, convert, b"", rate, True):
            yield packet

    async def phrase_frames(self, text: str) -> list[bytes]:
        if text in self._phrases:
            return self._phrases[text]
        lock = self._phrase_locks.setdefault(text, asyncio.Lock())
        async with lock:
            if text not in self._phrases:
                self._phrases[text] = [p async for p in self.speak(text)]
        return self._phrases[text]


class OpusVoice(_SlicedVoice):
    """Opus packets of `frame_ms` at `sample_rate`: the xiaozhi downlink."""

    def __init__(self, tts: TTSProvider, pool: concurrent.futures.Executor, *, sample_rate: int, frame_ms: int,
                 bitrate: int, complexity: int) -> None:
        super().__init__(tts, sample_rate, pool)
        self.frame_ms = frame_ms
        self.bitrate = bitrate
        self.complexity = complexity

    def new_encoder(self) -> OpusEncoder:
        return OpusEncoder(sample_rate=self.out_rate, frame_ms=self.frame_ms, bitrate=self.bitrate,
                           complexity=self.complexity)

    def _converter(self) -> _Converter:
        encoder = self.new_encoder()
        resampler: StreamResampler | None = None

        def convert(pcm: bytes, src_rate: int, last: bool) -> list[bytes]:
            nonlocal resampler
            if resampler is None:
                resampler = StreamResampler(src_rate, self.out_rate)
            packets = encoder.encode(resampler.process(pcm, last=last))
            if last:
                packets += encoder.flush()
            return packets

        return convert


class PcmVoice(_SlicedVoice):
    """PCM16 mono at `sample_rate`, one chunk per slice: for endpoints that play audio elsewhere."""

    def _converter(self) -> _Converter:
        resampler: StreamResampler | None = None

        def convert(pcm: bytes, src_rate: int, last: bool) -> list[bytes]:
            nonlocal resampler
            if resampler is None:
                resampler = StreamResampler(src_rate, self.out_rate)
            out = resampler.process(pcm, last=last)
            return [out] if out else []

        return convert
