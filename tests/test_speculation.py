"""Speculative turns, end to end: the real server, the fake OpenAI server on 127.0.0.1 as LLM and
ASR (OpenAI wire format, the real `openai` providers), Piper TTS, and the firmware-faithful
simulated device speaking espeak-ng speech as paced Opus.

* A question followed by silence: the LLM request leaves during the silence window (before the
  server decided the utterance was over), and the speculation is used.
* A question with a pause in the middle longer than the early-ASR delay: the reply started on
  the first half is thrown away; the device gets exactly one reply (one `stt`, one `tts start`,
  no audio before the end of the whole question), the tool the speculative reply asked for is
  never run, and the history the next request carries holds the question once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from harness.devsim import SimDevice, silence, synthesize_speech
from harness.devsim.server_process import ServerProcess, start_server
from harness.fakes.openai_server import ChatReply, FakeOpenAIServer, ToolCallSpec, TranscriptionReply

pytestmark = pytest.mark.e2e

TOOL = "self_audio_speaker_set_volume"


@pytest.fixture(scope="module")
async def fake() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer() as server:
        yield server


@pytest.fixture(scope="module")
async def spec_server(fake: FakeOpenAIServer) -> AsyncIterator[ServerProcess]:
    overrides = {
        "llm": {"type": "openai", "base_url": fake.base_url, "api_key": "", "model": "fake-model"},
        "asr": {"type": "openai", "base_url": fake.base_url, "api_key": "", "model": "fake-whisper",
                "language": "en"},
        # A fixed 1 s window (no adaptive end; room for a slow machine) and early ASR at 100 ms.
        # No partials: the scripted transcripts are for the early transcriptions alone
        # (partials: tests/test_partials.py).
        "vad": {"type": "silero", "min_silence_ms": 1000, "early_asr_ms": 100, "adaptive_end": False,
                "speculate": True, "partial_asr_ms": 0},
        "intent": {"mode": "function_call"},
    }
    async with start_server(overrides) as proc:
        yield proc


async def counters(proc: ServerProcess) -> dict[str, int]:
    async with aiohttp.ClientSession() as s, s.get(proc.http_url + "/metrics") as r:
        return dict((await r.json())["counters"])


async def turns(proc: ServerProcess) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(proc.http_url + "/metrics") as r:
        return list((await r.json())["turns"])


def delta(after: dict[str, int], before: dict[str, int], key: str) -> int:
    return after.get(key, 0) - before.get(key, 0)


async def test_reply_starts_inside_the_silence_window(spec_server: ServerProcess, fake: FakeOpenAIServer) -> None:
    fake.reset()
    fake.transcription_script.append(TranscriptionReply(text="What is the capital of France?"))
    fake.chat_script.append(ChatReply(text="Paris is the capital of France.", ttft_s=0.3, chunk_delay_s=0.02))
    before = await counters(spec_server)
    dev = SimDevice()
    await dev.connect(url=spec_server.ws_url)
    try:
        result = await dev.ask_audio(await synthesize_speech("What is the capital of France?"), timeout=30)
    finally:
        await dev.close()
    assert result.completed and result.stt_text == "What is the capital of France?"
    assert result.t_first_audio is not None
    after = await counters(spec_server)
    assert delta(after, before, "speculation_started") == 1
    assert delta(after, before, "speculation_used") == 1
    assert delta(after, before, "speculation_discarded") == 0
    chat = fake.chat_requests()
    assert len(chat) == 1
    mine = [t for t in await turns(spec_server) if t["device_id"] == dev.identity.mac and t["kind"] == "voice"]
    assert len(mine) == 1 and mine[0]["endpoint"] is not None
    # The LLM was asked before the server decided the utterance was over: inside the window.
    assert chat[0].received_at < mine[0]["endpoint"]
    # The device heard nothing before the end of its speech plus the window's start.
    assert result.t_input_end is not None and result.t_first_audio > result.t_input_end


async def test_user_going_on_discards_the_speculation(spec_server: ServerProcess, fake: FakeOpenAIServer) -> None:
    fake.reset()
    # First (speculative) transcript: the first half; it answers with a tool call, which must
    # be held and then dropped. The final transcript gets a plain answer.
    fake.transcription_script.append(TranscriptionReply(text="Set the volume"))
    fake.default_transcript = "Set the volume to thirty please"  # every later transcription
    fake.chat_script += [ChatReply(tool_calls=[ToolCallSpec(TOOL, {"volume": 80})], ttft_s=0.05),
                         ChatReply(text="Done, the volume is thirty.", ttft_s=0.05)]
    before = await counters(spec_server)
    dev = SimDevice()
    await dev.connect(url=spec_server.ws_url)
    try:
        await dev.listen_start("auto")
        first = await synthesize_speech("Set the volume")
        second = await synthesize_speech("to thirty please")
        # 420 ms of pause: the early ASR (after 100 ms) and the speculative LLM round start,
        # the 1 s window does not close.
        streaming = asyncio.create_task(dev.stream_audio(first + silence(420) + second + silence(1500),
                                                         stop_when_mic_off=True))
        stop = await dev.wait_for(lambda e: e.is_msg("tts", "stop"), 30)
        await asyncio.sleep(0.3)
        streaming.cancel()
        await asyncio.gather(streaming, return_exceptions=True)
        events = list(dev.events)
    finally:
        await dev.close()
    after = await counters(spec_server)
    assert delta(after, before, "speculation_started") >= 1
    assert delta(after, before, "speculation_discarded") >= 1
    # The reply that was spoken: the speculation on the whole question (or a normal turn).
    assert delta(after, before, "speculation_used") <= 1
    stts = [e.get("text") for e in events if e.is_msg("stt")]
    assert stts == ["Set the volume to thirty please"]
    assert sum(1 for e in events if e.is_msg("tts", "start")) == 1
    assert stop.t > 0
    # The held tool call never ran on the device.
    assert dev.mcp.calls == []
    # The answered request carries the final question once and nothing of the first half.
    chat = fake.chat_requests()
    answered = chat[-1].body["messages"]
    users = [m["content"] for m in answered if m.get("role") == "user"]
    assert users[-1] == "Set the volume to thirty please"
    assert "Set the volume" not in users[:-1]
    assert not any(m.get("role") == "tool" for m in answered)
    texts = json.dumps(answered)
    assert "80" not in texts


async def test_each_turn_reports_what_speculation_did(spec_server: ServerProcess, fake: FakeOpenAIServer) -> None:
    """The two questions above, as the turns /metrics lists: the first answered by its
    speculation, the second after one was thrown away (its wasted LLM pieces counted)."""
    voice = [t for t in await turns(spec_server) if t["kind"] == "voice" and not t["error"]]
    assert len(voice) >= 2
    first, second = voice[-2], voice[-1]
    assert (first["speculations_started"], first["speculative"], first["speculations_discarded"]) == (1, True, 0)
    assert first["speculation_wasted_llm_chunks"] == 0
    assert second["speculations_started"] >= 1 and second["speculations_discarded"] >= 1
    assert second["speculations_started"] == second["speculations_discarded"] + int(second["speculative"])
