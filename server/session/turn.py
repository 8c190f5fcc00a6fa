"""One reply: recognise -> think -> speak, owned by a single task that an abort cancels.

Three stages run concurrently inside a turn:
  Responder (LLM + tools) -> item queue         (`_think`)
  item queue -> TTS / tool audio -> Opus frames  (`_voice`; synthesizes ahead while we send)
  frame queue -> paced send                      (`_send`)
Everything the turn sends goes through `Session` helpers that check `turn.active`, so once a
turn is cancelled not one more frame of it reaches the device.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from server.pipeline.emotion import DEFAULT_EMOTION, emoji_for, reply_emotion
from server.pipeline.phrases import phrase
from server.pipeline.responder import Audio, EndSession, Item, Sentence
from server.providers.base import ProviderError
from server.session.metrics import TurnMetrics

if TYPE_CHECKING:
    from server.session.session import Session

log = logging.getLogger("server.turn")

TurnKind = Literal["voice", "text", "wake", "phrase"]
# Bounded look-ahead: frames synthesized but not yet sent (about 30 s of audio at 60 ms).
FRAME_QUEUE = 500


@dataclass(eq=False)
class Turn:
    session: Session
    id: int
    kind: TurnKind
    audio: bytes = b""  # PCM16 16 kHz for voice turns
    text: str = ""  # typed text, or the fixed phrase to say
    close_after: bool = False  # end the session once this turn has played
    metrics: TurnMetrics = field(default_factory=TurnMetrics)
    cancelled: bool = False
    finished: bool = False
    tts_started: bool = False
    tts_stopped: bool = False
    spoken: list[str] = field(default_factory=list)
    user_text: str = ""
    task: asyncio.Task[None] | None = None
    # A transcription already started on this audio during the endpoint wait (early ASR).
    asr_task: asyncio.Task[Any] | None = None
    emotion_sent: bool = False

    @property
    def active(self) -> bool:
        return not self.cancelled and not self.finished and self.session.current_turn is self

    def cancel(self) -> None:
        """Stop now. The caller (abort / barge-in) sends `tts stop` itself, immediately."""
        if self.cancelled or self.finished:
            return
        self.cancelled = True
        self.metrics.interrupted = True
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.asr_task is not None:
            self.asr_task.cancel()

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        s = self.session
        try:
            if self.kind in ("phrase", "wake"):
                await self._say_fixed(self.text)
            else:
                text = await self._recognize() if self.kind == "voice" else self.text
                if text:
                    await self._answer(text)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failing turn must never take the session down
            self.metrics.error = f"{type(exc).__name__}: {exc}"
            log.exception("[%s] turn %d failed", s.tag, self.id)
        finally:
            if not self.cancelled:
                await self._finish()
            self.finished = True
            self._record()

    async def _recognize(self) -> str:
        s = self.session
        try:
            if self.asr_task is not None:
                transcript = await self.asr_task
            else:
                transcript = await s.services.asr.transcribe(self.audio)
        except ProviderError as exc:
            self.metrics.asr_done = time.monotonic()
            self.metrics.error = str(exc)
            log.warning("[%s] ASR failed: %s", s.tag, exc)
            await self._say_fixed(phrase("asr_failed", s.language))
            return ""
        self.metrics.asr_done = time.monotonic()
        text = transcript.text.strip()
        log.info("[%s] heard: %r (%.0f ms audio)", s.tag, text, len(self.audio) / 32)
        if not text:
            return ""
        await s.send_json_turn(self, {"type": "stt", "text": text})
        return text

    async def _answer(self, text: str) -> None:
        s = self.session
        # A wake word is not a question: alone it starts nothing; in front of one it is dropped.
        rest = s.wake_words.strip_leading(text)
        if not rest:
            log.info("[%s] %r is only a wake word: not answered", s.tag, text)
            return
        text = rest
        self.user_text = text
        if self.kind == "text":
            self.metrics.asr_done = time.monotonic()
            await s.send_json_turn(self, {"type": "stt", "text": text})
        if s.is_exit_phrase(text):
            log.info("[%s] exit phrase %r: saying goodbye", s.tag, text)
            self.close_after = True
            await self._say_fixed(phrase("goodbye", s.language))
            return
        await self._start_tts()
        items: asyncio.Queue[Item | None] = asyncio.Queue()
        frames: asyncio.Queue[tuple[str, bytes | str] | None] = asyncio.Queue(maxsize=FRAME_QUEUE)
        think = asyncio.create_task(self._think(text, items), name=f"turn{self.id}-think")
        voice = asyncio.create_task(self._voice(items, frames), name=f"turn{self.id}-voice")
        try:
            await self._send(frames)
            await think  # surface its exception, if any
            await voice
        finally:
            for task in (think, voice):
                task.cancel()
            await asyncio.gather(think, voice, return_exceptions=True)

    async def _think(self, text: str, items: asyncio.Queue[Item | None]) -> None:
        s = self.session
        responder = s.responder(on_first_token=self._mark_first_token)
        said = 0
        try:
            messages = await s.build_messages(text)
            self.metrics.memory_ms = s.last_memory_ms
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
                log.warning("[%s] the LLM produced nothing speakable", s.tag)
        except ProviderError as exc:
            self.metrics.error = str(exc)
            log.warning("[%s] LLM failed: %s", s.tag, exc)
            if said == 0:
                self.metrics.first_clause = time.monotonic()
                items.put_nowait(Sentence(phrase("llm_failed", s.language)))
        finally:
            self.metrics.tool_calls = responder.stats.tool_calls
            self.metrics.tool_ms = round(responder.stats.tool_seconds * 1000, 1)
            items.put_nowait(None)

    def _mark_first_token(self) -> None:
        if self.metrics.llm_first_token is None:
            self.metrics.llm_first_token = time.monotonic()

    async def _voice(self, items: asyncio.Queue[Item | None],
                     frames: asyncio.Queue[tuple[str, bytes | str] | None]) -> None:
        s = self.session
        try:
            while (item := await items.get()) is not None:
                if isinstance(item, Audio):
                    await self._play_audio(item, frames)
                    continue
                assert isinstance(item, Sentence)
                await frames.put(("sentence", item.text))
                try:
                    async for packet in s.services.speak(item.text, on_first_chunk=self._mark_tts_chunk):
                        await frames.put(("frame", packet))
                except ProviderError as exc:
                    # One sentence lost is better than a stuck device: skip it, keep going.
                    self.metrics.error = str(exc)
                    log.warning("[%s] TTS failed on %r: %s", s.tag, item.text[:40], exc)
        finally:
            await frames.put(None)

    async def _play_audio(self, item: Audio, frames: asyncio.Queue[tuple[str, bytes | str] | None]) -> None:
        """Audio a tool returned (music): encode and queue it like speech. The bounded frame
        queue makes decoding follow playback instead of loading a whole song into memory."""
        s = self.session
        try:
            async for packet in s.services.encode_stream(item.chunks, item.sample_rate):
                self._mark_tts_chunk()
                await frames.put(("frame", packet))
        except Exception as exc:  # noqa: BLE001 - a broken file ends the song, not the session
            log.warning("[%s] audio from a tool failed: %s", s.tag, exc)
        finally:
            close = getattr(item.chunks, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()

    def _mark_tts_chunk(self) -> None:
        if self.metrics.tts_first_chunk is None:
            self.metrics.tts_first_chunk = time.monotonic()

    async def _send(self, frames: asyncio.Queue[tuple[str, bytes | str] | None]) -> None:
        s = self.session
        pending_sentence: str | None = None
        while (item := await frames.get()) is not None:
            kind, value = item
            if kind == "sentence":
                pending_sentence = str(value)
                continue
            if pending_sentence is not None:
                # sentence_start goes out right before that sentence's first frame, so the
                # subtitle matches what is playing and history counts only what was sent.
                await s.send_json_turn(self, {"type": "tts", "state": "sentence_start", "text": pending_sentence})
                self.spoken.append(pending_sentence)
                pending_sentence = None
            if not await s.send_frame(self, value):  # type: ignore[arg-type]
                return

    async def _say_fixed(self, text: str) -> None:
        if not text:
            return
        s = self.session
        await self._start_tts()
        if self.metrics.first_clause is None:
            self.metrics.first_clause = time.monotonic()
        try:
            packets = await s.services.phrase_frames(text)
        except ProviderError as exc:
            log.warning("[%s] cannot say %r: %s", s.tag, text, exc)
            return
        self._mark_tts_chunk()
        await self._send_emotion(text)
        await s.send_json_turn(self, {"type": "tts", "state": "sentence_start", "text": text})
        self.spoken.append(text)
        for packet in packets:
            if not await s.send_frame(self, packet):
                return

    async def _start_tts(self) -> None:
        if not self.tts_started and self.active:
            self.tts_started = True
            await self.session.send_json_turn(self, {"type": "tts", "state": "start"})
            self.session.tts_start_time = time.monotonic()

    async def _send_emotion(self, raw: str) -> None:
        if self.emotion_sent:
            return
        self.emotion_sent = True
        # From the reply itself (its emoji, else its words), so the face follows what is said.
        emotion = reply_emotion(raw) if raw.strip() else DEFAULT_EMOTION
        await self.session.send_json_turn(self, {"type": "llm", "emotion": emotion, "text": emoji_for(emotion)})

    async def _finish(self) -> None:
        """Normal end: a short tail of silence (the tts-stop grace), wait until the device has
        played it, then `tts stop`."""
        s = self.session
        if self.tts_started:
            await s.send_stop_grace(self)
            await s.output.wait_played(self)
            if self.active:
                await s.send_tts_stop(self)

    def _record(self) -> None:
        m = self.metrics
        s = self.session
        if self.user_text or (self.spoken and self.kind != "phrase"):
            s.remember(self.user_text, " ".join(self.spoken), interrupted=self.cancelled)
        s.services.metrics.record(m)
        stages = {k: v for k, v in m.stages_ms().items() if v is not None}
        log.info("[%s] turn %d %s%s frames=%d %s", s.tag, self.id, self.kind,
                 " (interrupted)" if m.interrupted else "", m.frames_sent,
                 " ".join(f"{k}={v:.0f}ms" for k, v in stages.items()))
