"""Pure state machines on numbers: endpointing in audio time, the sentence splitter, pacing."""

from __future__ import annotations

import asyncio

import pytest

from server.pipeline.dialogue import Dialogue
from server.pipeline.emotion import emoji_for, emotion_of
from server.pipeline.segmenter import Segmenter, SegmenterConfig, SegmentEvent
from server.pipeline.splitter import SentenceSplitter, clean_for_speech
from server.session.output import PacedOutput

WIN = 512


def feed(seg: Segmenter, probs: list[float]):
    return [(i, e) for i, p in enumerate(probs) if (e := seg.feed(p)) is not None]


def test_speech_start_and_end_in_samples() -> None:
    seg = Segmenter(SegmenterConfig(min_silence_ms=500, min_speech_ms=250))
    probs = [0.0] * 10 + [0.9] * 30 + [0.1] * 20
    events = feed(seg, probs)
    assert [e.event for _, e in events] == [SegmentEvent.SPEECH_START, SegmentEvent.SPEECH_END]
    start, end = events[0][1], events[1][1]
    assert start.start == 10 * WIN
    assert end.start == 10 * WIN and end.end == 40 * WIN
    # 500 ms of silence = ceil(8000/512) = 16 windows after the last voiced one
    assert events[1][0] == 40 + 15


def test_end_depends_on_audio_not_on_call_timing() -> None:
    # Same probabilities fed in one burst or spread out give identical positions: the machine
    # never looks at a clock.
    a, b = Segmenter(), Segmenter()
    probs = [0.0] * 5 + [0.8] * 40 + [0.0] * 30
    assert [e for _, e in feed(a, probs)] == [e for _, e in feed(b, probs)]


def test_skipping_quiet_windows_equals_feeding_zeros() -> None:
    """`skip_quiet` (a DTX packet while nobody speaks) ends in the state `feed(0.0)` per window
    would: the same events, at the same sample positions, whatever votes were pending."""
    import random

    rng = random.Random(3)
    started = 0
    for _ in range(200):
        a, b = Segmenter(), Segmenter()
        events_a, events_b = [], []
        for _ in range(120):
            if not a.in_speech and rng.random() < 0.5:
                windows = rng.choice([0, 1, 1, 2, 3, 6])
                a.skip_quiet(windows)
                events_b += [e for _ in range(windows) if (e := b.feed(0.0)) is not None]
                continue
            prob = rng.choice([0.0, 0.2, 0.6, 0.9])
            events_a += [e] if (e := a.feed(prob)) is not None else []
            events_b += [e] if (e := b.feed(prob)) is not None else []
        assert events_a == events_b and a.position == b.position and a.in_speech == b.in_speech
        started += any(e.event is SegmentEvent.SPEECH_START for e in events_a)
    assert started > 100


def test_hysteresis_keeps_soft_syllables_in_speech() -> None:
    seg = Segmenter(SegmenterConfig(min_silence_ms=300))
    # 0.4 is below threshold but above neg_threshold: not silence.
    events = feed(seg, [0.9] * 10 + [0.4] * 40 + [0.9] * 5 + [0.0] * 12)
    assert [e.event for _, e in events] == [SegmentEvent.SPEECH_START, SegmentEvent.SPEECH_END]
    assert events[1][1].end == 55 * WIN


def test_short_blip_is_discarded() -> None:
    seg = Segmenter(SegmenterConfig(min_speech_ms=250))
    events = feed(seg, [0.9] * 4 + [0.0] * 20)
    assert [e.event for _, e in events] == [SegmentEvent.SPEECH_START, SegmentEvent.DISCARD]


def test_start_needs_votes() -> None:
    seg = Segmenter()
    assert feed(seg, [0.9, 0.0, 0.0, 0.9, 0.0, 0.0, 0.9, 0.0]) == []
    assert not seg.in_speech


def test_forced_end() -> None:
    seg = Segmenter()
    feed(seg, [0.9] * 20)
    e = seg.end()
    assert e is not None and e.event is SegmentEvent.SPEECH_END and not seg.in_speech
    assert seg.end() is None


def split_all(deltas: list[str]) -> list[str]:
    s = SentenceSplitter()
    out: list[str] = []
    for d in deltas:
        out += s.feed(d)
    return out + s.flush()


