"""Our TTS for `reply_via: server_audio`, cut into one clip per sentence.

The conversation core delivers a sentence, then its audio packets. To hand a speaker one URL per
sentence the bridge must know where a sentence's audio ends (not only when the next one starts,
which would delay each clip by the next sentence's synthesis), and it must learn of a TTS failure
to say so through the speaker. `ClipVoice` wraps the core's PCM voice and adds two marker packets,
recognised by identity: CLIP_END after each sentence's audio, TTS_FAILED instead of audio."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from server.providers.base import ProviderError

log = logging.getLogger("server.xiaomi")

CLIP_END = b"\x00xiaomi-clip-end"
TTS_FAILED = b"\x00xiaomi-tts-failed"


def is_marker(packet: bytes) -> bool:
    return packet is CLIP_END or packet is TTS_FAILED


class ClipVoice:
    def __init__(self, inner: Any) -> None:
        self.inner = inner  # a PCM voice (server.audio.voice.PcmVoice)
        self.sample_rate: int = inner.out_rate

    async def speak(self, text: str, on_first_chunk: Callable[[], None] | None = None) -> AsyncIterator[bytes]:
        try:
            async for packet in self.inner.speak(text, on_first_chunk=on_first_chunk):
                yield packet
        except ProviderError as exc:
            log.warning("our TTS failed on %r: %s; the speaker's own voice takes over", text[:40], exc)
            yield TTS_FAILED
            return
        yield CLIP_END

    async def encode_stream(self, chunks: AsyncIterator[bytes], sample_rate: int) -> AsyncIterator[bytes]:
        async for packet in self.inner.encode_stream(chunks, sample_rate):
            yield packet
        yield CLIP_END

    async def phrase_frames(self, text: str) -> list[bytes]:
        try:
            return [*await self.inner.phrase_frames(text), CLIP_END]
        except ProviderError as exc:
            log.warning("our TTS failed on the phrase %r: %s", text[:40], exc)
            return [TTS_FAILED]
