"""The firmware's side of a session: how it reacts to every frame the server sends.

Firmware references: WebsocketProtocol::OnData / ParseServerHello (websocket_protocol.cc) and
Application::InitializeProtocol's OnIncomingJson / OnIncomingAudio (application.cc). `Firmware`
holds what the device learnt from the server (session id, audio parameters), what it received
(`events`), what it found wrong (`violations`, `warnings`), its MCP server and its audio state
machine (state.py). It owns no socket: SimDevice feeds it frames and gives it a `send_text`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from harness.devsim.codec import opus_packet_duration_ms
from harness.devsim.config import DeviceConfig
from harness.devsim.events import DeviceEvent
from harness.devsim.mcp_device import DeviceMcpServer
from harness.devsim.state import AudioStateMachine, Clock, ListenMode
from server.protocol import FramingError, ProtocolError, decode_message, unpack

log = logging.getLogger(__name__)

OPUS_DECODE_RATES = (8000, 12000, 16000, 24000, 48000)
_FRAME_DURATIONS = (10, 20, 40, 60, 80, 100, 120)
_INT_MAX = 2**31 - 1
SendText = Callable[[str], Awaitable[float]]


def _number(value: Any) -> int | None:
    """cJSON_IsNumber + valueint (saturated)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return max(-_INT_MAX - 1, min(_INT_MAX, int(value)))


