"""The board session as one endpoint of the conversation core, driven in-process: a
`Connection` that records frames instead of a socket, scripted LLM/ASR, our Opus voice over a
word-per-120-ms TTS. It checks the xiaozhi wire contract of turn replacement and abort."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.config.schema import AppConfig
from server.protocol import Hello, Listen, Message, Tts, decode_message, encode_message
from server.providers.base import LLMDelta, ProviderContext
from server.providers.vad.silero import SileroSettings, SileroVAD
from server.runtime import Services
from server.session.device import DeviceInfo
from server.session.session import Session
from tests.test_conversation import HANG, ScriptedASR, ScriptedLLM, WordTTS


class RecordingConnection:
    def __init__(self) -> None:
        self.texts: list[Message] = []
        self.frames: list[bytes] = []
        self.changed = asyncio.Event()
        self.closed: tuple[int, str] | None = None
        self.gate: asyncio.Event | None = None  # when set: text sends wait for it
        self.incoming: asyncio.Queue[str | None] = asyncio.Queue()  # what the session receives

    async def send_text(self, text: str) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.texts.append(decode_message(text))  # every message must parse as the protocol says
        self.changed.set()

    async def send_binary(self, data: bytes) -> None:
        self.frames.append(data)
        self.changed.set()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)

    def tts(self) -> list[str]:
        return [m.state for m in self.texts if isinstance(m, Tts) and m.state != "sentence_start"]

    async def until(self, predicate: object) -> None:
        while not predicate():  # type: ignore[operator]
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 5)


@pytest.fixture
async def session(tmp_path: Path) -> AsyncIterator[tuple[Session, RecordingConnection, ScriptedLLM]]:
    ctx = ProviderContext(tmp_path, tmp_path, tmp_path)
    llm = ScriptedLLM()
    # The real VAD provider, not loaded: these turns are typed, so it never runs.
    services = Services(config=AppConfig(), root_dir=tmp_path, vad=SileroVAD(SileroSettings(), ctx),
                        asr=ScriptedASR(), llm=llm, tts=WordTTS(),  # type: ignore[arg-type]
                        codec_pool=concurrent.futures.ThreadPoolExecutor(max_workers=1))
    conn = RecordingConnection()
    s = Session(services, conn, DeviceInfo(device_id="aa:bb:cc:dd:ee:ff"))
    incoming = conn.incoming

    async def frames() -> AsyncIterator[str]:
        while (item := await incoming.get()) is not None:
            yield item

    runner = asyncio.create_task(s.run(frames()))
    incoming.put_nowait(encode_message(Hello(version=1, transport="websocket")))
    await conn.until(lambda: any(isinstance(m, Hello) for m in conn.texts))
    yield s, conn, llm
    incoming.put_nowait(None)
    await asyncio.wait_for(runner, 5)
    await services.close()


async def type_text(s: Session, text: str) -> None:
    await s.on_text(encode_message(Listen(state="detect", text=text)))


async def test_a_replaced_turn_gets_its_tts_stop_before_the_next_tts_start(session) -> None:
    s, conn, llm = session
    llm.rounds.extend([[LLMDelta(text="Let me tell you a long story. "), HANG], [LLMDelta(text="Okay then.")]])
    await type_text(s, "Tell me a story")
    await conn.until(lambda: len(conn.frames) > 0)
    await type_text(s, "Stop, tell me something else")
    await conn.until(lambda: conn.tts().count("stop") == 2)
    assert conn.tts() == ["start", "stop", "start", "stop"]
    hello = next(m for m in conn.texts if isinstance(m, Hello))
    assert all(m.session_id == hello.session_id == s.session_id for m in conn.texts)
    exchanges = s.conversation.dialogue.exchanges
    assert [(e.user, e.interrupted) for e in exchanges] == [("Tell me a story", True),
                                                            ("Stop, tell me something else", False)]


async def test_abort_answers_one_tts_stop_with_or_without_a_reply(session) -> None:
    s, conn, llm = session
    await s.on_text('{"type":"abort"}')
    assert conn.tts() == ["stop"]  # nothing was playing: the firmware still needs its stop
    llm.rounds.append([LLMDelta(text="A reply that will be cut. "), HANG])
    await type_text(s, "Talk to me")
    await conn.until(lambda: len(conn.frames) > 0)
    await s.on_text('{"type":"abort","reason":"wake_word_detected"}')
    assert conn.tts() == ["stop", "start", "stop"]  # stopped exactly once, before abort returned
    sent = len(conn.frames)
    await asyncio.sleep(0.1)
    assert len(conn.frames) == sent  # and not one more frame of it


async def test_audio_is_taken_from_the_socket_only_while_the_receive_loop_waits(session) -> None:
    """Session.take_audio_frame (audio handed over from the socket callback) must keep the order
    frames came in: while the receive loop is still handling a message, a frame is refused and
    takes the queue behind it."""
    s, conn, _ = session
    packet = b"\x08" + bytes(60)  # an Opus packet (v1 framing: the frame is the packet)
    assert s.take_audio_frame(packet)  # the loop waits: handled now
    conn.gate = asyncio.Event()
    conn.incoming.put_nowait('{"type":"ping"}')  # its pong waits at the gate
    await asyncio.sleep(0.05)
    assert not s.take_audio_frame(packet)  # mid-message: left to the loop, in order
    conn.gate.set()
    await conn.until(lambda: any(m.TYPE == "pong" for m in conn.texts))
    await asyncio.sleep(0)
    assert s.take_audio_frame(packet)
