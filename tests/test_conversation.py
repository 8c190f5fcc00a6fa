"""The conversation core with no socket: an in-memory endpoint drives whole conversations.

The endpoint here is a second `ConversationHost` next to the board session: it records every
call, plays our voice as PCM16 (not Opus) through the real pacer on a virtual clock, and has a
device tool of its own. Providers are scripted (they are the boundary being faked: an LLM that
streams what the test says, an ASR that hears what the test says, a TTS that makes 120 ms of
PCM per word); the memory store is the real SQLite one. No subprocess, no network, no Whisper.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.clock import VirtualClock
from server.audio.voice import PcmVoice, Voice
from server.config.schema import AppConfig
from server.conversation import Conversation, Turn
from server.memory.manager import MemoryConfig, MemoryManager
from server.memory.store import SqliteMemoryStore
from server.providers.base import AudioChunk, LLMDelta, LLMRequest, ProviderError, ToolCall, Transcript
from server.runtime import Services
from server.session.barge_in import BARGE_IN_MS, should_barge_in
from server.session.output import PacedOutput
from server.tools.base import ToolContext, ToolResult, ToolSpec

RATE = 16000
HANG = object()  # in an LLM script: stop streaming here until cancelled


class ScriptedLLM:
    name = "llm.scripted"
    local = False
    streaming = True
    supports_tools = True

    def __init__(self) -> None:
        self.rounds: deque[list[Any]] = deque()
        self.requests: list[LLMRequest] = []
        self.requested = asyncio.Event()

    async def wait_requests(self, n: int) -> None:
        while len(self.requests) < n:
            self.requested.clear()
            await asyncio.wait_for(self.requested.wait(), 5)

    def set_language(self, language: str) -> None:
        pass

    async def load(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def stream(self, request: LLMRequest) -> AsyncIterator[LLMDelta]:
        self.requests.append(request)
        self.requested.set()
        for step in self.rounds.popleft() if self.rounds else [LLMDelta(text="Okay.")]:
            if step is HANG:
                await asyncio.Event().wait()
            if isinstance(step, Exception):
                raise step
            yield step


class ScriptedASR:
    name = "asr.scripted"
    local = False
    cheap_partials = False

    def __init__(self) -> None:
        self.heard: deque[str] = deque()

    async def load(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def transcribe(self, pcm: bytes, sample_rate: int = RATE) -> Transcript:
        assert pcm, "a voice turn must hand its audio to the ASR"
        return Transcript(self.heard.popleft())


class WordTTS:
    """120 ms of a 16 kHz tone per word: real PCM, a length the test can count."""

    name = "tts.words"
    local = False

    async def load(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def synthesize(self, text: str) -> AsyncIterator[AudioChunk]:
        for _ in text.split():
            yield AudioChunk(b"\x10\x00\xf0\xff" * (RATE * 120 // 1000 // 2), RATE)


class NoVAD:
    """The core never uses VAD (a board's uplink does); the runtime still has a slot for it."""

    name = "vad.none"

    async def load(self) -> None:
        pass

    async def close(self) -> None:
        pass


class SpeakerTools:
    """A device's own tools, like a Xiaomi speaker's volume."""

    name = "speaker"
    ready = True

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def wait_ready(self, timeout: float) -> bool:
        return True

    def specs(self) -> list[ToolSpec]:
        return [ToolSpec("set_volume", "Set the speaker volume. Level 0-100.",
                         {"type": "object", "properties": {"level": {"type": "integer"}}, "required": ["level"]})]

    async def call(self, ctx: ToolContext, name: str, arguments: dict[str, Any]) -> ToolResult:
        self.calls.append((name, arguments))
        return ToolResult(text=f"volume is now {arguments['level']}")


@dataclass(eq=False)
class MemoryEndpoint:
    """A ConversationHost that keeps everything in lists. `voice=None` makes it text-only."""

    voice: Voice | None
    clock: VirtualClock = field(default_factory=VirtualClock)
    events: list[tuple[str, int, Any]] = field(default_factory=list)
    audio: dict[int, int] = field(default_factory=dict)  # turn id -> PCM bytes delivered
    ended: list[Turn] = field(default_factory=list)
    session_ended: str = ""
    sentence_seen: asyncio.Event = field(default_factory=asyncio.Event)
    output: PacedOutput = field(init=False)

    def __post_init__(self) -> None:
        self.output = PacedOutput(self._play, frame_ms=240, prebuffer=2, clock=self.clock, sleep=self.clock.sleep)

    async def _play(self, packet: bytes) -> None:
        pass

    def names(self, turn: Turn | None = None) -> list[str]:
        return [name for name, tid, _ in self.events if turn is None or tid == turn.id]

    def log(self, name: str, turn: Turn, value: Any = None) -> None:
        self.events.append((name, turn.id, value))

    async def deliver_stt(self, turn: Turn, text: str) -> None:
        self.log("stt", turn, text)

    async def reply_started(self, turn: Turn) -> None:
        self.log("reply_started", turn)

    async def deliver_emotion(self, turn: Turn, emotion: str) -> None:
        self.log("emotion", turn, emotion)

    async def deliver_sentence(self, turn: Turn, text: str) -> None:
        self.log("sentence", turn, text)
        self.sentence_seen.set()

    async def deliver_audio(self, turn: Turn, packet: bytes) -> bool:
        if not await self.output.send_frame(turn, packet):
            return False
        if not self.names(turn) or self.names(turn)[-1] != "audio":
            self.log("audio", turn)
        self.audio[turn.id] = self.audio.get(turn.id, 0) + len(packet)
        return True

    async def reply_finished(self, turn: Turn) -> None:
        await self.output.wait_played(turn)
        self.log("reply_finished", turn)

    async def reply_interrupted(self, turn: Turn, why: str) -> None:
        self.output.reset()
        self.log("reply_interrupted", turn, why)

    async def turn_ended(self, turn: Turn) -> None:
        self.log("turn_ended", turn, turn.outcome)
        self.ended.append(turn)

    async def end_session(self, reason: str) -> None:
        self.session_ended = reason


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Services]:
    store = SqliteMemoryStore(tmp_path / "memory.sqlite3")
    await store.open()
    llm = ScriptedLLM()
    services = Services(config=AppConfig(), root_dir=tmp_path, vad=NoVAD(), asr=ScriptedASR(), llm=llm,  # type: ignore[arg-type]
                        tts=WordTTS(), codec_pool=concurrent.futures.ThreadPoolExecutor(max_workers=1))
    # A board and a speaker of one household share one memory.
    services.memory = MemoryManager(MemoryConfig(identities={"board-1": "alice", "speaker-1": "alice"}), store,
                                    llm, "en")
    services._closers.append(store.close)
    yield services
    await services.close()


