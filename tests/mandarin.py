"""Mandarin helpers for the tests: speech from our own Chinese TTS (harness/zh_speech.py), the
multilingual Whisper base to check replies, and the character error rate."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import numpy as np

from bench.testset import edit_distance
from harness.zh_speech import engine, mandarin_speech
from server.audio.pcm import resample

__all__ = ["cer", "engine", "hanzi", "mandarin_speech", "transcribe_zh", "whisper_base"]

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def whisper_base() -> Any:
    from faster_whisper import WhisperModel

    from server.providers.bundled import WHISPER_BASE, whisper_dir

    return WhisperModel(str(whisper_dir(WHISPER_BASE, ROOT / "models")), device="cpu", compute_type="int8",
                        cpu_threads=2)


def transcribe_zh(pcm: bytes, rate: int, language: str | None = "zh") -> tuple[str, str]:
    """(text, detected language) of PCM16 audio, by Whisper base, in simplified characters."""
    import zhconv

    audio = np.frombuffer(resample(pcm, rate, 16000), dtype=np.int16).astype(np.float32) / 32768
    prompt = "以下是普通话的句子。" if language == "zh" else None
    segments, info = whisper_base().transcribe(audio, language=language, beam_size=1, initial_prompt=prompt)
    text = "".join(s.text for s in segments).strip()
    return zhconv.convert(text, "zh-cn"), info.language


def hanzi(text: str) -> str:
    return "".join(re.findall(r"[\u3400-\u9fff]", text))


def cer(hypothesis: str, reference: str) -> float:
    """Character error rate over Chinese characters (punctuation and spaces ignored)."""
    ref = hanzi(reference)
    return edit_distance(ref, hanzi(hypothesis)) / max(1, len(ref))
