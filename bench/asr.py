"""ASR: real-time factor and error rate (WER for English, CER for Mandarin).

The built-in set is espeak-ng speech in English and Mandarin; `--testset DIR` adds the user's own
recordings (name.wav + name.txt). Each utterance gets the padding the server gives it (pre-roll
before, a short tail after), then one `transcribe` call is timed. Error rates are corpus rates:
total edits over total reference words (or characters), so long sentences weigh more.
"""

from __future__ import annotations

import time
from typing import Any

from bench.components import ComponentOptions, ComponentReport, timed_item
from bench.console import Console
from bench.stats import summarize
from bench.testset import Sample, builtin_samples, error_counts, sample_audio, user_samples
from harness.devsim import pad
from server.config.schema import AppConfig

RATE = 16000
# What Session._utterance_bounds adds around detected speech: pre-roll (vad.pre_roll_ms
# default) and 100 ms after.
PAD_BEFORE_MS = 300
PAD_AFTER_MS = 100


def english_only(provider: Any) -> bool:
    model = str(getattr(provider.settings, "model", ""))
    return bool(getattr(provider, "_english_only", False)) or model.endswith(".en")


async def _transcribe(provider: Any, sample: Sample, item: dict[str, Any]) -> None:
    pcm = await sample_audio(sample)
    if sample.source == "espeak":
        pcm = pad(pcm, PAD_BEFORE_MS, PAD_AFTER_MS)
    audio_ms = len(pcm) / 2 / RATE * 1000
    t0 = time.perf_counter()
    transcript = await provider.transcribe(pcm)
    elapsed = (time.perf_counter() - t0) * 1000
    edits, length = error_counts(sample.text, transcript.text, sample.language)
    item.update(hypothesis=transcript.text, audio_ms=round(audio_ms, 1), elapsed_ms=round(elapsed, 1),
                rtf=round(elapsed / audio_ms, 4) if audio_ms else None, edits=edits, ref_len=length,
                error_rate=round(edits / length, 4) if length else None)


def _language_summary(items: list[dict[str, Any]]) -> dict[str, Any]:
    done = [i for i in items if "rtf" in i]
    edits = sum(i["edits"] for i in done)
    length = sum(i["ref_len"] for i in done)
    return {
        "metric": "cer" if items and items[0]["language"] == "zh" else "wer",
        "utterances": len(items),
        "failures": len(items) - len(done),
        "error_rate": round(edits / length, 4) if length else None,
        "rtf": summarize((i["rtf"] for i in done), digits=4),
        "elapsed_ms": summarize(i["elapsed_ms"] for i in done),
        "audio_ms": summarize(i["audio_ms"] for i in done),
    }


async def measure_asr(provider: Any, config: AppConfig, options: ComponentOptions, console: Console,
                      report: ComponentReport) -> None:
    samples = builtin_samples(options.languages, options.asr_per_language)
    if options.testset_dir:
        extra, notes = user_samples(options.testset_dir)
        samples += extra
        report.notes += notes
        report.notes.append(f"{len(extra)} user samples from {options.testset_dir}")

    # Like the server's warm-up: the first call pays for allocations; time it separately.
    t0 = time.perf_counter()
    await provider.transcribe(b"\x00\x00" * (RATE // 2))
    report.warmup_s = round(time.perf_counter() - t0, 2)

    progress = console.progress(len(samples), "asr")
    for sample in samples:
        item: dict[str, Any] = {"name": sample.name, "language": sample.language, "source": sample.source,
                                "reference": sample.text}
        await timed_item(report, item, _transcribe(provider, sample, item))
        detail = f"{sample.name} rtf {item['rtf']:.3f}" if "rtf" in item else f"{sample.name} {item.get('error')}"
        progress.advance(detail=detail)
    progress.close()

    groups: dict[str, dict[str, Any]] = {}
    for source in ("espeak", "user"):
        for lang in ("en", "zh"):
            items = [i for i in report.items if i["source"] == source and i["language"] == lang]
            if items:
                groups[f"{source}_{lang}"] = _language_summary(items)
    done = [i for i in report.items if "rtf" in i]
    report.summary = {"by_set": groups, "rtf": summarize((i["rtf"] for i in done), digits=4),
                      "success_rate": round(len(done) / len(report.items), 3) if report.items else None}

    if any(i["language"] == "zh" for i in report.items):
        language = getattr(provider.settings, "language", None)
        if english_only(provider):
            report.notes.append(
                "the ASR model is English-only: Mandarin CER shows what a Mandarin speaker gets with this "
                "config (useless; above 100 % when English words are inserted), not a measurement problem; "
                "configure a multilingual model for Chinese")
        elif language not in (None, "auto", "zh"):
            report.notes.append(f"asr.language is {language!r}: Mandarin audio is decoded as that language")
