"""Handling of frames received from the server, as the firmware would handle them.

Firmware references: WebsocketProtocol::OnData / ParseServerHello (websocket_protocol.cc) and
Application::InitializeProtocol's OnIncomingJson / OnIncomingAudio (application.cc).
Split out of device.py to keep modules small; SimDevice is the only user.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from harness.devsim.codec import opus_packet_duration_ms
from harness.devsim.events import DeviceEvent
from server.audio.opus import OpusDecoder
from server.protocol import FramingError, ProtocolError, decode_message, unpack

if TYPE_CHECKING:
    from harness.devsim.device import SimDevice

log = logging.getLogger(__name__)

OPUS_DECODE_RATES = (8000, 12000, 16000, 24000, 48000)
_FRAME_DURATIONS = (10, 20, 40, 60, 80, 100, 120)
_INT_MAX = 2**31 - 1


def _number(value: Any) -> int | None:
    """cJSON_IsNumber + valueint (saturated)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return max(-_INT_MAX - 1, min(_INT_MAX, int(value)))


class ReceiveMixin:
    async def _receive_loop(self: SimDevice, ws: ClientConnection) -> None:
        try:
            async for data in ws:
                t = time.monotonic()
                try:
                    if isinstance(data, str):
                        await self._on_text(t, data)
                    else:
                        self._on_binary(t, data)
                except Exception as exc:  # our bug, not the server's: record it, keep receiving
                    log.exception("devsim failed to handle a frame")
                    self.internal_errors.append(f"error handling a frame: {exc!r}")
                self._notify()
        except ConnectionClosed:
            pass
        except Exception as exc:
            self.internal_errors.append(f"receive loop ended: {exc!r}")
        finally:
            self.events.append(DeviceEvent(time.monotonic(), "close", close_code=ws.close_code,
                                           close_reason=ws.close_reason))
            self.closed = True
            self._state, self._mic_on = "idle", False
            if self._hello_event is not None:
                self._hello_event.set()  # wake connect(); it sees server_hello is None
            self._notify()

    async def _on_text(self: SimDevice, t: float, text: str) -> None:
        event = DeviceEvent(t, "text", raw=text)
        self.events.append(event)
        self._advance(t)
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

    async def _on_hello(self: SimDevice, t: float, obj: dict[str, Any]) -> None:
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
        if self._state == "speaking":
            self._decoder = OpusDecoder(self.decode_sample_rate)
        if self._hello_event is not None:
            self._hello_event.set()

    async def _on_tts(self: SimDevice, t: float, obj: dict[str, Any]) -> None:
        state = obj.get("state")
        if not isinstance(state, str):
            self.violations.append("tts message without a string 'state' (ignored by the firmware)")
            return
        if state == "start":
            self._schedule(t, lambda when: self._set_state("speaking", when))
        elif state == "stop":
            def stop(when: float) -> None:
                # Only meaningful while speaking: manual mode goes idle, the others listen again.
                if self._state == "speaking":
                    self._set_state("idle" if self.listening_mode == "manual" else "listening", when)
            self._schedule(t, stop)
        elif state == "sentence_start":
            if not isinstance(obj.get("text"), str):
                self.violations.append("tts sentence_start without a string 'text' (ignored by the firmware)")
        else:
            self.warnings.append(f"tts state {state!r} is ignored by the firmware")

    async def _on_stt(self: SimDevice, t: float, obj: dict[str, Any]) -> None:
        if not isinstance(obj.get("text"), str):
            self.violations.append("stt message without a string 'text' (ignored by the firmware)")

    async def _on_llm(self: SimDevice, t: float, obj: dict[str, Any]) -> None:
        if not isinstance(obj.get("emotion"), str):
            self.violations.append("llm message without a string 'emotion' (ignored by the firmware)")

    async def _on_mcp(self: SimDevice, t: float, obj: dict[str, Any]) -> None:
        payload = obj.get("payload")
        if not isinstance(payload, dict):
            self.violations.append("mcp message without an object 'payload' (ignored by the firmware)")
            return
        reply = self.mcp.handle(payload, t)
        if reply is not None and not self.closed:
            # Protocol::SendMcpMessage wraps the hand-built JSON-RPC text verbatim.
            await self._send_text('{"session_id":' + json.dumps(self.session_id, ensure_ascii=False)
                                  + ',"type":"mcp","payload":' + reply + "}")

    async def _on_system(self: SimDevice, t: float, obj: dict[str, Any]) -> None:
        command = obj.get("command")
        if command == "reboot":
            self.reboot_requested = True  # the firmware would close the channel and restart
        elif isinstance(command, str):
            self.warnings.append(f"system command {command!r} is unknown to the firmware")
        else:
            self.violations.append("system message without a string 'command'")

    async def _on_alert(self: SimDevice, t: float, obj: dict[str, Any]) -> None:
        if all(isinstance(obj.get(k), str) for k in ("status", "message", "emotion")):
            self.alerts.append(obj)
        else:
            self.violations.append("alert needs string status, message and emotion (ignored by the firmware)")

    async def _on_ignored(self: SimDevice, t: float, obj: dict[str, Any]) -> None:
        # custom: only with CONFIG_RECEIVE_CUSTOM_MESSAGE (off by default); goodbye: MQTT only.
        self.warnings.append(f"{obj.get('type')} message is ignored by a default WebSocket firmware build")

    # -------------------------------------------------------------- audio

    def _on_binary(self: SimDevice, t: float, data: bytes) -> None:
        event = DeviceEvent(t, "binary", raw=data)
        self.events.append(event)
        self._advance(t)
        try:
            frame = unpack(self.protocol_version, data)
        except FramingError as exc:
            self.malformed_frames += 1
            event.drop_reason = "malformed"
            self.violations.append(f"binary frame does not match framing v{self.protocol_version}: {exc}")
            return
        event.payload, event.timestamp = frame.payload, frame.timestamp
        if self._state != "speaking":
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
        accepted = self.playback.push(t, duration / 1000)
        event.queue_depth = self.playback.depth(t)
        if not accepted:
            event.drop_reason = "overflow"
            return
        event.accepted = True
        if self._decoder is None:
            self._decoder = OpusDecoder(self.decode_sample_rate)
        try:
            event.pcm = self._decoder.decode(frame.payload)
        except ValueError as exc:
            self.violations.append(f"undecodable downlink Opus packet: {exc}")


_Handler = Callable[["SimDevice", float, dict[str, Any]], Awaitable[None]]
_TEXT_HANDLERS: dict[str, _Handler] = {
    "hello": ReceiveMixin._on_hello,
    "tts": ReceiveMixin._on_tts,
    "stt": ReceiveMixin._on_stt,
    "llm": ReceiveMixin._on_llm,
    "mcp": ReceiveMixin._on_mcp,
    "system": ReceiveMixin._on_system,
    "alert": ReceiveMixin._on_alert,
    "custom": ReceiveMixin._on_ignored,
    "goodbye": ReceiveMixin._on_ignored,
}