def pcm_voice(runtime: Services) -> PcmVoice:
    return PcmVoice(runtime.tts, RATE, runtime.codec_pool)


async def done(turn: Turn) -> Turn:
    assert turn.task is not None
    await asyncio.wait_for(asyncio.shield(turn.task), 5)
    return turn


def llm(runtime: Services) -> ScriptedLLM:
    assert isinstance(runtime.llm, ScriptedLLM)
    return runtime.llm


def asr(runtime: Services) -> ScriptedASR:
    assert isinstance(runtime.asr, ScriptedASR)
    return runtime.asr


def history(conv: Conversation) -> list[tuple[str, str, bool]]:
    return [(e.user, e.assistant, e.interrupted) for e in conv.dialogue.exchanges]


async def test_a_whole_conversation_in_memory(runtime: Services) -> None:
    host = MemoryEndpoint(pcm_voice(runtime))
    conv = Conversation(runtime, host, "board-1")
    tools = SpeakerTools()
    conv.set_device_tools(tools)
    conv.open()

    # A typed turn: stt echo, reply, one sentence with its audio, finished after playback.
    llm(runtime).rounds.append([LLMDelta(text="😂 Hello there. "), LLMDelta(text="I am right here, ready to help.")])
    typed = await done(conv.ask("Hi"))
    assert typed.outcome == "done"
    assert host.names(typed) == ["stt", "reply_started", "emotion", "sentence", "audio", "sentence", "audio",
                                 "reply_finished", "turn_ended"]
    assert typed.spoken == ["Hello there.", "I am right here, ready to help."]
    assert ("emotion", typed.id, "laughing") in host.events
    assert host.audio[typed.id] == 2 * RATE * 120 // 1000 * 9  # nine words of 120 ms, PCM16
    # The device's own tool is offered to the model and described in the prompt.
    first = llm(runtime).requests[0]
    assert "set_volume" in {t["function"]["name"] for t in first.tools}
    assert any("Set the speaker volume" in m.content for m in first.messages if m.role == "system")

    # A spoken turn with a device tool call: the tool runs, its result goes back to the model.
    asr(runtime).heard.append("Turn it down to 30")
    llm(runtime).rounds.extend([[LLMDelta(tool_calls=[ToolCall("c1", "set_volume", '{"level": 30}')])],
                                [LLMDelta(text="Done, the volume is 30.")]])
    spoken = await done(conv.hear(b"\x01\x00" * RATE))
    assert ("stt", spoken.id, "Turn it down to 30") in host.events
    assert tools.calls == [("set_volume", {"level": 30})]
    tool_msgs = [m for m in llm(runtime).requests[-1].messages if m.role == "tool"]
    assert tool_msgs[-1].content == "volume is now 30"
    assert spoken.spoken == ["Done, the volume is 30."] and spoken.metrics.tool_calls == 1

    # Abort in the middle of a reply: the host is told at once, and when interrupt() returns the
    # turn has recorded exactly what was said, marked interrupted.
    llm(runtime).rounds.append([LLMDelta(text="Once upon a time. "), HANG])
    host.sentence_seen.clear()
    story = conv.ask("Tell me a story")
    await asyncio.wait_for(host.sentence_seen.wait(), 5)
    assert await conv.interrupt("abort") is True
    assert story.finished and story.outcome == "interrupted"
    assert ("reply_interrupted", story.id, "abort") in host.events
    assert "reply_finished" not in host.names(story)
    assert history(conv)[-1] == ("Tell me a story", "Once upon a time.", True)

    # Barge-in by a new utterance while a reply plays: the old reply is stopped on the host
    # before the new one starts, and recorded before the new turn builds its prompt.
    llm(runtime).rounds.append([LLMDelta(text="Let me think about that. "), HANG])
    host.sentence_seen.clear()
    old = conv.ask("What is the meaning of life?")
    await asyncio.wait_for(host.sentence_seen.wait(), 5)
    asr(runtime).heard.append("Never mind")
    llm(runtime).rounds.append([LLMDelta(text="Sure.")])
    new = await done(conv.hear(b"\x02\x00" * RATE))
    order = [(n, t) for n, t, _ in host.events if t in (old.id, new.id)]
    assert order.index(("reply_interrupted", old.id)) < order.index(("reply_started", new.id))
    assert ("reply_interrupted", old.id, "replaced") in host.events
    prompt = [(m.role, m.content) for m in llm(runtime).requests[-1].messages]
    assert ("assistant", "Let me think about that.…") in prompt  # cut off: no marker to copy
    assert history(conv)[-2:] == [("What is the meaning of life?", "Let me think about that.", True),
                                  ("Never mind", "Sure.", False)]

    # An exit phrase: goodbye, then the conversation asks its endpoint to end the session.
    bye = await done(conv.ask("goodbye"))
    assert bye.spoken == ["Goodbye, talk to you soon."] and host.session_ended == "conversation ended"
    await conv.close()
    assert runtime.memory is not None
    await runtime.memory.drain()

    # A second conversation of the same user (a speaker mapped to the same identity) starts
    # with the first one's history in its prompt.
    host2 = MemoryEndpoint(None)
    conv2 = Conversation(runtime, host2, "speaker-1")
    conv2.open()
    await done(conv2.ask("What did I ask you to do?"))
    prompt = [(m.role, m.content) for m in llm(runtime).requests[-1].messages]
    assert ("user", "Never mind") in prompt and ("assistant", "Sure.") in prompt
    assert conv2.user_id == conv.user_id == "alice"
    await conv2.close()


