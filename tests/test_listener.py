"""UtteranceListener on numbers: PCM positions and VAD probabilities in, utterances out."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from server.pipeline.segmenter import SegmenterConfig
from server.session.listener import TAIL_SAMPLES, UtteranceListener

WIN = 512


def frame(n_windows: int, value: int) -> bytes:
    # Distinct sample values let us check exactly which audio ended up in an utterance.
    return (value.to_bytes(2, "little", signed=True)) * (WIN * n_windows)


async def feed(listener: UtteranceListener, pattern: list[tuple[int, float]]) -> list:
    out = []
    for i, (n, prob) in enumerate(pattern):
        for _ in range(n):
            out += listener.feed(frame(1, i + 1), [prob], arrival=float(len(out)))
        await asyncio.sleep(0)
    return out


def make(transcribe=None, **kw) -> UtteranceListener:
    return UtteranceListener(SegmenterConfig(min_silence_ms=500, min_speech_ms=250), pre_roll_ms=64,
                             early_asr_ms=kw.pop("early_asr_ms", 200), max_utterance_s=kw.pop("max_s", 30),
                             transcribe=transcribe, tag="t")


async def test_one_utterance_with_pre_roll_and_tail() -> None:
    listener = make()
    out = await feed(listener, [(10, 0.0), (30, 0.9), (20, 0.0)])
    assert len(out) == 1
    samples = [int.from_bytes(out[0].audio[i:i + 2], "little") for i in range(0, len(out[0].audio), 2)]
    # 64 ms of pre-roll (value 1), all the speech (value 2), then a 100 ms tail (value 3).
    assert samples.count(1) == 1024 and samples.count(2) == 30 * WIN and samples.count(3) == TAIL_SAMPLES


async def test_early_transcript_is_handed_over_when_silence_holds() -> None:
    calls: list[int] = []

    async def transcribe(audio: bytes) -> str:
        calls.append(len(audio))
        return "early"

    listener = make(transcribe)
    out = await feed(listener, [(5, 0.0), (30, 0.9), (20, 0.0)])
    assert len(out) == 1 and out[0].asr_task is not None
    assert await out[0].asr_task == "early"
    assert calls == [len(out[0].audio)]  # exactly the audio of the utterance
    assert listener.early_used == 1


async def test_early_transcript_is_dropped_when_speech_goes_on() -> None:
    started = 0

    def transcribe(audio: bytes) -> Awaitable[str]:
        nonlocal started
        started += 1
        return asyncio.sleep(10, result="stale")

    listener = make(transcribe)
    await feed(listener, [(30, 0.9), (8, 0.0)])  # 256 ms of silence: early ASR starts
    early = listener._early[1] if listener._early else None
    assert early is not None
    out = await feed(listener, [(20, 0.9), (20, 0.0)])  # the user went on
    assert len(out) == 1
    assert early.cancelled() or early.done()
    assert out[0].asr_task is not early
    # Two started (one thrown away when the user went on), one used.
    assert (started, listener.early_used) == (2, 1)


async def test_manual_mode_keeps_everything_until_stop() -> None:
    listener = make()
    listener.reset("manual")
    assert await feed(listener, [(5, 0.0), (30, 0.9), (40, 0.0), (10, 0.9)]) == []
    utterance = listener.finish()
    assert utterance is not None and len(utterance.audio) == 85 * WIN * 2


async def test_manual_mode_without_speech_gives_nothing() -> None:
    listener = make()
    listener.reset("manual")
    await feed(listener, [(40, 0.0)])
    assert listener.finish() is None


async def test_long_speech_is_cut_at_the_limit() -> None:
    listener = make(max_s=2)
    out = await feed(listener, [(100, 0.9)])
    assert len(out) >= 1 and len(out[0].audio) <= (2 * 16000 + TAIL_SAMPLES + 2048) * 2


async def test_idle_audio_is_trimmed() -> None:
    listener = make()
    await feed(listener, [(2000, 0.0)])  # 64 s of silence
    assert len(listener._audio) < 64 * 1024


async def test_speech_at_the_very_start_gets_a_silent_lead_in() -> None:
    listener = make()
    out = await feed(listener, [(30, 0.9), (20, 0.0)])
    assert len(out) == 1
    lead = out[0].audio[: 1024 * 2]
    assert lead == b"\x00\x00" * 1024  # the whole 64 ms pre-roll, made of silence
    assert out[0].audio[1024 * 2:1024 * 2 + 2] == (1).to_bytes(2, "little")


# ---------------------------------------------------------------------- partial transcripts


class PartialASR:
    """Answers each request after `delay_s`, with the number of samples it was given; records
    how many were in flight at once."""

    def __init__(self, delay_s: float = 0.05) -> None:
        self.delay_s = delay_s
        self.in_flight = 0
        self.max_in_flight = 0
        self.calls: list[int] = []

    async def transcribe(self, audio: bytes) -> str:
        self.calls.append(len(audio) // 2)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            return f"heard {len(audio) // 2}"
        finally:
            self.in_flight -= 1


async def feed_timed(listener: UtteranceListener, pattern: list[tuple[int, float]], window_s: float) -> list:
    """Feed in (simulated) real time: one window every `window_s` seconds."""
    out = []
    for n, prob in pattern:
        for _ in range(n):
            out += listener.feed(frame(1, 1 if prob < 0.5 else 2), [prob], arrival=0.0)
            await asyncio.sleep(window_s)
    return out


def make_partial(asr: PartialASR, early: PartialASR, counts: list[str], partial_ms: int = 320) -> UtteranceListener:
    return UtteranceListener(SegmenterConfig(min_silence_ms=500, min_speech_ms=250), pre_roll_ms=64,
                             early_asr_ms=200, max_utterance_s=30, transcribe=early.transcribe, tag="t",
                             partial_asr_ms=partial_ms, transcribe_partial=asr.transcribe, count=counts.append)


async def test_partials_during_speech_one_in_flight_and_the_closing_one_is_reused() -> None:
    partial, early, counts = PartialASR(delay_s=0.02), PartialASR(), []
    listener = make_partial(partial, early, counts)
    seen: list[str] = []
    listener.on_partial = seen.append
    # 3.2 s of speech (100 windows), fed at 4 ms a window: a partial every 320 ms of new speech
    # (10 windows) would be 10, but each takes 20 ms (5 windows), so they cannot overlap.
    out = await feed_timed(listener, [(5, 0.0), (100, 0.9)], 0.004)
    assert out == [] and partial.max_in_flight == 1
    during = len(partial.calls)
    assert 5 <= during <= 10
    assert partial.calls == sorted(partial.calls)  # the growing utterance
    assert listener.partial_text is not None and listener.partial_text == seen[-1]
    await asyncio.sleep(0.1)  # the last partial of the speech is back (a slow machine's timers)
    out += await feed_timed(listener, [(20, 0.0)], 0.004)
    assert len(out) == 1
    # The closing partial (at the pause) sent exactly the utterance's audio: the early
    # transcription reused it, so the early ASR never ran and the final text is that partial.
    assert early.calls == [] and len(partial.calls) == during + 1
    assert partial.calls[-1] == len(out[0].audio) // 2
    assert await out[0].asr_task == f"heard {len(out[0].audio) // 2}"
    assert counts.count("partial_asr_reused") == 1 and listener.early_used == 1
    assert partial.max_in_flight == 1 and listener.partial_text is None


async def test_stale_partial_is_dropped_when_the_utterance_ends() -> None:
    slow, early, counts = PartialASR(delay_s=5), PartialASR(), []
    listener = make_partial(slow, early, counts, partial_ms=200)
    out = await feed(listener, [(30, 0.9)])
    assert len(slow.calls) == 1 and listener._partial is not None
    task = listener._partial.task
    # Silence: the partial in flight is not of the whole utterance. At the pause it is cancelled
    # (its result could only be stale) and the closing partial, of exactly the utterance's
    # audio, takes its place at once; the early transcription reuses that one.
    out = await feed(listener, [(20, 0.0)])
    await asyncio.sleep(0)
    assert task.cancelled() and counts.count("partial_asr_superseded") == 1
    assert len(out) == 1 and early.calls == [] and len(slow.calls) == 2
    assert slow.calls[-1] == len(out[0].audio) // 2 and counts.count("partial_asr_reused") == 1
    assert out[0].asr_task is not None and not out[0].asr_task.done()
    assert listener._partial is None and listener.partial_text is None
    out[0].asr_task.cancel()


async def test_without_partials_nothing_changes() -> None:
    results = []
    for partial_ms in (0, 320):
        partial, early, counts = PartialASR(), PartialASR(), []
        listener = make_partial(partial, early, counts, partial_ms=partial_ms)
        if partial_ms == 0:
            out = await feed(listener, [(5, 0.0), (30, 0.9), (20, 0.0)])
            assert partial.calls == [] and len(early.calls) == 1 and counts == []
        else:
            out = await feed(listener, [(5, 0.0), (30, 0.9), (20, 0.0)])
        results.append((len(out), out[0].audio, await out[0].asr_task))
    # Same utterance audio and same final transcript with and without partials.
    assert results[0] == results[1]


async def test_provider_that_declines_partials_gets_none() -> None:
    early, counts = PartialASR(), []
    listener = UtteranceListener(SegmenterConfig(min_silence_ms=500, min_speech_ms=250), pre_roll_ms=64,
                                 early_asr_ms=200, max_utterance_s=30, transcribe=early.transcribe, tag="t",
                                 partial_asr_ms=320, transcribe_partial=lambda audio: None, count=counts.append)
    out = await feed(listener, [(5, 0.0), (40, 0.9), (20, 0.0)])
    assert len(out) == 1 and len(early.calls) == 1 and counts == [] and listener.partial_text is None


def test_quiet_packets_skipped_without_pcm_give_the_same_utterances() -> None:
    """A DTX packet taken by `skip_quiet` (no PCM built, no call per VAD window) must leave the
    listener exactly where `feed` with that much digital silence would: same utterances, same
    audio to the sample, same positions. Random mixes of DTX, room noise and speech."""
    import random

    rng = random.Random(7)
    for trial in range(40):
        fast, slow = make(), make()
        fast_out: list = []
        slow_out: list = []
        skipped = 0
        carry = 0  # samples short of a whole VAD window, like the Silero stream's pending audio
        for step in range(300):
            kind = rng.choices(["dtx", "noise", "speech"], [6, 1, 2])[0]
            if kind == "dtx":
                samples = rng.choice([320, 960, 960, 1920])
                windows, carry = divmod(carry + samples, WIN)
                if fast.skip_quiet(samples, windows, float(step)):
                    skipped += 1
                else:
                    fast_out += fast.feed(bytes(samples * 2), [0.0] * windows, float(step), quiet=True)
                slow_out += slow.feed(bytes(samples * 2), [0.0] * windows, float(step), quiet=True)
                continue
            n = rng.choice([1, 2, 3])
            # Whole windows of sound: noise is quiet to the VAD, speech is not.
            pcm = frame(n, step + 1)
            prob = 0.9 if kind == "speech" else 0.1
            if carry:
                # The window straddling the carried silence: pad it so windows stay whole.
                pad = WIN - carry
                for listener, out in ((fast, fast_out), (slow, slow_out)):
                    out += listener.feed(bytes(pad * 2), [0.0], float(step), quiet=True)
                carry = 0
            fast_out += fast.feed(pcm, [prob] * n, float(step))
            slow_out += slow.feed(pcm, [prob] * n, float(step))
            if rng.random() < 0.02:
                fast.reset()
                slow.reset()
        assert [u.audio for u in fast_out] == [u.audio for u in slow_out], trial
        assert fast._segmenter.position == slow._segmenter.position
        assert fast._audio_pos == slow._audio_pos
        assert skipped > 0
