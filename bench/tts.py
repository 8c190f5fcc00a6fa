"""TTS: time to the first audio chunk, and real-time factor, per sentence.

Reply-like sentences of a few lengths in the assistant's language. RTF = synthesis time / audio
duration: below 1 the provider keeps ahead of playback, which is what lets the server synthesize
the next sentence while the current one plays.
"""

from __future__ import annotations

import time
from typing import Any

from bench.components import ComponentOptions, ComponentReport, timed_item
from bench.console import Console
from bench.stats import summarize
from bench.testset import TTS_SENTENCES
from server.config.schema import AppConfig


async def _speak(provider: Any, sentence: str, item: dict[str, Any]) -> None:
    t0 = time.perf_counter()
    first = None
    audio_s = 0.0
    chunks = 0
    async for chunk in provider.synthesize(sentence):
        first = first or time.perf_counter()
        chunks += 1
        audio_s += len(chunk.pcm) / 2 / chunk.sample_rate
    elapsed = time.perf_counter() - t0
    if first is None or audio_s <= 0:
        raise RuntimeError("no audio produced")
    item.update(first_chunk_ms=round((first - t0) * 1000, 1), total_ms=round(elapsed * 1000, 1),
                audio_ms=round(audio_s * 1000, 1), chunks=chunks, rtf=round(elapsed / audio_s, 4))


async def measure_tts(provider: Any, config: AppConfig, options: ComponentOptions, console: Console,
                      report: ComponentReport) -> None:
    language = config.assistant.language
    sentences = TTS_SENTENCES.get(language, TTS_SENTENCES["en"])
    sentences = sentences[: options.tts_sentences] if options.tts_sentences else sentences

    t0 = time.perf_counter()
    async for _ in provider.synthesize("你好。" if language == "zh" else "Hello."):
        pass
    report.warmup_s = round(time.perf_counter() - t0, 2)

    progress = console.progress(len(sentences), "tts")
    for sentence in sentences:
        item: dict[str, Any] = {"text": sentence, "chars": len(sentence)}
        await timed_item(report, item, _speak(provider, sentence, item))
        detail = (f"first chunk {item['first_chunk_ms']:.0f} ms, rtf {item['rtf']:.3f}"
                  if "rtf" in item else f"failed: {item.get('error')}")
        progress.advance(detail=detail)
    progress.close()

    ok = [i for i in report.items if "rtf" in i]
    report.summary = {
        "sentences": len(report.items),
        "success_rate": round(len(ok) / len(report.items), 3) if report.items else None,
        "first_chunk_ms": summarize(i["first_chunk_ms"] for i in ok),
        "rtf": summarize((i["rtf"] for i in ok), digits=4),
        "total_ms": summarize(i["total_ms"] for i in ok),
    }
    if ok and all(i["chunks"] == 1 for i in ok):
        report.notes.append("the provider returns one chunk per sentence here, so first chunk = whole sentence")