async def test_text_only_endpoint_gets_each_sentence_as_it_is_ready(runtime: Services) -> None:
    """An endpoint that speaks by itself (voice=None): no TTS runs, sentences arrive one by one."""
    host = MemoryEndpoint(None)
    conv = Conversation(runtime, host, "speaker-1")
    conv.open()
    gate = asyncio.Event()

    async def slow_second_sentence(request: LLMRequest) -> AsyncIterator[LLMDelta]:
        yield LLMDelta(text="First part. ")
        await gate.wait()
        yield LLMDelta(text="Second part.")

    llm(runtime).stream = slow_second_sentence  # type: ignore[method-assign]
    turn = conv.ask("Two things please")
    await asyncio.wait_for(host.sentence_seen.wait(), 5)
    assert [v for n, _, v in host.events if n == "sentence"] == ["First part."]  # before the LLM is done
    gate.set()
    await done(turn)
    assert [v for n, _, v in host.events if n == "sentence"] == ["First part.", "Second part."]
    assert "audio" not in host.names() and turn.outcome == "done"
    await conv.close()


async def test_a_failed_turn_apologizes_and_says_so(runtime: Services) -> None:
    host = MemoryEndpoint(None)
    conv = Conversation(runtime, host, "speaker-1")
    conv.open()
    llm(runtime).rounds.append([ProviderError("llm.scripted", "boom")])
    turn = await done(conv.ask("Hello?"))
    assert turn.outcome == "failed" and "boom" in turn.error
    assert [v for n, _, v in host.events if n == "sentence"] == [
        "Sorry, my brain is not answering right now. Please try again in a moment."]
    assert host.names()[-1] == "turn_ended"
    await conv.close()


