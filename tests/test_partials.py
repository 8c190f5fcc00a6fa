"""Partial transcripts while the user speaks (`vad.partial_asr_ms`), end to end: the real server
with the OpenAI ASR provider (which declares cheap partials) against the fake OpenAI server on
127.0.0.1, and the firmware-faithful simulated device speaking espeak-ng speech as paced Opus.

The fake answers each transcription after 150 ms with the words of the question in proportion to
the audio it was sent (a growing utterance reads as a growing prefix; the whole utterance as the
whole question), so the partials are visible as requests with shorter audio.

* Partials on: several transcriptions of the growing utterance arrive while the user is still
  speaking, never two partials at once (one in flight per session), and the device gets the
  same single `stt` and the LLM the same question as without partials.
* Partials off (`partial_asr_ms: 0`): no transcription leaves before the speech ends.
"""

from __future__ import annotations

import io
import time
import wave
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from harness.devsim import SimDevice, synthesize_speech
from harness.devsim.server_process import ServerProcess, start_server
from harness.fakes.openai_server import ChatReply, FakeOpenAIServer, RecordedRequest

pytestmark = pytest.mark.e2e

QUESTION = "Please tell me what the weather will be like in the mountains tomorrow morning"
PRE_ROLL_MS = 300
TAIL_MS = 100


def wav_ms(wav: bytes) -> float:
    with wave.open(io.BytesIO(wav)) as w:
        return w.getnframes() * 1000 / w.getframerate()


@pytest.fixture(scope="module")
async def speech() -> bytes:
    return await synthesize_speech(QUESTION)


@pytest.fixture(scope="module")
async def fake(speech: bytes) -> AsyncIterator[FakeOpenAIServer]:
    words = QUESTION.split()
    speech_ms = len(speech) / 32

    def transcript_for(wav: bytes) -> str:
        # The utterance carries pre-roll and a tail around the speech.
        # espeak-ng's own lead-in and trailing silence are not all kept: most of it is the whole.
        share = (wav_ms(wav) - PRE_ROLL_MS - TAIL_MS) / speech_ms
        return QUESTION if share >= 0.8 else " ".join(words[:max(1, round(share * len(words)))])

    async with FakeOpenAIServer() as server:
        server.transcript_for = transcript_for
        server.default_transcription_delay_s = 0.15
        yield server


def overrides(fake: FakeOpenAIServer, partial_ms: int) -> dict[str, Any]:
    return {
        "llm": {"type": "openai", "base_url": fake.base_url, "api_key": "", "model": "fake-model"},
        "asr": {"type": "openai", "base_url": fake.base_url, "api_key": "", "model": "fake-whisper",
                "language": "en"},
        # No speculation: the LLM requests are then exactly the answered turns.
        "vad": {"type": "silero", "min_silence_ms": 500, "early_asr_ms": 200, "adaptive_end": True,
                "speculate": False, "partial_asr_ms": partial_ms},
    }


async def counters(proc: ServerProcess) -> dict[str, int]:
    async with aiohttp.ClientSession() as s, s.get(proc.http_url + "/metrics") as r:
        return dict((await r.json())["counters"])


async def one_turn(fake: FakeOpenAIServer, partial_ms: int, speech: bytes) -> tuple[Any, list[RecordedRequest],
                                                                                     float, float, dict[str, int]]:
    fake.reset()
    fake.chat_script.append(ChatReply(text="It will be sunny.", ttft_s=0.05))
    async with start_server(overrides(fake, partial_ms)) as proc:
        dev = SimDevice()
        await dev.connect(url=proc.ws_url)
        try:
            started = time.monotonic()
            result = await dev.ask_audio(speech, timeout=40)
        finally:
            await dev.close()
        stats = await counters(proc)
    transcriptions = [r for r in fake.requests if r.path.endswith("/audio/transcriptions")]
    # The device streams in real time after listen start: speech ends this long after `started`.
    speech_end = started + len(speech) / 32 / 1000
    return result, transcriptions, started, speech_end, stats


async def test_partials_during_speech_and_the_final_answer_unchanged(fake: FakeOpenAIServer, speech: bytes) -> None:
    on, on_requests, _, speech_end, stats = await one_turn(fake, 400, speech)
    on_chat = [r.body["messages"][-1]["content"] for r in fake.chat_requests()]
    off, off_requests, _, off_speech_end, off_stats = await one_turn(fake, 0, speech)
    off_chat = [r.body["messages"][-1]["content"] for r in fake.chat_requests()]

    # The same answer both ways: one stt with the whole question, the LLM asked it once.
    assert on.completed and off.completed
    assert on.stt_text == off.stt_text == QUESTION
    assert on_chat == off_chat == [QUESTION]

    # Partials on: transcriptions of the growing utterance were taken while the user spoke.
    full_ms = max(wav_ms(r.audio) for r in on_requests)
    during = [r for r in on_requests if r.received_at < speech_end - 0.2]
    assert len(during) >= 2, [(round(r.received_at - speech_end, 2), wav_ms(r.audio)) for r in on_requests]
    lengths = [wav_ms(r.audio) for r in during]
    # Growing, and at least two taken while the voice went on. The last may already be the
    # whole utterance: the closing partial at the pause is taken of exactly that audio, and the
    # clip's trailing silence can put it before the device finished streaming.
    assert lengths == sorted(lengths) and sum(1 for n in lengths if n < full_ms) >= 2, lengths
    assert stats.get("partial_asr_started", 0) >= len(during)
    # Never two partials in flight: any two requests that overlap in time include the one of
    # the whole utterance (the early transcription may run next to the last partial).
    for i, a in enumerate(on_requests):
        for b in on_requests[i + 1:]:
            if a.received_at < b.finished_at and b.received_at < a.finished_at:
                assert full_ms in (wav_ms(a.audio), wav_ms(b.audio))

    # Partials off: nothing is transcribed while the user speaks, no partial counted.
    assert all(r.received_at > off_speech_end - 0.2 for r in off_requests)
    assert off_stats.get("partial_asr_started", 0) == 0 and off_stats.get("partial_asr_reused", 0) == 0
