"""The cut-off benchmark (`performance_tester.py --cutoff`) on a tiny set: its accounting, not
its speed. Real espeak-ng speech, real Silero VAD, the server's listener and end-of-turn rules,
real Whisper tiny.en for the transcripts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bench.cutoff import PCM_RATE, CutoffItem, Policy, format_table, run_cutoff
from harness.devsim import synthesize_speech
from server.config.loader import load_config
from server.providers.base import ProviderContext
from server.providers.registry import build_provider

POLICIES = (
    Policy("fixed 300 ms", {"min_silence_ms": 300, "adaptive_end": False, "partial_asr_ms": 0}),
    Policy("fixed 1000 ms", {"min_silence_ms": 1000, "adaptive_end": False, "partial_asr_ms": 0}),
    Policy("adaptive + partials", {"min_silence_ms": 500, "adaptive_end": True, "partial_asr_ms": 500}),
)


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
async def providers() -> AsyncIterator[tuple[Any, Any, Any]]:
    config = load_config(ROOT / "config.yaml", base=ROOT / "config.yaml")  # the shipped defaults only
    ctx = ProviderContext(root_dir=ROOT, data_dir=ROOT / config.data_dir, models_dir=ROOT / config.models_dir,
                          output_sample_rate=config.audio_out.sample_rate)
    vad_settings = config.provider("vad")
    vad = build_provider("vad", vad_settings, ctx)
    asr = build_provider("asr", config.provider("asr"), ctx)
    await vad.load()
    await asr.load()
    yield vad, asr, vad_settings
    await vad.close()
    await asr.close()


async def test_tiny_cutoff_run_accounts_every_item(providers: tuple[Any, Any, Any]) -> None:
    vad, asr, vad_settings = providers
    items = [CutoffItem("en", ("Turn on the kitchen light and then", "the one in the hall"), (700,)),
             CutoffItem("en", ("What time is it?",))]
    report = await run_cutoff(items, POLICIES, vad, vad_settings, {"en": asr}, 200, synthesize_speech)
    by_policy = {p.policy: p for p in report.policies}
    assert list(by_policy) == [p.name for p in POLICIES]
    assert len(report.items) == len(items) * len(POLICIES)
    for summary in report.policies:
        mine = [r for r in report.items if r.policy == summary.policy]
        assert (summary.paused, summary.finished, summary.missed) == (1, 1, 0)
        # The summary counts exactly the items judged cut off, and the delays of the others.
        assert summary.cut_off == sum(r.cut_off for r in mine if r.paused)
        finished = next(r for r in mine if not r.paused)
        assert summary.finished_delay_ms["n"] == 1 and summary.finished_delay_ms["mean"] == round(finished.delay_ms, 1)
        for r in mine:
            # Cut off exactly when the first endpoint came before the last part was spoken.
            assert r.cut_off == (r.ends[0] < r.last_speech_start)
            if not r.cut_off:
                assert r.delay_ms == pytest.approx((r.ends[0] - r.speech_end) * 1000 / PCM_RATE)
    # A 700 ms pause: a 300 ms window ends the turn inside it, a 1000 ms window does not.
    assert by_policy["fixed 300 ms"].cut_off == 1
    assert by_policy["fixed 1000 ms"].cut_off == 0
    # A finished request waits at least the window (in audio time), and the 1 s window longer.
    assert by_policy["fixed 1000 ms"].finished_delay_ms["mean"] >= 1000
    assert 300 <= by_policy["fixed 300 ms"].finished_delay_ms["mean"] < 1000
    # Only the policy with partials sends partial transcriptions.
    assert by_policy["fixed 300 ms"].asr_runs["partial"] == 0
    assert by_policy["adaptive + partials"].asr_runs["partial"] >= 1
    assert any("cut off" in line for line in format_table(report))
