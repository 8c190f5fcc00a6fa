"""What the tester says and asks: built-in sentences, prompts and questions, user test folders,
and the error rates (WER for English, CER for Mandarin).

Sentences spell numbers out, and the English normalizer turns numerals 0-99 into words, because
an ASR may write "10" for "ten": a formatting choice, not a recognition error.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.pipeline.splitter import CJK

ESPEAK_VOICES = {"en": "en-us", "zh": "cmn"}

# ASR test set: short everyday requests, the way people talk to a speaker.
ASR_SENTENCES: dict[str, tuple[str, ...]] = {
    "en": (
        "What is the weather like today?",
        "Please set a timer for ten minutes.",
        "Tell me a short story about a brave little cat.",
        "How far away is the moon from the earth?",
        "Turn the volume down a little, please.",
        "What should I cook for dinner tonight?",
        "Can you remind me to call my mother tomorrow?",
        "Which planet is the largest in our solar system?",
    ),
    "zh": (
        "今天天气怎么样？",
        "请帮我定一个十分钟的闹钟。",
        "给我讲一个小猫的故事。",
        "月亮离地球有多远？",
        "把声音调小一点。",
        "今天晚上吃什么好呢？",
    ),
}

# LLM prompts: what the server's LLM sees after ASR. Fixed, so two runs are comparable.
LLM_PROMPTS: dict[str, tuple[str, ...]] = {
    "en": (
        "What is the capital of France?",
        "Tell me a fun fact about the moon.",
        "How do I make a cup of green tea?",
        "Why is the sky blue?",
        "Say something nice to start my day.",
        "What can you do for me?",
        "Give me a tip for sleeping better.",
        "What is the tallest animal in the world?",
    ),
    "zh": (
        "法国的首都是哪里？",
        "给我讲一个关于月亮的趣事。",
        "怎么泡一杯绿茶？",
        "天空为什么是蓝色的？",
        "说句好听的话开始我的一天吧。",
        "你能帮我做什么？",
    ),
}

# TTS sentences: reply-like sentences of a few lengths.
TTS_SENTENCES: dict[str, tuple[str, ...]] = {
    "en": (
        "Sure, here you go.",
        "The capital of France is Paris.",
        "The moon is slowly drifting away from the earth, about four centimeters every year.",
        "Green tea tastes best when the water is hot but not boiling, so let it cool for a minute first.",
    ),
    "zh": (
        "好的，没问题。",
        "法国的首都是巴黎。",
        "月亮每年都会离地球远一点点，大约四厘米。",
        "泡绿茶的时候，水不要太烫，先让开水稍微凉一会儿。",
    ),
}

# End-to-end questions the simulated devices speak, and the long request used for abort trials.
E2E_QUESTIONS: dict[str, tuple[str, ...]] = {
    "en": (
        "What is the capital of France?",
        "How many legs does a spider have?",
        "Tell me a fun fact about the moon.",
        "What color is the sky?",
        "Say something nice to me.",
        "What is the biggest animal on earth?",
    ),
    "zh": (
        "法国的首都是哪里？",
        "蜘蛛有几条腿？",
        "给我讲一个关于月亮的趣事。",
        "天空是什么颜色的？",
    ),
}
ABORT_PROMPT = {
    "en": "Describe a long summer holiday at the sea in great detail.",
    "zh": "请详细地描述一次在海边度过的漫长暑假。",
}


@dataclass(slots=True, frozen=True)
class Sample:
    """One ASR test item: where its audio comes from and what was said."""

    name: str
    text: str
    language: str  # en | zh: decides WER (words) or CER (characters)
    source: str  # "espeak" or "user"
    path: str | None = None  # WAV file for user samples


def builtin_samples(languages: Sequence[str], per_language: int | None = None) -> list[Sample]:
    out: list[Sample] = []
    for lang in languages:
        sentences = ASR_SENTENCES.get(lang, ())
        for i, text in enumerate(sentences[:per_language] if per_language else sentences):
            out.append(Sample(f"{lang}-{i + 1:02d}", text, lang, "espeak"))
    return out


def language_of(text: str) -> str:
    return "zh" if CJK.search(text) else "en"


def user_samples(folder: str | Path) -> tuple[list[Sample], list[str]]:
    """`name.wav` + `name.txt` pairs from a folder. Returns the samples and a note for each WAV
    without a transcript (skipped, not fatal: one stray file should not stop a run)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"test set folder {root} does not exist")
    samples: list[Sample] = []
    notes: list[str] = []
    for wav in sorted(root.glob("*.wav")):
        txt = wav.with_suffix(".txt")
        if not txt.is_file():
            notes.append(f"{wav.name}: no {txt.name} beside it, skipped")
            continue
        text = txt.read_text(encoding="utf-8").strip()
        if not text:
            notes.append(f"{txt.name} is empty, skipped")
            continue
        samples.append(Sample(wav.stem, text, language_of(text), "user", str(wav)))
    return samples, notes


