"""One reply: recognise -> think -> speak, owned by a single task that an interruption cancels.

Three stages run concurrently inside a turn:
  Responder (LLM + tools) -> item queue            (`_think`)
  item queue -> TTS / tool audio -> voice packets   (`_voice`; synthesizes ahead while we deliver)
  packet queue -> host.deliver_sentence/audio      (`_deliver`)
Everything reaches the user through the conversation's host (server/conversation/host.py), and
only while `turn.active`: once a turn is cancelled not one more packet of it is delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from server.conversation.metrics import TurnMetrics
from server.pipeline.emotion import DEFAULT_EMOTION, emotion_of
from server.pipeline.phrases import phrase
from server.pipeline.responder import Audio, EndSession, Item, Sentence
from server.providers.base import ProviderError

if TYPE_CHECKING:
    from server.conversation.conversation import Conversation

log = logging.getLogger("server.turn")

TurnKind = Literal["voice", "text", "wake", "phrase"]
TurnOutcome = Literal["", "done", "failed", "interrupted"]
# Bounded look-ahead: packets synthesized but not yet delivered (about 30 s of audio at 60 ms).
FRAME_QUEUE = 500
# What the voice stage hands the delivery stage: ("sentence", text) before a sentence's audio,
# ("text", text) for a sentence of a text-only host, ("frame", packet).
_Queued = tuple[str, Any]


@dataclass(eq=False)
class Turn:
    """One user turn and our reply. Read-only for endpoints, except `metrics` (delivery timings)."""

    conversation: Conversation
    id: int
    kind: TurnKind
    audio: bytes = b""  # PCM16 16 kHz for voice turns
    text: str = ""  # typed text, or the fixed phrase to say
    close_after: bool = False  # end the session once this turn has played
    metrics: TurnMetrics = field(default_factory=TurnMetrics)
    # The turn this one replaced: it is settled (recorded) before this one starts.
    previous: Turn | None = None
    started: bool = False  # the task has begun running (a task cancelled before that never runs)
    cancelled: bool = False
    finished: bool = False
    reply_started: bool = False  # host.reply_started was called
    reply_closed: bool = False  # host.reply_finished or reply_interrupted was called
    spoken: list[str] = field(default_factory=list)  # sentences delivered, in order
    user_text: str = ""
    outcome: TurnOutcome = ""
    error: str = ""  # why the turn failed (the user already heard an apology when it was a provider)
    task: asyncio.Task[None] | None = None
    # A transcription already started on this audio during the endpoint wait (early ASR).
    asr_task: asyncio.Task[Any] | None = None
    emotion_sent: bool = False
    # Speculation (server/session/speculation.py, Conversation.speculate): a turn started on the transcript of
    # the speech so far, before the end of the utterance is confirmed. Until `hold` is done it
    # thinks and synthesizes its first sentence, but nothing reaches the user, no tool runs and
    # nothing is remembered; a discarded one leaves no trace but counters.
    hold: asyncio.Future[None] | None = None
    held_emotion: str | None = None
    discarded: bool = False
    llm_chunks: int = 0  # streamed LLM text pieces (the waste of a discarded speculation)

    @property
    def active(self) -> bool:
        """Still the conversation's current turn and neither cancelled nor over."""
        return not self.cancelled and not self.finished and self.conversation.current_turn is self

    def cancel(self) -> None:
        """Stop now (synchronous). The conversation's `interrupt` also tells the host and waits."""
        if self.cancelled or self.finished:
            return
        self.cancelled = True
        self.metrics.interrupted = True
        # A task that has not started yet is left to start: it sees `cancelled` on entry and
        # still unwinds through run()'s finally (record, turn_ended) like any other.
        if self.task is not None and self.started and not self.task.done():
            self.task.cancel()
        if self.asr_task is not None:
            self.asr_task.cancel()

    async def wait_stopped(self, timeout: float) -> bool:
        """Wait until the turn's task has unwound (and so recorded what was said)."""
        if self.task is None or self.task.done() or self.task is asyncio.current_task():
            return True
        done, _ = await asyncio.wait({self.task}, timeout=timeout)
        return bool(done)

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        c = self.conversation
        self.started = True
        if self.kind == "text":
            self.user_text = self.text  # typed: said even if we never get to answer
        try:
            if self.previous is not None:
                await c.settle(self.previous, "replaced")
                self.previous = None  # do not keep a chain of old turns alive
            if self.cancelled:
                return
            if self.kind in ("phrase", "wake"):
                await self._say_fixed(self.text)
            else:
                text = await self._recognize() if self.kind == "voice" else self.text
                if text:
                    await self._answer(text)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failing turn must never take the session down
            self._fail(f"{type(exc).__name__}: {exc}")
            log.exception("[%s] turn %d failed", c.tag, self.id)
        finally:
            if not self.cancelled:
                await self._finish()
            self.finished = True
            self.outcome = "interrupted" if self.cancelled else ("failed" if self.error else "done")
            self._record()

    def _fail(self, error: str) -> None:
        self.error = error
        self.metrics.error = error

    async def _recognize(self) -> str:
        c = self.conversation
        try:
            if self.asr_task is not None:
                transcript = await self.asr_task
            else:
                transcript = await c.runtime.asr.transcribe(self.audio)
        except ProviderError as exc:
            self.metrics.asr_done = time.monotonic()
            self._fail(str(exc))
            log.warning("[%s] ASR failed: %s", c.tag, exc)
            await self._say_fixed(phrase("asr_failed", c.language))
            return ""
        self.metrics.asr_done = time.monotonic()
        text = transcript.text.strip()
        log.info("[%s] heard: %r (%.0f ms audio)", c.tag, text, len(self.audio) / 32)
        if not text:
            return ""
        if self.active and self.hold is None:
            await c.host.deliver_stt(self, text)
        return text

    @property
    def held(self) -> bool:
        return self.hold is not None and not self.hold.done()

    async def released(self) -> bool:
        """Wait until a speculative turn is confirmed (at once for any other turn); then settle
        the turn it replaced. False if it was cancelled instead."""
        if self.hold is not None and not self.hold.done():
            await self.hold
        if self.previous is not None:
            await self.conversation.settle(self.previous, "replaced")
            self.previous = None
        return not self.cancelled

    async def _hold_tools(self) -> None:
        await self.released()

    async def _answer(self, text: str) -> None:
        c = self.conversation
        self.user_text = text
        if self.kind == "text":
            self.metrics.asr_done = time.monotonic()
            if self.active:
                await c.host.deliver_stt(self, text)
        if c.is_exit_phrase(text):
            if not await self.released():
                return
            log.info("[%s] exit phrase %r: saying goodbye", c.tag, text)
            self.close_after = True
            await self._say_fixed(phrase("goodbye", c.language))
            return
        if self.hold is None:
            await self._start_reply()
        items: asyncio.Queue[Item | None] = asyncio.Queue()
        frames: asyncio.Queue[_Queued | None] = asyncio.Queue(maxsize=FRAME_QUEUE)
        think = asyncio.create_task(self._think(text, items), name=f"turn{self.id}-think")
        voice = asyncio.create_task(self._voice(items, frames), name=f"turn{self.id}-voice")
        try:
            if self.hold is not None:
                # Speculative: the LLM and the first sentence's TTS run meanwhile.
                if not await self.released():
                    return
                if self.kind == "voice" and self.active:
                    await c.host.deliver_stt(self, text)
                await self._start_reply()
                if self.held_emotion is not None:
                    await self._send_emotion(self.held_emotion)
            await self._deliver(frames)
            await think  # surface its exception, if any
            await voice
        finally:
            for task in (think, voice):
                task.cancel()
            await asyncio.gather(think, voice, return_exceptions=True)

    async def _think(self, text: str, items: asyncio.Queue[Item | None]) -> None:
        c = self.conversation
        responder = c.responder(on_first_token=self._mark_first_token)
        if self.hold is not None:
            responder.hold_tools = self._hold_tools  # tools may have side effects: not before
        said = 0
        try:
            messages = await c.build_messages(text)
            self.metrics.memory_ms = c.last_memory_ms
            async for item in responder.run(messages):
                if isinstance(item, Sentence):
                    if not item.text:
                        continue
                    if said == 0:
                        self.metrics.first_clause = time.monotonic()
                        await self._send_emotion(item.raw)
                    said += 1
                elif isinstance(item, EndSession):
                    self.close_after = True
                    continue
                items.put_nowait(item)
            if said == 0 and not self.close_after:
                log.warning("[%s] the LLM produced nothing speakable", c.tag)
        except ProviderError as exc:
            self._fail(str(exc))
            log.warning("[%s] LLM failed: %s", c.tag, exc)
            if said == 0:
                self.metrics.first_clause = time.monotonic()
                items.put_nowait(Sentence(phrase("llm_failed", c.language)))
        finally:
            self.llm_chunks = responder.stats.text_chunks
            self.metrics.tool_calls = responder.stats.tool_calls
            self.metrics.tool_ms = round(responder.stats.tool_seconds * 1000, 1)
            items.put_nowait(None)

    def _mark_first_token(self) -> None:
        if self.metrics.llm_first_token is None:
            self.metrics.llm_first_token = time.monotonic()

    async def _voice(self, items: asyncio.Queue[Item | None], frames: asyncio.Queue[_Queued | None]) -> None:
        c = self.conversation
        voice = c.host.voice
        sentences = 0
        try:
            while (item := await items.get()) is not None:
                if sentences and self.held and not await self.released():
                    break  # speculative: only the first sentence is synthesized before the end
                sentences += 1
                if isinstance(item, Audio):
                    await self._play_audio(item, frames)
                    continue
                assert isinstance(item, Sentence)
                if voice is None:
                    await frames.put(("text", item.text))
                    continue
                await frames.put(("sentence", item.text))
                try:
                    async for packet in voice.speak(item.text, on_first_chunk=self._mark_tts_chunk):
                        await frames.put(("frame", packet))
                except ProviderError as exc:
                    # One sentence lost is better than a stuck device: skip it, keep going.
                    self.metrics.error = str(exc)
                    log.warning("[%s] TTS failed on %r: %s", c.tag, item.text[:40], exc)
        finally:
            await frames.put(None)

    async def _play_audio(self, item: Audio, frames: asyncio.Queue[_Queued | None]) -> None:
        """Audio a tool returned (music): encode and queue it like speech. The bounded frame
        queue makes decoding follow playback instead of loading a whole song into memory."""
        c = self.conversation
        voice = c.host.voice
        try:
            if voice is None:
                log.info("[%s] a tool returned audio; this endpoint plays none", c.tag)
                return
            async for packet in voice.encode_stream(item.chunks, item.sample_rate):
                self._mark_tts_chunk()
                await frames.put(("frame", packet))
        except Exception as exc:  # noqa: BLE001 - a broken file ends the song, not the session
            log.warning("[%s] audio from a tool failed: %s", c.tag, exc)
        finally:
            close = getattr(item.chunks, "aclose", None)  # async generators have it, iterators may not
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()

    def _mark_tts_chunk(self) -> None:
        if self.metrics.tts_first_chunk is None:
            self.metrics.tts_first_chunk = time.monotonic()

    async def _deliver(self, frames: asyncio.Queue[_Queued | None]) -> None:
        host = self.conversation.host
        pending_sentence: str | None = None
        while (item := await frames.get()) is not None:
            kind, value = item
            if kind == "sentence":
                pending_sentence = str(value)
                continue
            if kind == "text":
                if not self.active:
                    return
                await self._deliver_sentence(str(value))
                continue
            if pending_sentence is not None:
                # The sentence goes out right before its first packet, so a subtitle matches what
                # is playing and history counts only what was delivered.
                if not self.active:
                    return
                await self._deliver_sentence(pending_sentence)
                pending_sentence = None
            if not self.active or not await host.deliver_audio(self, value):
                return

    async def _deliver_sentence(self, text: str) -> None:
        await self.conversation.host.deliver_sentence(self, text)
        self.spoken.append(text)

    async def _say_fixed(self, text: str) -> None:
        if not text:
            return
        c = self.conversation
        await self._start_reply()
        if self.metrics.first_clause is None:
            self.metrics.first_clause = time.monotonic()
        voice = c.host.voice
        packets: list[bytes] = []
        if voice is not None:
            try:
                packets = await voice.phrase_frames(text)
            except ProviderError as exc:
                log.warning("[%s] cannot say %r: %s", c.tag, text, exc)
                return
        self._mark_tts_chunk()
        await self._send_emotion("")
        if not self.active:
            return
        await self._deliver_sentence(text)
        for packet in packets:
            if not self.active or not await c.host.deliver_audio(self, packet):
                return

    async def _start_reply(self) -> None:
        if not self.reply_started and self.active:
            self.reply_started = True
            await self.conversation.host.reply_started(self)

    async def _send_emotion(self, raw: str) -> None:
        if self.emotion_sent:
            return
        if self.held:
            self.held_emotion = raw  # sent once the speculation is confirmed
            return
        self.emotion_sent = True
        if self.active:
            await self.conversation.host.deliver_emotion(self, emotion_of(raw) or DEFAULT_EMOTION)

    async def _finish(self) -> None:
        """Normal end: the host waits until the last packet has played, then closes the reply."""
        if self.reply_started and not self.reply_closed and self.active:
            # Closed only once the host is done: an interruption during the playback wait still
            # tells the host (reply_interrupted), which then stops the reply itself.
            await self.conversation.host.reply_finished(self)
            self.reply_closed = True

    def _record(self) -> None:
        m = self.metrics
        c = self.conversation
        if self.hold is not None and (self.discarded or not self.hold.done()):
            # A discarded speculation: not said, not heard, not remembered; only its cost counts.
            self.discarded = True
            c.runtime.metrics.count("speculation_discarded")
            c.runtime.metrics.count("speculation_wasted_llm_chunks", self.llm_chunks)
            log.info("[%s] speculative turn %d discarded (%d LLM chunks wasted)", c.tag, self.id, self.llm_chunks)
            return
        if self.hold is not None:
            c.runtime.metrics.count("speculation_used")
        if self.user_text or (self.spoken and self.kind != "phrase"):
            c.remember(self.user_text, " ".join(self.spoken), interrupted=self.cancelled)
        c.runtime.metrics.record(m)
        stages = {k: v for k, v in m.stages_ms().items() if v is not None}
        log.info("[%s] turn %d %s%s frames=%d %s", c.tag, self.id, self.kind,
                 " (interrupted)" if m.interrupted else "", m.frames_sent,
                 " ".join(f"{k}={v:.0f}ms" for k, v in stages.items()))