async def test_replacements_record_in_the_order_they_were_said(runtime: Services) -> None:
    """Typed turns each replacing the last (some before their task even ran, some while
    thinking): history holds them in order, the replaced ones marked interrupted, and each
    replaced reply was stopped on the host before the next one started."""
    host = MemoryEndpoint(pcm_voice(runtime))
    conv = Conversation(runtime, host, "board-1")
    conv.open()
    llm(runtime).rounds.extend([[HANG], [HANG], [LLMDelta(text="Fourth answer.")]])
    conv.ask("one")  # replaced before its task ran: never reaches the LLM
    conv.ask("two")
    await llm(runtime).wait_requests(1)
    conv.ask("three")
    await llm(runtime).wait_requests(2)
    fourth = await done(conv.ask("four"))
    assert history(conv) == [("one", "", True), ("two", "", True), ("three", "", True),
                             ("four", "Fourth answer.", False)]
    asked = [m.content for m in llm(runtime).requests[-1].messages if m.role == "user"]
    assert asked == ["one", "two", "three", "four"]
    stopped = [t for n, t, _ in host.events if n == "reply_interrupted"]
    assert stopped == [2, 3]
    for old in stopped:
        stop = host.events.index(("reply_interrupted", old, "replaced"))
        assert stop < host.events.index(("reply_started", old + 1, None))
    assert fourth.outcome == "done"
    await conv.close()


def test_barge_in_needs_realtime_mode_a_reply_and_enough_speech() -> None:
    assert should_barge_in("realtime", True, BARGE_IN_MS)
    assert not should_barge_in("realtime", True, BARGE_IN_MS - 1)
    assert not should_barge_in("auto", True, 5000)
    assert not should_barge_in("realtime", False, 5000)