async def sample_audio(sample: Sample) -> bytes:
    """PCM16 mono 16 kHz for a sample (espeak-ng through the shared devsim generator, or the
    user's WAV resampled). Raises on unreadable files; the caller records it per sample."""
    from harness.devsim import synthesize_speech
    from server.audio.pcm import read_wav, resample

    if sample.source == "espeak":
        return trim_silence(await synthesize_speech(sample.text, voice=ESPEAK_VOICES[sample.language]))

    def load() -> bytes:
        pcm, rate = read_wav(str(sample.path))
        return resample(pcm, rate, 16000)

    return await asyncio.to_thread(load)


async def speech(text: str, language: str) -> bytes:
    """Trimmed espeak-ng speech for a question (see trim_silence)."""
    from harness.devsim import synthesize_speech

    return trim_silence(await synthesize_speech(text, voice=ESPEAK_VOICES.get(language, "en-us")))


def speech_bounds(pcm: bytes, threshold: int = 300) -> tuple[int, int]:
    """First and one-past-last sample above `threshold` (about -40 dBFS). espeak-ng output is
    synthetic and clean, so this finds exactly where the voice starts and stops."""
    x = np.abs(np.frombuffer(pcm, dtype=np.int16).astype(np.int32))
    idx = np.nonzero(x > threshold)[0]
    if idx.size == 0:
        return 0, 0
    return int(idx[0]), int(idx[-1]) + 1


def trim_silence(pcm: bytes) -> bytes:
    """espeak-ng leaves ~400 ms of silence after the voice. Trimmed, the end of the PCM is the end
    of speech, so 'end of speech' in the reports means what a listener would call it."""
    start, end = speech_bounds(pcm)
    return pcm[start * 2:end * 2]


# ------------------------------------------------------------------------------- error rates

_WORD = re.compile(r"[a-z0-9']+")
_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def number_words(n: int) -> list[str]:
    """0-99 as words: ASR models write "10" where the speaker (and our reference) said "ten";
    that is formatting, not a recognition error."""
    if n < 20:
        return [_ONES[n]]
    tens, ones = divmod(n, 10)
    return [_TENS[tens]] + ([_ONES[ones]] if ones else [])


def normalize_words(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text).lower().replace("’", "'")
    out: list[str] = []
    for word in _WORD.findall(text):
        word = word.strip("'")
        if word.isdigit() and int(word) < 100:
            out += number_words(int(word))
        elif word:
            out.append(word)
    return out


def normalize_chars(text: str) -> list[str]:
    """Characters that carry meaning: letters, digits and CJK, without spaces or punctuation."""
    text = unicodedata.normalize("NFKC", text).lower()
    return [ch for ch in text if ch.isalnum()]


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance (substitutions + deletions + insertions), two rows of memory."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def error_counts(reference: str, hypothesis: str, language: str) -> tuple[int, int]:
    """(edits, reference length) in words for English, characters for Mandarin. Summing these
    over a set gives the corpus error rate (long sentences weigh more, as they should)."""
    split = normalize_chars if language == "zh" else normalize_words
    ref, hyp = split(reference), split(hypothesis)
    return edit_distance(ref, hyp), len(ref)


def error_rate(reference: str, hypothesis: str, language: str) -> float:
    edits, n = error_counts(reference, hypothesis, language)
    return edits / n if n else float(bool(hypothesis.strip()))
