"""VAD: cost per 60 ms uplink frame, and endpoint accuracy on speech with known silence around it.

Each test utterance is trimmed espeak-ng speech, padded with a known amount of silence (or quiet
noise), encoded to Opus the way the firmware does and decoded the way the server does, then run
through the provider and the server's own Segmenter. Because we made the audio, we know exactly
where speech starts and ends, and can say how far off the detected span is, in milliseconds of
audio. Everything for one utterance runs in one call on the provider's thread, so the per-frame
timings measure the model, not event-loop hops.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from bench.components import ComponentOptions, ComponentReport, timed_item
from bench.console import Console
from bench.stats import summarize
from bench.testset import Sample, builtin_samples, sample_audio
from server.config.schema import AppConfig
from server.pipeline.segmenter import Segmenter, SegmenterConfig, SegmentEvent

RATE = 16000
FRAME_MS = 60  # the firmware's uplink frame
PAD_BEFORE_MS = (300, 650, 1000)  # varied, so onset accuracy is not tested at one offset only
NOISE_RMS = 100  # about -50 dBFS: a quiet room through a cheap microphone


def segmenter_config(provider: Any) -> SegmenterConfig:
    """The endpointing parameters exactly as Session builds them."""
    s = provider.settings
    return SegmenterConfig(threshold=s.threshold, neg_threshold=s.neg_threshold, min_silence_ms=s.min_silence_ms,
                           min_speech_ms=s.min_speech_ms, window_samples=provider.window_samples)


def run_frames(provider: Any, packets: list[bytes], seg_cfg: SegmenterConfig) -> dict[str, Any]:
    """Decode + VAD + segmenter over one utterance, timing each frame (runs on a worker thread)."""
    from server.audio.opus import OpusDecoder

    decoder = OpusDecoder(RATE)
    stream = provider.new_stream()
    segmenter = Segmenter(seg_cfg)
    decode_ms: list[float] = []
    vad_ms: list[float] = []
    events: list[dict[str, Any]] = []
    for packet in packets:
        t0 = time.perf_counter()
        pcm = decoder.decode(packet)
        t1 = time.perf_counter()
        probs = provider.process_sync(stream, pcm)
        t2 = time.perf_counter()
        decode_ms.append((t1 - t0) * 1000)
        vad_ms.append((t2 - t1) * 1000)
        for prob in probs:
            seg = segmenter.feed(prob)
            if seg is not None:
                events.append({"event": seg.event.value, "start": seg.start, "end": seg.end,
                               "decided_at": segmenter.position})
    return {"decode_ms": decode_ms, "vad_ms": vad_ms, "events": events}


def padded(speech: np.ndarray, before_ms: int, after_ms: int, noise: bool, seed: int) -> np.ndarray:
    before = np.zeros(RATE * before_ms // 1000, dtype=np.float64)
    after = np.zeros(RATE * after_ms // 1000, dtype=np.float64)
    audio = np.concatenate([before, speech.astype(np.float64), after])
    if noise:
        audio += np.random.default_rng(seed).normal(0, NOISE_RMS, audio.size)
    return np.clip(audio, -32768, 32767).astype(np.int16)


def judge(events: list[dict[str, Any]], true_start: int, true_end: int) -> dict[str, Any]:
    """Compare the first detected utterance with the known speech span (ms of audio)."""
    ends = [e for e in events if e["event"] == SegmentEvent.SPEECH_END.value]
    if not ends:
        return {"outcome": "missed"}
    first = ends[0]
    ms = 1000 / RATE
    return {
        "outcome": "split" if len(ends) > 1 else "ok",
        "segments": len(ends),
        "detected_start_ms": round(first["start"] * ms, 1),
        "detected_end_ms": round(first["end"] * ms, 1),
        "onset_error_ms": round((first["start"] - true_start) * ms, 1),
        "offset_error_ms": round((first["end"] - true_end) * ms, 1),
        # When the server would have declared the end, counted from the real end of speech.
        "endpoint_delay_ms": round((first["decided_at"] - true_end) * ms, 1),
    }


async def _utterance(provider: Any, sample: Sample, item: dict[str, Any], seg_cfg: SegmenterConfig, seed: int,
                     decode_all: list[float], vad_all: list[float]) -> None:
    from harness.devsim import UplinkEncoder

    speech = np.frombuffer(await sample_audio(sample), dtype=np.int16)
    before_ms = item["pad_before_ms"]
    audio = padded(speech, before_ms, item["pad_after_ms"], item["noise"], seed)
    packets = await asyncio.to_thread(UplinkEncoder(FRAME_MS).encode_all, audio.tobytes())
    out = await provider.run_blocking(run_frames, provider, packets, seg_cfg)
    true_start = RATE * before_ms // 1000
    true_end = true_start + speech.size
    item.update(true_start_ms=round(true_start * 1000 / RATE, 1), true_end_ms=round(true_end * 1000 / RATE, 1),
                frames=len(packets), **judge(out["events"], true_start, true_end))
    decode_all.extend(out["decode_ms"])
    vad_all.extend(out["vad_ms"])


async def measure_vad(provider: Any, config: AppConfig, options: ComponentOptions, console: Console,
                      report: ComponentReport) -> None:
    seg_cfg = segmenter_config(provider)
    samples = builtin_samples(options.languages, options.vad_per_language)
    after_ms = seg_cfg.min_silence_ms + 1000
    decode_all: list[float] = []
    vad_all: list[float] = []
    progress = console.progress(len(samples), "vad")
    for i, sample in enumerate(samples):
        before_ms = PAD_BEFORE_MS[i % len(PAD_BEFORE_MS)]
        noise = i % 2 == 1
        item: dict[str, Any] = {"name": sample.name, "language": sample.language, "text": sample.text,
                                "pad_before_ms": before_ms, "pad_after_ms": after_ms, "noise": noise}

        await timed_item(report, item, _utterance(provider, sample, item, seg_cfg, i, decode_all, vad_all))
        progress.advance(detail=f"{sample.name} {item.get('outcome', 'error')} "
                                f"end {item.get('offset_error_ms', '-')} ms")
    progress.close()

    judged = [i for i in report.items if "outcome" in i]
    found = [i for i in judged if i["outcome"] != "missed"]
    vad = summarize(vad_all, digits=3)
    report.summary = {
        "frames": len(vad_all),
        "frame_ms": FRAME_MS,
        "vad_ms_per_frame": vad,
        "decode_ms_per_frame": summarize(decode_all, digits=3),
        # Share of one core the VAD of one talking device needs (cost / frame duration).
        "vad_core_share_per_device": round(vad["mean"] / FRAME_MS, 5) if vad["mean"] is not None else None,
        "utterances": len(report.items),
        "detected": len(found),
        "missed": sum(1 for i in judged if i["outcome"] == "missed"),
        "split": sum(1 for i in judged if i["outcome"] == "split"),
        "onset_error_ms": summarize(i["onset_error_ms"] for i in found),
        "offset_error_ms": summarize(i["offset_error_ms"] for i in found),
        "abs_offset_error_ms": summarize(abs(i["offset_error_ms"]) for i in found),
        "endpoint_delay_ms": summarize(i["endpoint_delay_ms"] for i in found),
        "min_silence_ms": seg_cfg.min_silence_ms,
    }
    report.notes.append(
        f"endpoint_delay_ms is audio time from the real end of speech to the end decision; it is about "
        f"vad.min_silence_ms ({seg_cfg.min_silence_ms}) plus the offset error. Onset errors include the "
        f"Opus codec delay (a few ms) and the segmenter's start vote ({seg_cfg.start_votes} of "
        f"{seg_cfg.start_window} windows); the server adds vad.pre_roll_ms before the detected start.")
