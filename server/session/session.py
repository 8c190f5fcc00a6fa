"""One connected xiaozhi board: the hello, protocol dispatch and life cycle of its session.

The board is one endpoint of a `Conversation` (server/conversation/): this session implements
`ConversationHost` for it in xiaozhi terms (stt, llm emotion, tts start/sentence_start/stop,
paced Opus frames). Its two halves live next to it: `Uplink` (microphone: decode, VAD,
endpointing, early ASR) and `Downlink` (every send, pacing, `tts stop`). Control messages
(hello, listen, abort) are handled the moment they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterable, Coroutine
from typing import Any

from server.audio.silence import silence_frames
from server.audio.voice import Voice
from server.conversation import Conversation, Turn, TurnKind, TurnMetrics
from server.pipeline.emotion import emoji_for
from server.pipeline.phrases import phrase
from server.protocol import (
    Abort,
    AudioParams,
    FramingError,
    Goodbye,
    Hello,
    Iot,
    Listen,
    Llm,
    Mcp,
    Ping,
    Pong,
    ProtocolError,
    Stt,
    Tts,
    decode_message,
    framing,
)
from server.providers.base import PCM_RATE
from server.runtime import DeviceTools, McpDeviceTools, Services
from server.session.barge_in import should_barge_in
from server.session.device import Connection, DeviceInfo
from server.session.downlink import Downlink
from server.session.listener import Utterance
from server.session.ratelog import RateLimitedLog
from server.session.speculation import Speculator
from server.session.typed_text import TypedTextGuard
from server.session.uplink import Uplink

log = logging.getLogger("server.session")

# After a `tts stop` in auto mode the firmware (once its queue drained, <= 2.4 s) and py-xiaozhi
# (at once) send `listen start` again: within this window that one is routine, not the user
# taking the floor.
RELISTEN_WINDOW_S = 4.0


class Session:
    """A board's WebSocket session; `run(frames)` until the device goes away or we close."""

    def __init__(self, services: Services, endpoint: Connection, device: DeviceInfo) -> None:
        cfg = services.config
        self.services = services
        self.endpoint = endpoint
        self.device = device
        self.conversation = Conversation(services, self, device.device_id, memory_identity=device.memory_identity)
        self.session_id = self.conversation.session_id
        self.tag = self.conversation.tag
        self.language = self.conversation.language
        self.framing_version = device.protocol_version
        self.hello_received = False
        self.closed = False
        self.features: dict[str, Any] = {}
        self.last_activity = time.monotonic()
        self._warn = RateLimitedLog()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._relisten_expected_until = 0.0
        self._waiting_for_frame = False  # the receive loop waits for a frame (take_audio_frame)
        self.text_guard = TypedTextGuard(cfg.session.max_text_chars, cfg.session.text_turns_per_minute)
        self.downlink = Downlink(endpoint, self.session_id, framing_version=self.framing_version,
                                 frame_ms=cfg.audio_out.frame_duration_ms,
                                 prebuffer_frames=cfg.audio_out.prebuffer_frames, on_failed=self._on_send_failed)
        self.uplink = Uplink(services.vad, services.asr, services.metrics, max_utterance_s=cfg.session.max_utterance_s,
                             queue_frames=cfg.session.uplink_queue_frames, tag=self.tag, warn=self._warn,
                             on_utterance=self._on_utterance, on_speech=self._on_speech, on_wake=self._on_wake_word)
        self.speculator = Speculator(self.conversation, self.uplink.listener,
                                     enabled=bool(getattr(services.vad.settings, "speculate", False)))
        self.device_tools: McpDeviceTools | None = None  # once the device announced MCP
        self.iot_tools: DeviceTools | None = None  # once a legacy device sent descriptors

    @property
    def current_turn(self) -> Turn | None:
        return self.conversation.current_turn

    # ------------------------------------------------------------------ life cycle

    async def run(self, incoming: AsyncIterable[str | bytes]) -> None:
        """Consume the device's frames until it goes away or we close."""
        self.services.sessions.add(self)
        if self.services.fleet is not None:  # close this device's stale connections, fleet-wide
            self._spawn(self.services.fleet.session_started(self), "presence")
        self.conversation.open()
        self._spawn(self.uplink.run(), "audio")
        self._spawn(self._watchdog(), "watchdog")
        log.info("[%s] connected from %s (client %s, framing v%d)", self.tag, self.device.remote,
                 self.device.client_id or "-", self.framing_version)
        frames = aiter(incoming)
        try:
            while not self.closed:
                self._waiting_for_frame = True
                try:
                    frame = await anext(frames)
                except StopAsyncIteration:
                    break
                finally:
                    self._waiting_for_frame = False
                if isinstance(frame, str):
                    await self.on_text(frame)
                elif (json_text := self.on_binary(frame)) is not None:
                    # JSON inside a binary frame (protocol v2/v3) is handled here, in the receive
                    # loop, like text: a client that floods them waits for us, never piles up tasks.
                    await self.on_text(json_text)
        finally:
            await self.shutdown()

    def take_audio_frame(self, data: bytes) -> bool:
        """A binary frame straight from the socket's protocol callback, before it is queued for
        the receive loop: an audio frame is handled here and now (True), which spares every
        microphone frame a task wake-up; anything else (JSON in a v2/v3 frame, frames before the
        hello) is left to the receive loop (False). Only while that loop waits with nothing
        queued, so frames are still handled in the order they came (`listen` before audio)."""
        if not self._waiting_for_frame or not self.hello_received or self.closed:
            return False
        try:
            payload = framing.audio_payload(self.framing_version, data)
        except FramingError:
            return False  # the receive loop warns and counts it
        if payload is None:
            return False
        self.uplink.audio(payload, time.monotonic())
        return True

    async def shutdown(self) -> None:
        self.closed = True
        self.uplink.close()
        await self.conversation.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.device_tools is not None:
            with contextlib.suppress(Exception):
                self.device_tools.close()
        self.services.sessions.discard(self)
        log.info("[%s] disconnected", self.tag)

    async def close(self, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        log.info("[%s] closing: %s", self.tag, reason)
        with contextlib.suppress(Exception):
            await self.endpoint.close(1000, reason[:100])

    async def _close_quietly(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self.endpoint.close(code, reason)

    def _on_send_failed(self, exc: Exception) -> None:
        if not self.closed:
            log.info("[%s] send failed (%s): ending session", self.tag, type(exc).__name__)
            self.closed = True
            self._spawn(self._close_quietly(1011, "send failed"), "close")

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"{self.tag}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("[%s] task %s crashed: %r", self.tag, task.get_name(), task.exception())

    async def _watchdog(self) -> None:
        cfg = self.services.config.session
        started = time.monotonic()
        while not self.closed:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            if not self.hello_received:
                if now - started >= cfg.hello_timeout_s:
                    self._warn.warn(self.tag, "nohello", f"no hello within {cfg.hello_timeout_s:.0f} s")
                    await self.close("no hello")
                    return
                continue
            if self.conversation.busy or self.uplink.in_speech:
                self.last_activity = now
            elif now - self.last_activity >= cfg.idle_timeout_s:
                log.info("[%s] no voice for %.0f s: saying goodbye", self.tag, cfg.idle_timeout_s)
                self.last_activity = now
                self.start_turn("phrase", text=phrase("idle_goodbye", self.language), close_after=True)

    # ------------------------------------------------------------------ inbound text

    async def on_text(self, text: str) -> None:
        try:
            msg = decode_message(text)
        except ProtocolError as exc:
            self._warn.warn(self.tag, f"bad:{exc}"[:60], f"ignored text frame: {exc} ({text[:80]!r})")
            self.services.metrics.count("bad_text_frames")
            return
        if isinstance(msg, Hello):
            await self._on_hello(msg)
            return
        if not self.hello_received:
            self._warn.warn(self.tag, "prehello", f"{msg.TYPE!r} before hello: ignored")
            return
        if isinstance(msg, Listen):
            await self._on_listen(msg)
        elif isinstance(msg, Abort):
            await self.abort(msg.reason or "abort")
        elif isinstance(msg, Ping):
            await self.downlink.send(Pong(timestamp=int(time.time() * 1000)))
        elif isinstance(msg, Goodbye):
            await self.close("device said goodbye")
        elif isinstance(msg, Mcp):
            self.on_mcp(msg.payload)
        elif isinstance(msg, Iot):
            self.on_iot(msg)
        else:
            self._warn.warn(self.tag, f"unexpected:{msg.TYPE}", f"unexpected {msg.TYPE!r} from a device: ignored")

    def on_binary(self, data: bytes) -> str | None:
        """Audio goes to the uplink queue; a JSON payload (v2/v3) is returned for on_text."""
        if not self.hello_received:
            self._warn.warn(self.tag, "binprehello", "binary frame before hello: dropped")
            self.services.metrics.count("audio_before_hello")
            return None
        try:
            frame = framing.unpack(self.framing_version, data)
        except FramingError as exc:
            self._warn.warn(self.tag, "framing", f"dropped binary frame: {exc}")
            self.services.metrics.count("bad_binary_frames")
            return None
        if frame.payload_type == framing.PAYLOAD_JSON:
            return frame.payload.decode("utf-8", "replace")
        self.uplink.audio(frame.payload, time.monotonic())
        return None

    async def _on_hello(self, msg: Hello) -> None:
        cfg = self.services.config
        if msg.transport not in (None, "websocket"):
            self._warn.warn(self.tag, "transport", f"hello transport {msg.transport!r}; answering for websocket")
        self.features = msg.features or {}
        self.framing_version = framing.negotiate_version(self.device.protocol_version, msg.version)
        self.downlink.framing_version = self.framing_version
        if msg.audio_params is not None:
            if msg.audio_params.format != "opus":
                self._warn.warn(self.tag, "fmt", f"uplink format {msg.audio_params.format!r} unsupported; "
                                "expecting opus")
            if msg.audio_params.sample_rate != PCM_RATE:
                # Opus decodes to any rate: we decode at 16 kHz whatever the encoder used.
                log.info("[%s] device encodes at %d Hz; decoding at 16000", self.tag, msg.audio_params.sample_rate)
            self.uplink.frame_ms = msg.audio_params.frame_duration
        first = not self.hello_received
        self.hello_received = True
        self.last_activity = time.monotonic()
        await self.downlink.send(Hello(
            transport="websocket",
            audio_params=AudioParams(format="opus", sample_rate=cfg.audio_out.sample_rate, channels=1,
                                     frame_duration=cfg.audio_out.frame_duration_ms)))
        if first:
            log.info("[%s] hello: framing v%d, uplink %d ms frames, features %s", self.tag, self.framing_version,
                     self.uplink.frame_ms, ",".join(k for k, v in self.features.items() if v) or "none")
            self.on_ready()

    async def _on_listen(self, msg: Listen) -> None:
        self.last_activity = time.monotonic()
        if msg.state == "start":
            if self._takes_the_floor():
                # py-xiaozhi's `r` (manual listen start) while a reply plays: the client is
                # listening now. Stop the reply without a `tts stop`, which would move a
                # manual-mode client from listening to idle and lose the user's recording.
                turn = self.conversation.cancel_current("floor")
                if turn is not None:
                    turn.reply_closed = True
                    self.downlink.drop_buffered()
                    self._spawn(self.conversation.settle(turn, "floor"), "floor")
            self.uplink.start(msg.mode)
        elif msg.state == "stop":
            self.uplink.stop()
        elif msg.state == "detect":
            text = (msg.text or "").strip()
            if not text or self.conversation.wake_words.is_wake_word(text):
                self.uplink.wake(text)
            else:
                refusal = self.text_guard.refusal(text)
                if refusal is not None:
                    self._warn.warn(self.tag, "typed", f"typed text ignored: {refusal}")
                    self.services.metrics.count("typed_text_refused")
                    return
                # Typed chat (py-xiaozhi, browser test pages): a turn of its own, right away.
                self.uplink.reset()
                self.start_turn("text", text=text)

    async def abort(self, reason: str) -> None:
        """The device's abort: cut the reply, and always answer with `tts stop` (the firmware
        stays in "speaking" until it gets one)."""
        stopped = await self.conversation.interrupt(reason)
        if reason == "wake_word_detected":
            self.uplink.reset()
        if not stopped:
            await self._tts_stop(None)

    async def _tts_stop(self, turn: Turn | None) -> None:
        if self.uplink.mode == "auto":
            self._relisten_expected_until = time.monotonic() + RELISTEN_WINDOW_S
        await self.downlink.tts_stop(turn)

    def _takes_the_floor(self) -> bool:
        """A `listen start` while the current turn is speaking is the user taking the floor,
        unless it is the routine one a client sends after our `tts stop` in auto mode."""
        turn = self.current_turn
        if turn is None or not turn.active or not turn.reply_started or turn.reply_closed:
            return False
        if time.monotonic() < self._relisten_expected_until:
            self._relisten_expected_until = 0.0
            return False
        return True

    # ------------------------------------------------------------------ device tools

    def on_ready(self) -> None:
        """The hello exchange is done: ask an MCP-capable device for its tools."""
        factory = self.services.device_tools_factory
        if self.features.get("mcp") and factory is not None:
            self.device_tools = factory(self)
            self.conversation.set_device_tools(self.device_tools)
            self._spawn(self.device_tools.start(), "mcp-init")

    def on_mcp(self, payload: dict[str, Any]) -> None:
        if self.device_tools is None:
            log.debug("[%s] mcp message without an MCP session: %s", self.tag, str(payload)[:120])
            return
        self.device_tools.on_message(payload)

    def on_iot(self, msg: Iot) -> None:
        if self.iot_tools is None:
            factory = self.services.iot_tools_factory
            if factory is None:
                return
            self.iot_tools = factory(self)
            self.conversation.add_tools(self.iot_tools)
        self.iot_tools.on_message(msg.to_dict())

    async def send_mcp(self, payload: dict[str, Any]) -> None:
        await self.downlink.send(Mcp(payload=payload))

    async def send_iot_commands(self, commands: list[dict[str, Any]]) -> None:
        await self.downlink.send(Iot(commands=commands))

    # ------------------------------------------------------------------ turns and uplink events

    def start_turn(self, kind: TurnKind, *, audio: bytes = b"", text: str = "", metrics: TurnMetrics | None = None,
                   close_after: bool = False, asr_task: asyncio.Task[Any] | None = None) -> Turn:
        self.last_activity = time.monotonic()
        return self.conversation.start_turn(kind, audio=audio, text=text, metrics=metrics, close_after=close_after,
                                            asr_task=asr_task)

    def _on_utterance(self, utterance: Utterance) -> None:
        if utterance.asr_task is not None:
            self.services.metrics.count("early_asr_used")
        metrics = TurnMetrics(speech_end_arrival=utterance.speech_end_arrival, endpoint=utterance.endpoint)
        if self.speculator.take(utterance, metrics):
            self.last_activity = time.monotonic()
            return  # the reply started during the silence window answers it
        self.start_turn("voice", audio=utterance.audio, asr_task=utterance.asr_task, metrics=metrics)

    def _on_speech(self, arrival: float) -> None:
        self.last_activity = arrival
        turn = self.current_turn
        replying = turn is not None and turn.active and turn.reply_started
        if should_barge_in(self.uplink.mode, replying, self.uplink.speech_ms):
            cut = self.conversation.cancel_current("barge-in")
            if cut is not None:
                self._spawn(self.conversation.settle(cut, "barge-in"), "barge-in-stop")

    def _on_wake_word(self, word: str, discarded_s: float) -> None:
        log.info("[%s] wake word %r (%.1f s of wake audio discarded)", self.tag, word, discarded_s)
        reply = self.services.config.session.wake_reply
        if reply:
            self.start_turn("wake", text=reply)

    # ------------------------------------------------------------------ ConversationHost

    @property
    def voice(self) -> Voice:
        return self.services.voice

    async def deliver_stt(self, turn: Turn, text: str) -> None:
        await self.downlink.send_for(turn, Stt(text=text))

    async def reply_started(self, turn: Turn) -> None:
        await self.downlink.tts_start(turn)

    async def deliver_emotion(self, turn: Turn, emotion: str) -> None:
        await self.downlink.send_for(turn, Llm(emotion=emotion, text=emoji_for(emotion)))

    async def deliver_sentence(self, turn: Turn, text: str) -> None:
        await self.downlink.send_for(turn, Tts(state="sentence_start", text=text))

    async def deliver_audio(self, turn: Turn, packet: bytes) -> bool:
        return await self.downlink.send_frame(turn, packet)

    async def reply_finished(self, turn: Turn) -> None:
        await self._send_stop_grace(turn)
        await self.downlink.wait_played(turn)
        if turn.active:
            await self._tts_stop(turn)

    async def _send_stop_grace(self, turn: Turn) -> None:
        """The quiet tail before `tts stop` (audio_out.tts_stop_grace_ms, docs/tts-stop-grace.md):
        clients that play late and clear their buffer on stop still play the real end."""
        a = self.services.config.audio_out
        if not turn.metrics.frames_sent:
            return
        for packet in silence_frames(a.tts_stop_grace_ms, sample_rate=a.sample_rate, frame_ms=a.frame_duration_ms,
                                     bitrate=a.bitrate):
            if not await self.downlink.output.send_frame(turn, packet):
                return

    async def reply_interrupted(self, turn: Turn, why: str) -> None:
        self.downlink.drop_buffered()
        await self._tts_stop(turn)

    async def turn_ended(self, turn: Turn) -> None:
        if self.current_turn is turn:
            self.last_activity = time.monotonic()

    async def end_session(self, reason: str) -> None:
        await self.close(reason)
