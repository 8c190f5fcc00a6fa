"""SimDevice: a scripted xiaozhi-esp32 device (firmware v2.4.2, optionally py-xiaozhi style).

It speaks the wire protocol the way the firmware does (handshake headers, hello, framing v1/v2/v3,
60 ms 16 kHz DTX Opus uplink, device-side MCP) and judges the server the way the firmware would:
a server hello without a string `transport` would crash the device, audio outside the speaking
state is dropped, and audio sent faster than real time overflows the 40-packet decode queue.
Such findings are recorded in `violations` (things that break or degrade a real device) or
`warnings` (things the firmware silently ignores); the receive task never raises.

The device is composed, not mixed: `Firmware` (firmware.py) reacts to what the server sends and
holds the audio state machine (state.py); SimDevice owns the socket, OTA and the uplink, and
feeds the firmware every frame. The high-level turn helpers (`ask_audio`, `ask_text`) live in
turns.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar, overload
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from harness.devsim import turns
from harness.devsim.codec import UplinkEncoder
from harness.devsim.config import HELLO_TIMEOUT_S, DeviceConfig
from harness.devsim.events import DeviceEvent, SentRecord, TurnResult
from harness.devsim.firmware import Firmware
from harness.devsim.identity import (
    firmware_ota_body,
    firmware_ota_headers,
    ota_url,
    post_ota,
    py_xiaozhi_ota_body,
    py_xiaozhi_ota_headers,
)
from harness.devsim.mcp_device import DeviceMcpServer, McpRequest
from harness.devsim.playback import PlaybackQueueModel
from harness.devsim.state import Clock, DeviceState, ListenMode
from server.protocol import pack

__all__ = ["HELLO_TIMEOUT_S", "DeviceClosed", "DeviceConfig", "DeviceConnectError", "DeviceState",
           "HelloTimeout", "ListenMode", "SimDevice"]

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


T = TypeVar("T")


class _View(Generic[T]):
    """A read-only view of one of the firmware's fields (a dotted path from `SimDevice.firmware`),
    so tests keep reading `dev.violations` while the firmware object owns the state."""

    def __init__(self, path: str) -> None:
        self._path = path.split(".")

    @overload
    def __get__(self, device: None, owner: type) -> _View[T]: ...

    @overload
    def __get__(self, device: SimDevice, owner: type) -> T: ...

    def __get__(self, device: SimDevice | None, owner: type) -> T | _View[T]:
        if device is None:
            return self
        value: Any = device.firmware
        for part in self._path:
            value = getattr(value, part)
        return value  # type: ignore[no-any-return]


class SimDevice:
    """One simulated device. Typical use::

        async with SimDevice() as dev:
            await dev.ota("http://127.0.0.1:8003")
            await dev.connect()
            turn = await dev.ask_audio(await synthesize_speech("what time is it"))
    """

    def __init__(self, config: DeviceConfig | None = None, *, clock: Clock = time.monotonic,
                 **overrides: Any) -> None:
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
        self.clock = clock
        self.firmware = Firmware(cfg, self.mcp, self._send_text, clock=clock)
        # OTA results (NVS "websocket" namespace on the real device)
        self.ota_response: dict[str, Any] | None = None
        self.ws_url: str | None = None
        self.ws_token: str = ""
        self.ws_version: int = 1
        self.request_headers: list[tuple[str, str]] = []
        self.handshake_status: int | None = None
        self.handshake_response_headers: dict[str, str] = {}
        # what the device sent
        self.sent: list[SentRecord] = []
        self.frame_send_times: list[float] = []
        self.last_frame_sent_at: float | None = None
        self._encoder = UplinkEncoder(cfg.frame_duration)
        # connection
        self._ws: ClientConnection | None = None
        self._recv_task: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None
        self._stream_lock: asyncio.Lock | None = None
        self.closed = True

    # ------------------------------------------------------------------ properties

    # The firmware's observations, read through the device (the tests' vocabulary).
    state: _View[DeviceState] = _View("audio.state")
    mic_on: _View[bool] = _View("audio.mic_on")
    listening_mode: _View[ListenMode] = _View("audio.listening_mode")
    playback: _View[PlaybackQueueModel] = _View("audio.playback")
    events: _View[list[DeviceEvent]] = _View("events")
    violations: _View[list[str]] = _View("violations")
    warnings: _View[list[str]] = _View("warnings")
    internal_errors: _View[list[str]] = _View("internal_errors")
    alerts: _View[list[dict[str, Any]]] = _View("alerts")
    reboot_requested: _View[bool] = _View("reboot_requested")
    session_id: _View[str] = _View("session_id")
    protocol_version: _View[int] = _View("protocol_version")
    server_hello: _View[dict[str, Any] | None] = _View("server_hello")
    hello_received_at: _View[float | None] = _View("hello_received_at")
    downlink_sample_rate: _View[int] = _View("downlink_sample_rate")
    downlink_frame_duration: _View[int] = _View("downlink_frame_duration")
    decode_sample_rate: _View[int] = _View("decode_sample_rate")
    dropped_not_speaking: _View[int] = _View("dropped_not_speaking")
    malformed_frames: _View[int] = _View("malformed_frames")

    @property
    def max_queue_depth(self) -> int:
        return self.playback.max_depth

    @property
    def overflow_drops(self) -> int:
        return self.playback.overflow_drops

    @property
    def mcp_calls(self) -> list[McpRequest]:
        return self.mcp.calls

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
        data = await post_ota(url, headers, body, timeout, local_address=self.config.local_address)
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
        version = protocol_version or self.ws_version or 1
        headers = self._handshake_headers(token, version)
        if extra_headers:
            items = extra_headers.items() if isinstance(extra_headers, dict) else extra_headers
            headers += list(items)
        self.request_headers = headers
        self.firmware.channel_opening(version)
        hello_arrived = self.firmware.hello_arrived
        assert hello_arrived is not None
        self._changed = asyncio.Event()
        try:
            ws = await connect(
                url, additional_headers=headers, compression=None, user_agent_header=None, proxy=None,
                open_timeout=HANDSHAKE_TIMEOUT_S, close_timeout=2,
                # The firmware never pings; py-xiaozhi pings every 20 s.
                ping_interval=20 if self.config.py_xiaozhi else None, ping_timeout=20,
                **({"local_addr": (self.config.local_address, 0)} if self.config.local_address else {}))
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
            await asyncio.wait_for(hello_arrived.wait(), self.config.hello_timeout)
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
        self.firmware.audio.cancel_relisten()
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

    async def _receive_loop(self, ws: ClientConnection) -> None:
        try:
            async for data in ws:
                await self.firmware.on_frame(data)
                self._notify()
        except ConnectionClosed:
            pass
        except Exception as exc:
            self.internal_errors.append(f"receive loop ended: {exc!r}")
        finally:
            self.firmware.channel_closed(ws.close_code, ws.close_reason)
            self.closed = True
            self._notify()

    async def wait_relisten(self) -> None:
        """Wait for a pending automatic listen start (auto mode, after playback drained)."""
        await self.firmware.audio.wait_relisten()

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
        now = self.clock()
        self.sent.append(SentRecord(now, "text", text))
        return now

    async def listen_start(self, mode: ListenMode = "auto") -> float:
        """Enter listening and open the mic; returns the send time."""
        self.firmware.audio.cancel_relisten()
        sent_at = await self._send_text(self.firmware.message({"type": "listen", "state": "start", "mode": mode}))
        self.firmware.audio.listening(mode)
        return sent_at

    async def listen_stop(self) -> float:
        """Push-to-talk release: the firmware sends listen stop and goes idle (mic off)."""
        self.firmware.audio.cancel_relisten()
        sent_at = await self._send_text(self.firmware.message({"type": "listen", "state": "stop"}))
        self.firmware.audio.stopped_listening()
        return sent_at

    async def listen_detect(self, text: str) -> float:
        return await self._send_text(self.firmware.message({"type": "listen", "state": "detect", "text": text}))

    async def abort(self, reason: str | None = None) -> float:
        """The firmware does not change state on abort; it waits for the server's tts stop."""
        fields: dict[str, Any] = {"type": "abort"}
        if reason is not None:
            fields["reason"] = reason
        return await self._send_text(self.firmware.message(fields))

    async def send_text_raw(self, text: str) -> float:
        return await self._send_text(text)

    async def send_binary_raw(self, data: bytes) -> float:
        await self._require_ws().send(data)
        now = self.clock()
        self.sent.append(SentRecord(now, "binary", data))
        return now

    async def send_opus(self, packet: bytes, timestamp: int = 0) -> float:
        """Send one Opus packet framed with the negotiated version; returns the send time."""
        await self._require_ws().send(pack(self.protocol_version, packet, timestamp))
        now = self.clock()
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
            if self.firmware.audio.take_new_mic_stream():
                self._encoder.reset()
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
