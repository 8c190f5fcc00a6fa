"""SimDevice: a scripted xiaozhi-esp32 device (firmware v2.4.2, optionally py-xiaozhi style).

It speaks the wire protocol the way the firmware does (handshake headers, hello, framing v1/v2/v3,
60 ms 16 kHz DTX Opus uplink, device-side MCP) and judges the server the way the firmware would:
a server hello without a string `transport` would crash the device, audio outside the speaking
state is dropped, and audio sent faster than real time overflows the 40-packet decode queue.
Such findings are recorded in `violations` (things that break or degrade a real device) or
`warnings` (things the firmware silently ignores); the receive task never raises.

The high-level turn helpers (`ask_audio`, `ask_text`) live in turns.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

from harness.devsim import turns
from harness.devsim.codec import UplinkEncoder
from harness.devsim.events import DeviceEvent, SentRecord, TurnResult
from harness.devsim.identity import (
    DeviceIdentity,
    firmware_ota_body,
    firmware_ota_headers,
    ota_url,
    post_ota,
    py_xiaozhi_ota_body,
    py_xiaozhi_ota_headers,
)
from harness.devsim.mcp_device import DeviceMcpServer, McpRequest, McpTool
from harness.devsim.playback import MAX_DECODE_PACKETS_IN_QUEUE, PlaybackQueueModel
from harness.devsim.receive import ReceiveMixin
from harness.devsim.state import DeviceState, ListenMode, StateMachineMixin
from server.audio.opus import OpusDecoder
from server.protocol import pack

HELLO_TIMEOUT_S = 10.0  # WebsocketProtocol::OpenAudioChannel waits 10 s for the server hello
HANDSHAKE_TIMEOUT_S = 10.0  # esp-ml307 WebSocket::Connect


class DeviceConnectError(ConnectionError):
    """The WebSocket upgrade failed (status is the HTTP status if the server answered)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class HelloTimeout(DeviceConnectError):
    """No valid server hello arrived in time; the firmware closes the channel (SERVER_TIMEOUT)."""


class DeviceClosed(ConnectionError):
    """The connection is closed and no recorded event matched."""


@dataclass(slots=True)
class DeviceConfig:
    identity: DeviceIdentity = field(default_factory=DeviceIdentity)
    frame_duration: int = 60  # uplink Opus frame; py-xiaozhi on x86 uses 20
    py_xiaozhi: bool = False  # empty session_id, features {"mcp": true}, WS pings, decode at 24 kHz
    glyph_push_feature: bool = True  # v2.4.2 always sends features.glyph_push (false)
    aec_feature: bool = False  # features.aec (server-side AEC build)
    hello_timeout: float = HELLO_TIMEOUT_S
    auto_relisten: bool = True  # auto mode: send listen start again once playback drained
    state_change_delay_ms: float = 0.0  # the firmware applies tts start/stop on its main loop
    decode_queue_capacity: int = MAX_DECODE_PACKETS_IN_QUEUE
    tools: Sequence[McpTool] | None = None  # replaces the default MCP tools
    extra_tools: Sequence[McpTool] = ()  # appended after the default tools
    volume: int = 70


