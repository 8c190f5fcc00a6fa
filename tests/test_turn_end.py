"""Adaptive end of turn: the rule on transcripts, and the listener applying it to the silence it
counts (numbers in, utterances out; the transcription is a coroutine with a fixed answer)."""

from __future__ import annotations

import asyncio

import pytest

from server.pipeline.segmenter import SegmenterConfig
from server.pipeline.turn_end import TurnEnd, TurnEndWindows, classify, silence_window_ms
from server.session.listener import UtteranceListener

WIN = 512  # samples per VAD window: 32 ms


@pytest.mark.parametrize(("text", "expected"), [
    ("What time is it?", TurnEnd.SHORT),
    ("what time is it", TurnEnd.SHORT),  # engines without punctuation
    ("Play some music.", TurnEnd.SHORT),
    ("Turn the light on", TurnEnd.SHORT),
    ("Where are you from", TurnEnd.SHORT),
    ("Turn on the light in the kitchen and", TurnEnd.LONG),
    ("Turn on the light in the kitchen and...", TurnEnd.LONG),
    ("I want to", TurnEnd.LONG),
    ("Set a timer for, um", TurnEnd.LONG),
    ("and then", TurnEnd.LONG),
    ("Tell me about", TurnEnd.LONG),
    ("What's the weather in", TurnEnd.SHORT),  # "in" often ends a request ("come in"): not a trailer
    ("Hello", TurnEnd.DEFAULT),  # one or two words: cannot tell
    ("", TurnEnd.DEFAULT),
    ("今天天气怎么样", TurnEnd.SHORT),
    ("你好吗", TurnEnd.SHORT),
    ("帮我打开客厅的灯，然后", TurnEnd.LONG),
    ("我想", TurnEnd.LONG),
    ("嗯", TurnEnd.LONG),
    ("播放", TurnEnd.DEFAULT),
])
def test_classify(text: str, expected: TurnEnd) -> None:
    assert classify(text) is expected


def test_windows_by_decision() -> None:
    w = TurnEndWindows(short_ms=250, default_ms=500, long_ms=1200)
    assert silence_window_ms("What time is it?", w) == 250
    assert silence_window_ms("and the", w) == 1200
    assert silence_window_ms("hi", w) == 500


def make(answer: str, delay_s: float = 0.0) -> tuple[UtteranceListener, list[int]]:
    calls: list[int] = []

    async def transcribe(audio: bytes) -> str:
        calls.append(len(audio))
        await asyncio.sleep(delay_s)
        return answer

    listener = UtteranceListener(SegmenterConfig(min_silence_ms=500, min_speech_ms=250), pre_roll_ms=64,
                                 early_asr_ms=96, max_utterance_s=30, transcribe=transcribe, tag="t",
                                 windows=TurnEndWindows(short_ms=300, default_ms=500, long_ms=1000))
    return listener, calls


async def silence_until_end(listener: UtteranceListener, speech_windows: int = 40,
                            max_silence_windows: int = 60) -> float | None:
    """Speech, then silence one window at a time (yielding so the transcription can finish);
    the silence in ms at which the utterance ended, or None."""
    pcm = b"\x01\x00" * WIN
    for _ in range(speech_windows):
        assert listener.feed(pcm, [0.9], 0.0) == []
    for n in range(1, max_silence_windows + 1):
        out = listener.feed(pcm, [0.0], 0.0)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        if out:
            assert len(out) == 1 and out[0].asr_task is not None
            return n * WIN / 16
    return None


async def test_finished_request_ends_after_the_short_window() -> None:
    listener, calls = make("What time is it?")
    ended = await silence_until_end(listener)
    assert ended is not None and 300 <= ended < 300 + WIN / 16
    assert listener.last_decision is TurnEnd.SHORT and len(calls) == 1


async def test_trailing_request_waits_for_the_long_window() -> None:
    listener, _ = make("Turn on the light in the kitchen and")
    ended = await silence_until_end(listener)
    assert ended is not None and 1000 <= ended < 1000 + WIN / 16
    assert listener.last_decision is TurnEnd.LONG


async def test_user_going_on_after_a_trailing_pause_is_one_utterance() -> None:
    listener, calls = make("Turn on the light in the kitchen and")
    pcm = b"\x01\x00" * WIN
    out = []
    for _ in range(40):
        out += listener.feed(pcm, [0.9], 0.0)
    for _ in range(22):  # a 700 ms pause: longer than the default window
        out += listener.feed(pcm, [0.0], 0.0)
        await asyncio.sleep(0)
    assert out == []  # still waiting: the transcript trails off
    for _ in range(30):
        out += listener.feed(pcm, [0.9], 0.0)
    ended = await silence_until_end(listener, speech_windows=0)
    assert ended is not None and len(calls) == 2  # the first early transcript was thrown away


async def test_unknown_transcript_keeps_the_default_window() -> None:
    listener, _ = make("What time is it?", delay_s=10)  # the transcript never arrives in time
    ended = await silence_until_end(listener)
    assert ended is not None and 500 <= ended < 500 + WIN / 16
    assert listener.last_decision is TurnEnd.DEFAULT


async def test_fixed_window_without_adaptive_end() -> None:
    async def transcribe(audio: bytes) -> str:
        return "and"

    listener = UtteranceListener(SegmenterConfig(min_silence_ms=500, min_speech_ms=250), pre_roll_ms=64,
                                 early_asr_ms=96, max_utterance_s=30, transcribe=transcribe, tag="t")
    ended = await silence_until_end(listener)
    assert ended is not None and 500 <= ended < 500 + WIN / 16
