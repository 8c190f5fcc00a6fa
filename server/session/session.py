"""One connected device: protocol state, listening, endpointing, turns, timers.

Control messages (hello, listen, abort) are handled the moment they arrive; audio goes through a
bounded queue to a worker that decodes and runs VAD off the event loop, so a flood of frames can
neither grow memory nor delay an abort. Replies run as `Turn` tasks; at most one is current.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections import deque
from collections.abc import AsyncIterable, Awaitable
from typing import Any

from server.audio.opus import OpusDecoder
from server.memory.manager import SessionMemory
from server.pipeline.dialogue import Dialogue, build_context, system_prompt
from server.pipeline.phrases import phrase
from server.pipeline.responder import Responder
from server.pipeline.segmenter import SegmenterConfig
from server.protocol import (
    Abort,
    FramingError,
    Goodbye,
    Hello,
    Iot,
    Listen,
    Mcp,
    Ping,
    ProtocolError,
    decode_message,
    framing,
)
from server.providers.base import ChatMessage
from server.services import Services
from server.session.endpoint import DeviceInfo, Endpoint
from server.session.listener import Utterance, UtteranceListener
from server.session.metrics import TurnMetrics
from server.session.output import PacedOutput
from server.session.turn import Turn, TurnKind
from server.tools.base import ToolContext
from server.tools.toolbox import Toolbox

log = logging.getLogger("server.session")

PCM_RATE = 16000
_PUNCT = re.compile(r"[\s\W_]+", re.UNICODE)
# Barge-in (realtime mode) needs this much continuous speech, so a cough does not cut us off.
BARGE_IN_MS = 300
# Audio the firmware replays before `listen detect` (its wake word); we keep about this much.
WAKE_AUDIO_S = 2.5


def normalize(text: str) -> str:
    return _PUNCT.sub("", text).lower()


class RateLimitedLog:
    """Log a repeated problem once, then a count every `every` seconds."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._last: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def warn(self, tag: str, key: str, message: str) -> None:
        now = time.monotonic()
        self._count[key] = self._count.get(key, 0) + 1
        if now - self._last.get(key, -1e9) >= self.every:
            n = self._count[key]
            log.warning("[%s] %s%s", tag, message, f" (x{n} since last report)" if n > 1 else "")
            self._last[key] = now
            self._count[key] = 0