class SimDevice(ReceiveMixin, StateMachineMixin):
    """One simulated device. Typical use::

        async with SimDevice() as dev:
            await dev.ota("http://127.0.0.1:8003")
            await dev.connect()
            turn = await dev.ask_audio(await synthesize_speech("what time is it"))
    """

    def __init__(self, config: DeviceConfig | None = None, **overrides: Any) -> None:
        cfg = config or DeviceConfig()
        if overrides:
            cfg = dataclasses.replace(cfg, **overrides)
        self.config = cfg
        self.identity = cfg.identity
        self.mcp = DeviceMcpServer.with_defaults(
            cfg.extra_tools, board_name=self.identity.board_name,
            firmware_version=self.identity.firmware_version)
        self.mcp.status.volume = cfg.volume
        if cfg.tools is not None:
            self.mcp.tools = list(cfg.tools) + list(cfg.extra_tools)
        # OTA results (NVS "websocket" namespace on the real device)
        self.ota_response: dict[str, Any] | None = None
        self.ws_url: str | None = None
        self.ws_token: str = ""
        self.ws_version: int = 1
        # session
        self.protocol_version = 1
        self.session_id = ""
        self.server_hello: dict[str, Any] | None = None
        self.hello_received_at: float | None = None
        self.downlink_sample_rate = 24000  # Protocol::server_sample_rate_ default
        self.downlink_frame_duration = 60
        self.request_headers: list[tuple[str, str]] = []
        self.handshake_status: int | None = None
        self.handshake_response_headers: dict[str, str] = {}
        # records
        self.events: list[DeviceEvent] = []
        self.sent: list[SentRecord] = []
        self.frame_send_times: list[float] = []
        self.last_frame_sent_at: float | None = None
        self.violations: list[str] = []
        self.warnings: list[str] = []
        self.internal_errors: list[str] = []
        self.alerts: list[dict[str, Any]] = []
        self.reboot_requested = False
        # audio state machine
        self.playback = PlaybackQueueModel(capacity=cfg.decode_queue_capacity)
        self.dropped_not_speaking = 0
        self.malformed_frames = 0
        self.listening_mode: ListenMode = "auto"
        self._state: DeviceState = "idle"
        self._mic_on = False
        self._pending: list[tuple[float, Callable[[float], None]]] = []
        self._decoder: OpusDecoder | None = None
        self._encoder = UplinkEncoder(cfg.frame_duration)
        # Each listen start begins a fresh mic stream; the reset is applied by the next
        # stream_audio() under its lock, never while a worker thread is encoding.
        self._encoder_reset_pending = False
        # connection
        self._ws: ClientConnection | None = None
        self._recv_task: asyncio.Task[None] | None = None
        self._relisten_task: asyncio.Task[None] | None = None
        self._hello_event: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None
        self._stream_lock: asyncio.Lock | None = None
        self.closed = True

    # ------------------------------------------------------------------ properties

    @property
    def state(self) -> DeviceState:
        self._advance(time.monotonic())
        return self._state

    @property
    def mic_on(self) -> bool:
        self._advance(time.monotonic())
        return self._mic_on

    @property
    def max_queue_depth(self) -> int:
        return self.playback.max_depth

    @property
    def overflow_drops(self) -> int:
        return self.playback.overflow_drops

    @property
    def mcp_calls(self) -> list[McpRequest]:
        return self.mcp.calls

    @property
    def decode_sample_rate(self) -> int:
        # py-xiaozhi decodes at its configured 24 kHz whatever the server hello says.
        return 24000 if self.config.py_xiaozhi else self.downlink_sample_rate

    def messages(self, type_: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        """Parsed text messages received so far, optionally filtered by type and state."""
        return [e.message for e in self.events
                if e.message is not None and (type_ is None or e.is_msg(type_, state))]

    # ------------------------------------------------------------------ OTA

    async def ota(self, http_base_url: str, timeout: float = 30.0) -> dict[str, Any]:
        """POST the firmware's check-version request; store websocket url/token/version."""
        url = ota_url(http_base_url)
        if self.config.py_xiaozhi:
            headers, body = py_xiaozhi_ota_headers(self.identity), py_xiaozhi_ota_body(self.identity)
        else:
            headers, body = firmware_ota_headers(self.identity), firmware_ota_body(self.identity)
        data = await post_ota(url, headers, body, timeout)
        self.ota_response = data
        ws = data.get("websocket")
        if isinstance(ws, dict):
            # Ota::CheckVersion stores every string/number member verbatim in NVS.
            if isinstance(ws.get("url"), str):
                self.ws_url = ws["url"]
            if isinstance(ws.get("token"), str):
                self.ws_token = ws["token"]
            version = ws.get("version")
            if isinstance(version, int | float) and not isinstance(version, bool) and int(version) != 0:
                self.ws_version = int(version)
        if "mqtt" in data:
            self.warnings.append("OTA response has an 'mqtt' section: the firmware would choose MQTT")
        if "activation" in data:
            self.warnings.append("OTA response has an 'activation' section: the firmware would loop in activation")
        return data

    # ------------------------------------------------------------------ connection

    def _handshake_headers(self, token: str, version: int) -> list[tuple[str, str]]:
        ident = self.identity
        if self.config.py_xiaozhi:
            return [("Authorization", f"Bearer {token or 'test-token'}"), ("Protocol-Version", str(version)),
                    ("Device-Id", ident.mac), ("Client-Id", ident.client_id)]
        headers: list[tuple[str, str]] = []
        if token:
            headers.append(("Authorization", token if " " in token else f"Bearer {token}"))
        # esp-ml307 keeps headers in a std::map: ASCII order.
        headers += [("Client-Id", ident.client_id), ("Device-Id", ident.mac), ("Protocol-Version", str(version))]
        return headers

    def hello_message(self) -> str:
        features: dict[str, Any] = {}
        if self.config.aec_feature:
            features["aec"] = True
        features["mcp"] = True
        if self.config.glyph_push_feature and not self.config.py_xiaozhi:
            features["glyph_push"] = False
        return json.dumps({
            "type": "hello", "version": self.protocol_version, "features": features, "transport": "websocket",
            "audio_params": {"format": "opus", "sample_rate": 16000, "channels": 1,
                             "frame_duration": self.config.frame_duration},
        }, separators=(",", ":"))

    async def connect(
        self,
        url: str | None = None,
        token: str | None = None,
        protocol_version: int | None = None,
        extra_headers: Sequence[tuple[str, str]] | dict[str, str] | None = None,
        query: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Open the WebSocket like the firmware, send its hello, and wait for a valid server
        hello. Defaults come from the last `ota()`. Returns the server hello."""
        if self._ws is not None and not self.closed:
            raise RuntimeError("already connected")
        url = url or self.ws_url
        if not url:
            raise ValueError("no WebSocket URL: call ota() first or pass url=")
        if query:
            url += ("&" if "?" in url else "?") + urlencode(query)
        token = self.ws_token if token is None else token
        self.protocol_version = protocol_version or self.ws_version or 1
        headers = self._handshake_headers(token, self.protocol_version)
        if extra_headers:
            items = extra_headers.items() if isinstance(extra_headers, dict) else extra_headers
            headers += list(items)
        self.request_headers = headers
        # A new channel: the firmware keeps the old session_id until a hello replaces it.
        self._hello_event = asyncio.Event()
        self._changed = asyncio.Event()
        self.server_hello = None
        self._state, self._mic_on, self._pending = "idle", False, []
        self.playback.reset()
        try:
            ws = await connect(
                url, additional_headers=headers, compression=None, user_agent_header=None, proxy=None,
                open_timeout=HANDSHAKE_TIMEOUT_S, close_timeout=2,
                # The firmware never pings; py-xiaozhi pings every 20 s.
                ping_interval=20 if self.config.py_xiaozhi else None, ping_timeout=20)
        except InvalidStatus as exc:
            self.handshake_status = exc.response.status_code
            raise DeviceConnectError(f"server rejected the upgrade: HTTP {exc.response.status_code}",
                                     exc.response.status_code) from None
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            raise DeviceConnectError(f"WebSocket connect to {url} failed: {exc!r}") from None
        self._ws = ws
        self.closed = False
        if ws.response is not None:
            self.handshake_status = ws.response.status_code
            self.handshake_response_headers = dict(ws.response.headers.raw_items())
        self._recv_task = asyncio.create_task(self._receive_loop(ws), name="devsim-receive")
        try:
            await self._send_text(self.hello_message())
        except Exception as exc:  # the server closed right after the upgrade
            await self.close()
            raise DeviceConnectError(f"could not send the hello: {exc!r}") from None
        try:
            await asyncio.wait_for(self._hello_event.wait(), self.config.hello_timeout)
        except TimeoutError:
            self.violations.append(
                f"no valid server hello within {self.config.hello_timeout:g} s (firmware: SERVER_TIMEOUT)")
            await self.close()
            raise HelloTimeout("no valid server hello in time") from None
        if self.server_hello is None:
            raise DeviceConnectError("connection closed before the server hello")
        return self.server_hello

    async def close(self, abrupt: bool = False) -> None:
        """Close the channel. `abrupt=True` drops the TCP connection without a close frame, which
        is what the firmware does (it just destroys the socket)."""
        if self._relisten_task is not None:
            self._relisten_task.cancel()
        ws = self._ws
        if ws is not None:
            if abrupt:
                ws.transport.abort()
            else:
                with contextlib.suppress(Exception):
                    await ws.close()
        if self._recv_task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._recv_task, 5)
        self.closed = True

    async def __aenter__(self) -> SimDevice:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ waiting

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def wait_for(
        self, predicate: Callable[[DeviceEvent], bool], timeout: float = 10.0, start: int = 0,
    ) -> DeviceEvent:
        """First recorded event from index `start` on that satisfies `predicate`, waiting up to
        `timeout` s. Raises TimeoutError, or DeviceClosed once the connection is gone."""
        deadline = time.monotonic() + timeout
        index = start
        while True:
            while index < len(self.events):
                event = self.events[index]
                index += 1
                if predicate(event):
                    return event
            if self.closed:
                raise DeviceClosed("connection closed before a matching event arrived")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching event within {timeout:g} s")
            if self._changed is None:
                self._changed = asyncio.Event()
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_for_message(self, type_: str, state: str | None = None, timeout: float = 10.0,
                               start: int = 0) -> dict[str, Any]:
        event = await self.wait_for(lambda e: e.is_msg(type_, state), timeout, start)
        assert event.message is not None
        return event.message

    # ------------------------------------------------------------------ sending

    def _require_ws(self) -> ClientConnection:
        if self._ws is None or self.closed:
            raise DeviceClosed("not connected")
        return self._ws

    async def _send_text(self, text: str) -> float:
        await self._require_ws().send(text)
        now = time.monotonic()
        self.sent.append(SentRecord(now, "text", text))
        return now

    def _fw_message(self, fields: dict[str, Any]) -> str:
        # Protocol::Send* concatenate {"session_id":"...","type":...} in this order.
        return json.dumps({"session_id": self.session_id, **fields}, ensure_ascii=False, separators=(",", ":"))

    async def listen_start(self, mode: ListenMode = "auto") -> float:
        """Enter listening and open the mic; returns the send time."""
        self._cancel_relisten()
        self.listening_mode = mode
        sent_at = await self._send_text(self._fw_message({"type": "listen", "state": "start", "mode": mode}))
        self._state, self._mic_on = "listening", True
        self._encoder_reset_pending = True
        return sent_at

    async def listen_stop(self) -> float:
        """Push-to-talk release: the firmware sends listen stop and goes idle (mic off)."""
        self._cancel_relisten()
        sent_at = await self._send_text(self._fw_message({"type": "listen", "state": "stop"}))
        self._state, self._mic_on = "idle", False
        return sent_at

    async def listen_detect(self, text: str) -> float:
        return await self._send_text(self._fw_message({"type": "listen", "state": "detect", "text": text}))

    async def abort(self, reason: str | None = None) -> float:
        """The firmware does not change state on abort; it waits for the server's tts stop."""
        fields: dict[str, Any] = {"type": "abort"}
        if reason is not None:
            fields["reason"] = reason
        return await self._send_text(self._fw_message(fields))

    async def send_text_raw(self, text: str) -> float:
        return await self._send_text(text)

    async def send_binary_raw(self, data: bytes) -> float:
        await self._require_ws().send(data)
        now = time.monotonic()
        self.sent.append(SentRecord(now, "binary", data))
        return now

    async def send_opus(self, packet: bytes, timestamp: int = 0) -> float:
        """Send one Opus packet framed with the negotiated version; returns the send time."""
        await self._require_ws().send(pack(self.protocol_version, packet, timestamp))
        now = time.monotonic()
        self.sent.append(SentRecord(now, "binary", packet))
        self.frame_send_times.append(now)
        self.last_frame_sent_at = now
        return now

    async def stream_audio(self, pcm16k: bytes, realtime: bool = True, *, stop_when_mic_off: bool = False,
                           flush: bool = True) -> list[float]:
        """Encode 16 kHz PCM into frame_duration Opus packets and send them, paced like a
        microphone: packet i leaves at t0 + (i+1) * frame (when it would have been captured),
        against the monotonic clock so sleep overshoot never accumulates. With
        `stop_when_mic_off` the stream ends as soon as the device would stop its mic (entering
        speaking outside realtime mode, or idle). Returns the send time of every packet.
        Raises DeviceClosed / websockets.ConnectionClosed if the connection goes away."""
        if self._stream_lock is None:
            self._stream_lock = asyncio.Lock()
        async with self._stream_lock:
            if self._encoder_reset_pending:
                self._encoder.reset()
                self._encoder_reset_pending = False
            encode = self._encoder.encode_all if flush else self._encoder.encode
            packets = await asyncio.to_thread(encode, pcm16k)
            frame_s = self.config.frame_duration / 1000
            times: list[float] = []
            t0 = time.monotonic()
            for i, packet in enumerate(packets):
                if realtime:
                    delay = t0 + (i + 1) * frame_s - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                if stop_when_mic_off and not self.mic_on:
                    break
                times.append(await self.send_opus(packet))
            return times

    async def send_wake_word(self, pcm16k: bytes, wake_word: str = "你好小智") -> None:
        """Wake-word start: the firmware re-encodes its ~2 s wake-word buffer and sends the
        packets back to back, then `listen detect`. Follow with listen_start() as it does."""
        packets = await asyncio.to_thread(UplinkEncoder(self.config.frame_duration).encode_all, pcm16k)
        for packet in packets:
            await self.send_opus(packet)
        await self.listen_detect(wake_word)

    # ------------------------------------------------------------------ turns

    async def ask_audio(self, pcm16k: bytes, mode: ListenMode = "auto", trailing_silence_ms: int = 1500,
                        timeout: float = 60.0) -> TurnResult:
        """One spoken turn: listen start, speech then silence in real time (manual mode: speech
        then listen stop), until `tts stop` or timeout. See turns.ask_audio."""
        return await turns.ask_audio(self, pcm16k, mode, trailing_silence_ms, timeout)

    async def ask_text(self, text: str, timeout: float = 60.0) -> TurnResult:
        """py-xiaozhi text chat: listen start manual + listen detect <text>, until tts stop."""
        return await turns.ask_text(self, text, timeout)