def test_first_clause_is_released_early() -> None:
    s = SentenceSplitter()
    assert s.feed("Well") == []
    assert s.feed(", the weather in Beijing") == []
    assert s.feed(" is sunny today, with") == ["Well, the weather in Beijing is sunny today,"]
    # later pieces wait for a sentence end
    assert s.feed(" a light breeze, and") == []
    assert s.feed(" clear skies. Then") == ["with a light breeze, and clear skies."]
    assert s.flush() == ["Then"]


def test_english_periods_split_but_numbers_and_abbreviations_do_not() -> None:
    out = split_all(["It costs 3.5 dollars. Dr. Smith agrees. Version 2.1 is out", "!"])
    assert out == ["It costs 3.5 dollars.", "Dr. Smith agrees.", "Version 2.1 is out!"]


def test_chinese_punctuation() -> None:
    out = split_all(["今天天气", "不错，适合出门。", "我们去", "公园吧！好"])
    assert out == ["今天天气不错，", "适合出门。", "我们去公园吧！", "好"]


def test_a_period_at_the_end_of_a_delta_waits_for_the_next_character() -> None:
    s = SentenceSplitter()
    assert s.feed("Pi is 3.") == []
    assert s.feed("14 exactly. Yes") == ["Pi is 3.14 exactly."]


def test_markdown_and_emoji_are_not_spoken() -> None:
    assert clean_for_speech("**Sure!** 😊 Here you go") == "Sure! Here you go"
    assert split_all(["😊😊", "。"]) == []


def test_long_sentences_split_at_clauses() -> None:
    long = "one two three four five six seven eight nine ten " * 5
    out = split_all(["First. ", long + ", and the rest."])
    assert len(out) == 3 and out[-1] == "and the rest."


def test_emotion_from_emoji() -> None:
    assert emotion_of("Great news 😂!") == "laughing"
    assert emotion_of("plain") is None
    assert emoji_for("happy") == "😄" or emoji_for("happy") in "😊🙂😀😃😁😄"


def test_dialogue_is_bounded_and_marks_interruptions() -> None:
    d = Dialogue(max_turns=2)
    d.add("a", "A")
    d.add("b", "B", interrupted=True)
    d.add("c", "", interrupted=True)
    msgs = d.messages("sys", "now", context="ctx")
    roles = [m.role for m in msgs]
    assert roles == ["system", "system", "user", "assistant", "user", "assistant", "user"]
    # Only what was said, cut off: no bracketed annotation a model could copy into a reply.
    assert msgs[3].content == "B…"
    assert msgs[5].content == "…"
    assert not any("[" in m.content or "interrupted" in m.content for m in msgs)
    assert msgs[-1].content == "now"


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class AlwaysActive:
    active = True


def virtual_pacer(prebuffer: int) -> tuple[PacedOutput, list[float], FakeClock]:
    """A pacer on a virtual clock: sleeping advances time, sending records the send time."""
    clock = FakeClock()
    sent: list[float] = []

    async def send(_: bytes) -> None:
        sent.append(clock.t)

    async def fake_sleep(d: float) -> None:
        clock.t += d

    return PacedOutput(send, frame_ms=60, prebuffer=prebuffer, clock=clock, sleep=fake_sleep), sent, clock


async def test_pacer_sends_prebuffer_then_real_time() -> None:
    out, sent, clock = virtual_pacer(5)
    for _ in range(50):
        assert await out.send_frame(AlwaysActive(), b"x")
    assert sent[:5] == pytest.approx([100.0] * 5)
    gaps = [round(b - a, 6) for a, b in zip(sent[5:], sent[6:], strict=False)]
    assert gaps == pytest.approx([0.06] * len(gaps))
    # never more than the pre-buffer ahead of playback
    assert out.max_ahead_frames <= 5.0001
    await out.wait_played(AlwaysActive())
    assert clock.t == pytest.approx(100.0 + 50 * 0.06)


async def test_pacer_rebases_after_a_gap() -> None:
    out, sent, clock = virtual_pacer(3)
    for _ in range(3):
        await out.send_frame(AlwaysActive(), b"x")
    clock.t += 5  # TTS was slow: the device played everything and waited
    for _ in range(3):
        await out.send_frame(AlwaysActive(), b"x")
    assert sent[3:] == pytest.approx([105.0] * 3)  # a fresh pre-buffer, no catch-up burst beyond it


async def test_pacer_stops_for_an_inactive_turn() -> None:
    class Inactive:
        active = False

    out = PacedOutput(lambda b: asyncio.sleep(0), frame_ms=60, prebuffer=5)
    assert await out.send_frame(Inactive(), b"x") is False