class Session:
    def __init__(self, services: Services, endpoint: Endpoint, device: DeviceInfo) -> None:
        cfg = services.config
        self.services = services
        self.endpoint = endpoint
        self.device = device
        self.session_id = str(uuid.uuid4())
        self.tag = device.device_id or self.session_id[:8]
        self.language = cfg.assistant.language
        self.framing_version = device.protocol_version
        self.hello_received = False
        self.closed = False
        self.features: dict[str, Any] = {}
        self.uplink_frame_ms = 60

        # listening state
        self.listening = False
        self.mode = "auto"
        self.dialogue = Dialogue(max_turns=cfg.assistant.max_history_turns)
        vad_cfg = services.vad.settings
        self.listener = UtteranceListener(
            SegmenterConfig(threshold=vad_cfg.threshold, neg_threshold=vad_cfg.neg_threshold,
                            min_silence_ms=vad_cfg.min_silence_ms, min_speech_ms=vad_cfg.min_speech_ms,
                            window_samples=services.vad.window_samples),
            pre_roll_ms=vad_cfg.pre_roll_ms, early_asr_ms=vad_cfg.early_asr_ms,
            max_utterance_s=cfg.session.max_utterance_s, transcribe=self._early_transcribe, tag=self.tag)
        self._vad_stream = services.vad.new_stream()
        self._decoder = OpusDecoder(PCM_RATE)
        self._wake_audio: deque[bytes] = deque()

        # Audio and the listen state changes that must apply in order with it (start, stop,
        # detect), consumed by one worker. Bounded in audio frames; control items never drop.
        self._uplink: deque[tuple[str, Any]] = deque()
        self._uplink_audio = 0
        self._uplink_limit = cfg.session.uplink_queue_frames
        self._uplink_ready = asyncio.Event()
        self.output = PacedOutput(self._send_audio_packet, cfg.audio_out.frame_duration_ms,
                                  cfg.audio_out.prebuffer_frames)
        self.current_turn: Turn | None = None
        self._turn_seq = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.last_activity = time.monotonic()
        self.tts_start_time = 0.0
        self._warn = RateLimitedLog()
        self._exit_phrases = {normalize(p) for p in cfg.session.exit_phrases}
        self._wake_words = {normalize(w) for w in cfg.session.wake_words}

        # memory, persona and tools
        memory = services.memory
        self.user_id = memory.user_for(device.device_id) if memory is not None else device.device_id
        self.memory: SessionMemory | None = None
        self._memory_loaded = asyncio.Event()
        self.toolbox = Toolbox(self._tool_context, default_timeout_s=cfg.intent.tool_timeout_s)
        for source in services.tool_sources:
            self.toolbox.add(source)
        self.device_tools: Any = None  # DeviceMcpClient once the device announced MCP
        self.last_memory_ms = 0.0
        self.iot_tools: Any = None  # IotTools once a legacy device sent descriptors

    # ------------------------------------------------------------------ life cycle

    async def run(self, incoming: AsyncIterable[str | bytes]) -> None:
        """Consume the device's frames until it goes away or we close."""
        self.services.sessions.add(self)
        if self.services.fleet is not None:  # close this device's stale connections, fleet-wide
            self._spawn(self.services.fleet.session_started(self), "presence")
        self._spawn(self._load_memory(), "memory")
        self._spawn(self._audio_worker(), "audio")
        self._spawn(self._watchdog(), "watchdog")
        log.info("[%s] connected from %s (client %s, framing v%d)", self.tag, self.device.remote,
                 self.device.client_id or "-", self.framing_version)
        try:
            async for frame in incoming:
                if isinstance(frame, str):
                    await self.on_text(frame)
                else:
                    self.on_binary(frame)
                if self.closed:
                    break
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        self.closed = True
        self.listener.close()
        if self.current_turn is not None:
            self.current_turn.cancel()
        tasks = list(self._tasks)
        if self.current_turn is not None and self.current_turn.task is not None:
            tasks.append(self.current_turn.task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for tools in (self.device_tools, self.iot_tools):
            close = getattr(tools, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    result = close()
                    if asyncio.iscoroutine(result):
                        await result
        if self.services.memory is not None:
            self.services.memory.close_session(self.user_id, self.session_id)
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

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
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
            busy = self.current_turn is not None and not self.current_turn.finished
            if busy or self.listener.in_speech:
                self.last_activity = now
            elif now - self.last_activity >= cfg.idle_timeout_s:
                log.info("[%s] no voice for %.0f s: saying goodbye", self.tag, cfg.idle_timeout_s)
                self.last_activity = now
                self.start_turn("phrase", text=phrase("idle_goodbye", self.language), close_after=True)

    # ------------------------------------------------------------------ sending

    async def send_json(self, obj: dict[str, Any]) -> None:
        obj = {"session_id": self.session_id, **obj}
        try:
            await self.endpoint.send_text(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))
        except Exception as exc:  # noqa: BLE001 - a dead socket ends the session, nothing more
            self._on_send_failed(exc)

    async def send_json_turn(self, turn: Turn, obj: dict[str, Any]) -> None:
        if turn.active:
            await self.send_json(obj)

    async def _send_audio_packet(self, packet: bytes) -> None:
        try:
            await self.endpoint.send_binary(framing.pack(self.framing_version, packet,
                                                         timestamp=self._downlink_timestamp()))
        except Exception as exc:  # noqa: BLE001
            self._on_send_failed(exc)

    def _downlink_timestamp(self) -> int:
        # v2 carries a millisecond clock for server-side AEC; the device echoes it back.
        return int(time.monotonic() * 1000) & 0xFFFFFFFF if self.framing_version == 2 else 0

    async def send_frame(self, turn: Turn, packet: bytes) -> bool:
        if not turn.active:
            return False
        if turn.metrics.first_frame_sent is None:
            # The firmware resets its decoder when it enters "speaking" (on tts start, via its
            # main loop): give it a moment so the first frame is not flushed with the reset.
            gap = 0.03 - (time.monotonic() - self.tts_start_time)
            if gap > 0:
                await asyncio.sleep(gap)
        sent = await self.output.send_frame(turn, packet)
        if sent:
            now = time.monotonic()
            if turn.metrics.first_frame_sent is None:
                turn.metrics.first_frame_sent = now
            turn.metrics.last_frame_sent = now
            turn.metrics.frames_sent += 1
        return sent

    async def send_tts_stop(self, turn: Turn | None) -> None:
        if turn is not None:
            if turn.tts_stopped:
                return
            turn.tts_stopped = True
            turn.metrics.tts_stop_sent = time.monotonic()
        await self.send_json({"type": "tts", "state": "stop"})

    def _on_send_failed(self, exc: Exception) -> None:
        if not self.closed:
            log.info("[%s] send failed (%s): ending session", self.tag, type(exc).__name__)
            self.closed = True
            self._spawn(self._close_quietly(1011, "send failed"), "close")

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
            await self.send_json({"type": "pong", "timestamp": int(time.time() * 1000)})
        elif isinstance(msg, Goodbye):
            await self.close("device said goodbye")
        elif isinstance(msg, Mcp):
            self.on_mcp(msg.payload)
        elif isinstance(msg, Iot):
            self.on_iot(msg)
        else:
            self._warn.warn(self.tag, f"unexpected:{msg.TYPE}", f"unexpected {msg.TYPE!r} from a device: ignored")

    async def _on_hello(self, msg: Hello) -> None:
        cfg = self.services.config
        if msg.transport not in (None, "websocket"):
            self._warn.warn(self.tag, "transport", f"hello transport {msg.transport!r}; answering for websocket")
        self.features = msg.features or {}
        self.framing_version = framing.negotiate_version(self.device.protocol_version, msg.version)
        if msg.audio_params is not None:
            if msg.audio_params.format != "opus":
                self._warn.warn(self.tag, "fmt", f"uplink format {msg.audio_params.format!r} unsupported; "
                                "expecting opus")
            if msg.audio_params.sample_rate != PCM_RATE:
                # Opus decodes to any rate: we decode at 16 kHz whatever the encoder used.
                log.info("[%s] device encodes at %d Hz; decoding at 16000", self.tag, msg.audio_params.sample_rate)
            self.uplink_frame_ms = msg.audio_params.frame_duration
        first = not self.hello_received
        self.hello_received = True
        self.last_activity = time.monotonic()
        await self.send_json({
            "type": "hello",
            "transport": "websocket",
            "session_id": self.session_id,
            "audio_params": {"format": "opus", "sample_rate": cfg.audio_out.sample_rate, "channels": 1,
                             "frame_duration": cfg.audio_out.frame_duration_ms},
        })
        if first:
            log.info("[%s] hello: framing v%d, uplink %d ms frames, features %s", self.tag, self.framing_version,
                     self.uplink_frame_ms, ",".join(k for k, v in self.features.items() if v) or "none")
            self.on_ready()

    def on_ready(self) -> None:
        """The hello exchange is done: ask an MCP-capable device for its tools."""
        if self.features.get("mcp") and self.services.device_tools_factory is not None:
            self.device_tools = self.services.device_tools_factory(self)
            self.toolbox.add(self.device_tools)
            self._spawn(self.device_tools.start(), "mcp-init")

    def on_mcp(self, payload: dict[str, Any]) -> None:
        if self.device_tools is None:
            log.debug("[%s] mcp message without an MCP session: %s", self.tag, str(payload)[:120])
            return
        self.device_tools.on_message(payload)

    def on_iot(self, msg: Iot) -> None:
        if self.iot_tools is None:
            if self.services.iot_tools_factory is None:
                return
            self.iot_tools = self.services.iot_tools_factory(self)
            self.toolbox.add(self.iot_tools)
        self.iot_tools.on_message(msg.to_dict())

    async def send_mcp(self, payload: dict[str, Any]) -> None:
        await self.send_json({"type": "mcp", "payload": payload})

    async def send_iot_commands(self, commands: list[dict[str, Any]]) -> None:
        await self.send_json({"type": "iot", "commands": commands})

    # ------------------------------------------------------------------ memory, prompt, tools

    async def _load_memory(self) -> None:
        try:
            if self.services.memory is not None:
                self.memory = await self.services.memory.open_session(self.user_id)
                for ex in self.memory.history:
                    self.dialogue.add(ex.user, ex.assistant, ex.interrupted)
        finally:
            self._memory_loaded.set()

    def _tool_context(self) -> ToolContext:
        memory = self.services.memory
        return ToolContext(device_id=self.device.device_id, user_id=self.user_id, session_id=self.session_id,
                           language=self.language, storage=memory.store if memory is not None else None,
                           http=self.services.http())

    def responder(self, on_first_token: Any = None) -> Responder:
        cfg = self.services.config.intent
        return Responder(self.services.llm, self.toolbox, mode=cfg.mode, max_rounds=cfg.max_tool_rounds,
                         language=self.language, on_first_token=on_first_token)

    async def build_messages(self, user_text: str) -> list[ChatMessage]:
        """System prompt (persona), context (time, memory, device), history and the new text."""
        cfg = self.services.config
        t0 = time.monotonic()
        await self._memory_loaded.wait()
        waited = time.monotonic() - t0
        if self.device_tools is not None and not self.device_tools.ready:
            # A device that just connected may still be listing its tools; a short wait lets
            # the first question use them.
            await self.device_tools.wait_ready(cfg.intent.device_tools_wait_s)
        persona = ""
        memory = self.services.memory
        t1 = time.monotonic()
        if memory is not None and memory.store is not None:
            try:
                persona = await memory.store.get_value(self.user_id, "persona") or ""
            except Exception:  # noqa: BLE001 - a broken store must not stop the answer
                log.exception("[%s] reading the persona failed", self.tag)
        # Memory time on this turn's path: waiting for the session's memory load plus the
        # persona lookup (not the wait for the device's tool list).
        self.last_memory_ms = round((waited + time.monotonic() - t1) * 1000, 2)
        summary = self.memory.summary if self.memory is not None else ""
        # What the device itself can do (its MCP tools), in one line each.
        capabilities = ([spec.description.split(".")[0] for spec in self.device_tools.specs()]
                        if self.device_tools is not None else [])
        system = system_prompt(persona or cfg.assistant.prompt, cfg.assistant.name, self.language)
        context = build_context(self.language, summary=summary, capabilities=capabilities[:12])
        return self.dialogue.messages(system, user_text, context=context,
                                      token_budget=cfg.assistant.history_token_budget)

    def remember(self, user: str, assistant: str, interrupted: bool) -> None:
        self.dialogue.add(user, assistant, interrupted)
        if self.services.memory is not None:
            self.services.memory.record(self.user_id, self.session_id, user, assistant, interrupted)

    async def _on_listen(self, msg: Listen) -> None:
        self.last_activity = time.monotonic()
        if msg.state == "start":
            self._enqueue("start", msg.mode)
        elif msg.state == "stop":
            self._enqueue("stop", None)
        elif msg.state == "detect":
            text = (msg.text or "").strip()
            if not text or normalize(text) in self._wake_words:
                self._enqueue("wake", text)
            else:
                # Typed chat (py-xiaozhi, browser test pages): a turn of its own, right away.
                self._enqueue("reset", None)
                self.start_turn("text", text=text)

    def _on_wake_word(self, word: str) -> None:
        log.info("[%s] wake word %r (%.1f s of wake audio discarded)", self.tag, word,
                 len(self._wake_audio) * self.uplink_frame_ms / 1000)
        self._wake_audio.clear()
        self._reset_audio()
        reply = self.services.config.session.wake_reply
        if reply:
            self.start_turn("wake", text=reply)

    def is_exit_phrase(self, text: str) -> bool:
        return normalize(text) in self._exit_phrases

    # ------------------------------------------------------------------ turns

    def start_turn(self, kind: TurnKind, *, audio: bytes = b"", text: str = "",
                   metrics: TurnMetrics | None = None, close_after: bool = False,
                   asr_task: asyncio.Task[Any] | None = None) -> Turn:
        self._interrupt("new turn")
        self._turn_seq += 1
        turn = Turn(session=self, id=self._turn_seq, kind=kind, audio=audio, text=text, close_after=close_after,
                    metrics=metrics or TurnMetrics(), asr_task=asr_task)
        turn.metrics.session_id = self.session_id
        turn.metrics.device_id = self.device.device_id
        turn.metrics.turn_id = turn.id
        turn.metrics.kind = kind
        self.current_turn = turn
        self.last_activity = time.monotonic()
        turn.task = asyncio.create_task(self._run_turn(turn), name=f"{self.tag}-turn{turn.id}")
        return turn

    async def _run_turn(self, turn: Turn) -> None:
        try:
            await turn.run()
        finally:
            if self.current_turn is turn:
                self.last_activity = time.monotonic()
            if turn.close_after and not turn.cancelled:
                await self.close("conversation ended")

    def _interrupt(self, why: str) -> bool:
        """Cancel the current turn. Returns True if it had started speaking (needs tts stop)."""
        turn = self.current_turn
        if turn is None or turn.finished or turn.cancelled:
            return False
        log.info("[%s] turn %d interrupted: %s", self.tag, turn.id, why)
        turn.cancel()
        self.output.reset()
        return turn.tts_started

    async def abort(self, reason: str) -> None:
        turn = self.current_turn
        needs_stop = self._interrupt(reason)
        if reason == "wake_word_detected":
            self._enqueue("reset", None)
        # Always answer: the firmware stays in "speaking" until it gets tts stop.
        await self.send_tts_stop(turn if needs_stop else None)

    # ------------------------------------------------------------------ inbound audio

    def on_binary(self, data: bytes) -> None:
        if not self.hello_received:
            self._warn.warn(self.tag, "binprehello", "binary frame before hello: dropped")
            self.services.metrics.count("audio_before_hello")
            return
        try:
            frame = framing.unpack(self.framing_version, data)
        except FramingError as exc:
            self._warn.warn(self.tag, "framing", f"dropped binary frame: {exc}")
            self.services.metrics.count("bad_binary_frames")
            return
        if frame.payload_type == framing.PAYLOAD_JSON:
            self._spawn(self.on_text(frame.payload.decode("utf-8", "replace")), "binary-json")
            return
        self._enqueue("audio", (frame.payload, time.monotonic()))

    def _enqueue(self, kind: str, value: Any) -> None:
        if kind == "audio" and self._uplink_audio >= self._uplink_limit or len(self._uplink) >= 4 * self._uplink_limit:
            # Faster than real time (or we are overloaded): drop the oldest audio (or, for a
            # client spamming listen messages, the oldest item), so memory stays bounded.
            index = next((i for i, (k, _) in enumerate(self._uplink) if k == "audio"), 0)
            if self._uplink[index][0] == "audio":
                self._uplink_audio -= 1
            del self._uplink[index]
            self._warn.warn(self.tag, "flood", "uplink arriving faster than it is processed: dropping the oldest")
            self.services.metrics.count("uplink_frames_dropped")
        self._uplink.append((kind, value))
        if kind == "audio":
            self._uplink_audio += 1
        self._uplink_ready.set()

    def _reset_audio(self, mode: str | None = None) -> None:
        self.listener.reset(mode)
        self._vad_stream.reset()

    def _decode_and_detect(self, packet: bytes) -> tuple[bytes, list[float]]:
        pcm = self._decoder.decode(packet)
        return pcm, self.services.vad.process_sync(self._vad_stream, pcm)

    async def _audio_worker(self) -> None:
        vad = self.services.vad
        while True:
            if not self._uplink:
                self._uplink_ready.clear()
                await self._uplink_ready.wait()
                continue
            kind, value = self._uplink.popleft()
            if kind != "audio":
                self._apply_listen_change(kind, value)
                continue
            self._uplink_audio -= 1
            packet, arrival = value
            if not self.listening:
                self._keep_wake_audio(packet)
                continue
            try:
                pcm, probs = await vad.run_blocking(self._decode_and_detect, packet)
            except ValueError as exc:
                self._warn.warn(self.tag, "opus", f"dropped uplink frame: {exc}")
                self.services.metrics.count("bad_opus_frames")
                continue
            self._on_pcm(pcm, probs, arrival)

    def _apply_listen_change(self, kind: str, value: Any) -> None:
        """Listen state changes, applied in order with the audio that came before them."""
        if kind == "start":
            self.mode = value or self.mode or "auto"
            self.listening = True
            self._reset_audio(self.mode)
        elif kind == "stop":
            self.listening = False
            self._start_voice_turn(self.listener.finish())
            self._vad_stream.reset()
        elif kind == "wake":
            self._on_wake_word(value)
        elif kind == "reset":
            self._reset_audio()

    def _keep_wake_audio(self, packet: bytes) -> None:
        # Frames before `listen detect` are the wake word replay; keep the last ~2.5 s only.
        self._wake_audio.append(packet)
        while len(self._wake_audio) > int(WAKE_AUDIO_S * 1000 / max(self.uplink_frame_ms, 10)):
            self._wake_audio.popleft()

    def _on_pcm(self, pcm: bytes, probs: list[float], arrival: float) -> None:
        for utterance in self.listener.feed(pcm, probs, arrival):
            self._start_voice_turn(utterance)
        if self.listener.in_speech:
            self.last_activity = arrival
            if self.mode == "realtime":
                self._maybe_barge_in()

    def _early_transcribe(self, audio: bytes) -> Awaitable[Any]:
        """The ASR the listener starts during the endpoint wait, counted as it starts: against
        `early_asr_used`, /metrics shows the work thrown away when the speaker went on."""
        self.services.metrics.count("early_asr_started")
        return self.services.asr.transcribe(audio)

    def _start_voice_turn(self, utterance: Utterance | None) -> None:
        if utterance is None:
            return
        if utterance.asr_task is not None:
            self.services.metrics.count("early_asr_used")
        self.start_turn("voice", audio=utterance.audio, asr_task=utterance.asr_task,
                        metrics=TurnMetrics(speech_end_arrival=utterance.speech_end_arrival,
                                            endpoint=utterance.endpoint))

    def _maybe_barge_in(self) -> None:
        turn = self.current_turn
        if turn is None or not turn.active or not turn.tts_started:
            return
        if self.listener.speech_ms >= BARGE_IN_MS and self._interrupt("barge-in"):
            self._spawn(self.send_tts_stop(turn), "barge-in-stop")