class Firmware:
    """One device's firmware, as far as the server can observe it."""

    def __init__(self, config: DeviceConfig, mcp: DeviceMcpServer, send_text: SendText, *,
                 clock: Clock = time.monotonic, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.config = config
        self.mcp = mcp
        self.clock = clock
        self._send_text = send_text
        # session (what the server hello set)
        self.protocol_version = 1
        self.session_id = ""
        self.server_hello: dict[str, Any] | None = None
        self.hello_received_at: float | None = None
        self.hello_arrived: asyncio.Event | None = None
        self.channel_open = False
        self.downlink_sample_rate = 24000  # Protocol::server_sample_rate_ default
        self.downlink_frame_duration = 60
        # records
        self.events: list[DeviceEvent] = []
        self.violations: list[str] = []
        self.warnings: list[str] = []
        self.internal_errors: list[str] = []
        self.alerts: list[dict[str, Any]] = []
        self.reboot_requested = False
        self.dropped_not_speaking = 0
        self.malformed_frames = 0
        self.audio = AudioStateMachine(
            self._send_listen_start, clock=clock, sleep=sleep, state_change_delay_ms=config.state_change_delay_ms,
            auto_relisten=config.auto_relisten, decode_queue_capacity=config.decode_queue_capacity,
            decode_rate=self.decode_sample_rate)

    @property
    def decode_sample_rate(self) -> int:
        # py-xiaozhi decodes at its configured 24 kHz whatever the server hello says.
        return 24000 if self.config.py_xiaozhi else self.downlink_sample_rate

    def message(self, fields: dict[str, Any]) -> str:
        """A message as the firmware writes it: Protocol::Send* concatenate
        {"session_id":"...","type":...} in this order."""
        return json.dumps({"session_id": self.session_id, **fields}, ensure_ascii=False, separators=(",", ":"))

    async def _send_listen_start(self, mode: ListenMode) -> bool:
        try:
            await self._send_text(self.message({"type": "listen", "state": "start", "mode": mode}))
        except Exception as exc:  # the socket may have gone meanwhile
            self.internal_errors.append(f"relisten failed: {exc!r}")
            return False
        return True

    # -------------------------------------------------------------- channel

    def channel_opening(self, protocol_version: int) -> None:
        """A new channel: the firmware keeps the old session_id until a hello replaces it."""
        self.protocol_version = protocol_version
        self.channel_open = True
        self.hello_arrived = asyncio.Event()
        self.server_hello = None
        self.audio.reset()

    def channel_closed(self, close_code: int | None, close_reason: str | None) -> None:
        self.events.append(DeviceEvent(self.clock(), "close", close_code=close_code, close_reason=close_reason))
        self.channel_open = False
        self.audio.closed()
        if self.hello_arrived is not None:
            self.hello_arrived.set()  # wakes connect(); it sees server_hello is None

    async def on_frame(self, data: str | bytes) -> None:
        """One frame from the server. Never raises: a bug here is recorded, not thrown."""
        t = self.clock()
        try:
            if isinstance(data, str):
                await self.on_text(t, data)
            else:
                self.on_binary(t, data)
        except Exception as exc:  # our bug, not the server's: record it, keep receiving
            log.exception("devsim failed to handle a frame")
            self.internal_errors.append(f"error handling a frame: {exc!r}")

    async def on_text(self, t: float, text: str) -> None:
        event = DeviceEvent(t, "text", raw=text)
        self.events.append(event)
        self.audio.advance(t)
        try:
            obj = json.loads(text)
        except ValueError:
            self.violations.append(f"non-JSON text frame (firmware logs 'Missing message type'): {text[:120]!r}")
            return
        if not isinstance(obj, dict):
            self.violations.append(f"text frame is JSON but not an object: {text[:120]!r}")
            return
        event.message = obj
        kind = obj.get("type")
        if not isinstance(kind, str):
            self.violations.append(f"text frame without a string 'type' (ignored by the firmware): {text[:120]!r}")
            return
        handler = _TEXT_HANDLERS.get(kind)
        if handler is None:
            self.warnings.append(f"message type {kind!r} is ignored by the firmware")
            return
        violations_before = len(self.violations)
        await handler(self, t, obj)
        if kind != "hello" and len(self.violations) == violations_before:
            # The firmware is lenient; also check the message against the strict protocol model
            # so sloppy-but-tolerated messages show up (as warnings, not violations).
            try:
                decode_message(text)
            except ProtocolError as exc:
                self.warnings.append(f"{kind}: {exc}")

    # -------------------------------------------------------------- per type

    async def _on_hello(self, t: float, obj: dict[str, Any]) -> None:
        transport = obj.get("transport")
        if not isinstance(transport, str):
            # ParseServerHello does strcmp(transport->valuestring, ...) unchecked.
            self.violations.append("server hello without a string 'transport': the firmware dereferences "
                                   "NULL and reboots")
            return
        if transport != "websocket":
            self.violations.append(f"server hello transport {transport!r} is not 'websocket': the firmware "
                                   "ignores this hello (then times out)")
            return
        session_id = obj.get("session_id")
        if isinstance(session_id, str):
            if any(c in session_id for c in '"\\') or any(ord(c) < 0x20 for c in session_id):
                self.violations.append("session_id contains characters the firmware echoes unescaped "
                                       "(its later messages become invalid JSON)")
            if not self.config.py_xiaozhi:  # py-xiaozhi never stores the WebSocket session_id
                self.session_id = session_id
        elif session_id is not None:
            self.warnings.append("server hello session_id is not a string (firmware keeps the old one)")
        params = obj.get("audio_params")
        if isinstance(params, dict):
            rate = _number(params.get("sample_rate"))
            if rate is not None:
                if rate not in OPUS_DECODE_RATES:
                    self.violations.append(f"server hello sample_rate {rate} is not an Opus decoder rate "
                                           f"{OPUS_DECODE_RATES}")
                else:
                    self.downlink_sample_rate = rate
            duration = _number(params.get("frame_duration"))
            if duration is not None:
                if duration not in _FRAME_DURATIONS:
                    self.warnings.append(f"server hello frame_duration {duration} is not a usual Opus duration")
                if duration > 0:
                    self.downlink_frame_duration = duration
        elif params is not None:
            self.warnings.append("server hello audio_params is not an object (firmware keeps the defaults)")
        if self.server_hello is not None:
            self.warnings.append("second server hello in one session (the firmware re-parses it)")
        self.server_hello = obj
        self.hello_received_at = t
        self.audio.new_audio_params(self.decode_sample_rate)
        if self.hello_arrived is not None:
            self.hello_arrived.set()

    async def _on_tts(self, t: float, obj: dict[str, Any]) -> None:
        state = obj.get("state")
        if not isinstance(state, str):
            self.violations.append("tts message without a string 'state' (ignored by the firmware)")
            return
        if state == "start":
            self.audio.tts_start(t)
        elif state == "stop":
            if self.config.clear_on_stop:
                self._clear_unplayed(t)
            self.audio.tts_stop(t)
        elif state == "sentence_start":
            if not isinstance(obj.get("text"), str):
                self.violations.append("tts sentence_start without a string 'text' (ignored by the firmware)")
        else:
            self.warnings.append(f"tts state {state!r} is ignored by the firmware")

    async def _on_stt(self, t: float, obj: dict[str, Any]) -> None:
        if not isinstance(obj.get("text"), str):
            self.violations.append("stt message without a string 'text' (ignored by the firmware)")

    async def _on_llm(self, t: float, obj: dict[str, Any]) -> None:
        if not isinstance(obj.get("emotion"), str):
            self.violations.append("llm message without a string 'emotion' (ignored by the firmware)")

    async def _on_mcp(self, t: float, obj: dict[str, Any]) -> None:
        payload = obj.get("payload")
        if not isinstance(payload, dict):
            self.violations.append("mcp message without an object 'payload' (ignored by the firmware)")
            return
        reply = self.mcp.handle(payload, t)
        if reply is not None and self.channel_open:
            # Protocol::SendMcpMessage wraps the hand-built JSON-RPC text verbatim.
            await self._send_text('{"session_id":' + json.dumps(self.session_id, ensure_ascii=False)
                                  + ',"type":"mcp","payload":' + reply + "}")

    async def _on_system(self, t: float, obj: dict[str, Any]) -> None:
        command = obj.get("command")
        if command == "reboot":
            self.reboot_requested = True  # the firmware would close the channel and restart
        elif isinstance(command, str):
            self.warnings.append(f"system command {command!r} is unknown to the firmware")
        else:
            self.violations.append("system message without a string 'command'")

    async def _on_alert(self, t: float, obj: dict[str, Any]) -> None:
        if all(isinstance(obj.get(k), str) for k in ("status", "message", "emotion")):
            self.alerts.append(obj)
        else:
            self.violations.append("alert needs string status, message and emotion (ignored by the firmware)")

    async def _on_ignored(self, t: float, obj: dict[str, Any]) -> None:
        # custom: only with CONFIG_RECEIVE_CUSTOM_MESSAGE (off by default); goodbye: MQTT only.
        self.warnings.append(f"{obj.get('type')} message is ignored by a default WebSocket firmware build")

    # -------------------------------------------------------------- audio

    def on_binary(self, t: float, data: bytes) -> None:
        event = DeviceEvent(t, "binary", raw=data)
        self.events.append(event)
        try:
            frame = unpack(self.protocol_version, data)
        except FramingError as exc:
            self.malformed_frames += 1
            event.drop_reason = "malformed"
            self.violations.append(f"binary frame does not match framing v{self.protocol_version}: {exc}")
            return
        event.payload, event.timestamp = frame.payload, frame.timestamp
        if not self.audio.speaking_now(t):
            # OnIncomingAudio pushes to the decode queue only in the speaking state.
            self.dropped_not_speaking += 1
            event.drop_reason = "not_speaking"
            return
        duration = opus_packet_duration_ms(frame.payload)
        if duration is None:
            self.malformed_frames += 1
            event.drop_reason = "malformed"
            self.violations.append(f"binary frame is not an Opus packet ({len(frame.payload)} bytes)")
            return
        event.duration_ms = duration
        if duration > self.downlink_frame_duration:
            self.violations.append(
                f"downlink Opus packet of {duration:g} ms is longer than the declared frame_duration "
                f"{self.downlink_frame_duration} ms (the firmware's decode buffer is sized from it)")
        accepted = self.audio.playback.push(t, duration / 1000)
        event.queue_depth = self.audio.playback.depth(t)
        if not accepted:
            event.drop_reason = "overflow"
            return
        event.accepted = True
        event.play_end = self.audio.playback.drained_at()
        if not self.config.decode_replies:
            return
        try:
            event.pcm = self.audio.decode(frame.payload)
        except ValueError as exc:
            self.violations.append(f"undecodable downlink Opus packet: {exc}")


    def _clear_unplayed(self, when: float) -> None:
        """A client that clears its playback buffer on `tts stop` (the browser page,
        py-xiaozhi in auto mode): frames of this reply not yet played at `when` are lost. Such a
        client plays `playback_delay_ms` later than the firmware model, and holds back the last
        `hold_back_ms` of a reply until more audio comes (the page plays in 120 ms blocks once
        240 ms are decoded)."""
        cfg = self.config
        frames = []
        for event in reversed(self.events):
            if event.kind == "text" and event.is_msg("tts", "start"):
                break
            if event.kind == "binary" and event.accepted and not event.cleared:
                frames.append(event)
        frames.reverse()
        held = 0.0
        for event in reversed(frames):
            if held >= cfg.hold_back_ms / 1000:
                break
            event.cleared = True  # still waiting for audio that never comes
            held += (event.duration_ms or 0) / 1000
        delay = cfg.playback_delay_ms / 1000
        for event in frames:
            if event.play_end is not None and event.play_end + delay > when:
                event.cleared = True


_Handler = Callable[[Firmware, float, dict[str, Any]], Awaitable[None]]
_TEXT_HANDLERS: dict[str, _Handler] = {
    "hello": Firmware._on_hello,
    "tts": Firmware._on_tts,
    "stt": Firmware._on_stt,
    "llm": Firmware._on_llm,
    "mcp": Firmware._on_mcp,
    "system": Firmware._on_system,
    "alert": Firmware._on_alert,
    "custom": Firmware._on_ignored,
    "goodbye": Firmware._on_ignored,
}
