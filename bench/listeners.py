"""Light listening devices for the idle benchmark: a thousand of them from one tester process.

A `SimDevice` (harness/devsim) is a faithful firmware with a websockets client, a record of
every frame and a task per connection; a thousand of them cost the tester more CPU than the
server they measure, and the tester falls behind its own frame schedule (it connected 381 devices
in 10 minutes on a loaded machine). A listening device does very little on the wire, so this one
speaks it directly on an asyncio transport:

- the OTA request is the caller's business (optional; it does not change what a listening
  connection costs);
- the WebSocket upgrade with the firmware's headers (Authorization, Protocol-Version, Device-Id,
  Client-Id), `hello` with the firmware's features (mcp), answers to the server's MCP
  `initialize` and `tools/list` (an empty tool list), and `listen start auto`;
- then binary frames of the looped uplink clip, built and masked once per packet and written to
  every transport (RFC 6455 only requires a client to mask; reusing a mask is harmless here);
- pings are answered with pongs; everything else the server sends is parsed and dropped.

One pacing task sends for all devices, spread over the 60 ms frame period as unsynchronised
boards would be.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import struct
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

FRAME_MS = 60
PACING_SLOTS = 6
HANDSHAKE_TIMEOUT_S = 30.0

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def _mask_key(mask: bytes, n: int) -> int:
    whole = (mask * (n // 4 + 1))[:n]
    return int.from_bytes(whole, "big")


def masked_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """One final, masked client frame (the key repeated over the payload, then XOR)."""
    mask = mask or os.urandom(4)
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    body = (int.from_bytes(payload, "big") ^ _mask_key(mask, n)).to_bytes(n, "big") if n else b""
    return header + mask + body


def _mac(index: int) -> str:
    # Locally administered unicast MACs (02:...), unique per index within a run.
    tail = (os.getpid() & 0xFF, (index >> 16) & 0xFF, (index >> 8) & 0xFF, index & 0xFF)
    return "02:5a:" + ":".join(f"{b:02x}" for b in tail)


@dataclass
class ListenerStats:
    mcp_answered: int = 0
    pings: int = 0
    text_frames: int = 0
    binary_frames: int = 0


class RawListener(asyncio.Protocol):
    """One listening device on one TCP connection."""

    def __init__(self, index: int, host_header: str, path: str, token: str = "") -> None:
        self.index = index
        self.device_id = _mac(index)
        self.client_id = str(uuid.uuid4())
        self.host_header = host_header
        self.path = path
        self.token = token
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.close_code: int | None = None
        self.session_id = ""
        self.stats = ListenerStats()
        self._buf = bytearray()
        self._upgraded = False
        self._hello: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        headers = [f"GET {self.path} HTTP/1.1", f"Host: {self.host_header}", "Upgrade: websocket",
                   "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
                   f"Authorization: Bearer {self.token or 'listener'}", f"Client-Id: {self.client_id}",
                   f"Device-Id: {self.device_id}", "Protocol-Version: 1"]
        transport.write(("\r\n".join(headers) + "\r\n\r\n").encode())

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._upgraded:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self._buf[:end]).split(b"\r\n", 1)[0]
            del self._buf[:end + 4]
            if b" 101 " not in status + b" ":
                self._fail(f"upgrade refused: {status.decode('latin-1')[:80]}")
                return
            self._upgraded = True
            self._send_json({"type": "hello", "version": 1, "features": {"mcp": True}, "transport": "websocket",
                             "audio_params": {"format": "opus", "sample_rate": 16000, "channels": 1,
                                              "frame_duration": FRAME_MS}})
        self._frames()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(f"connection lost before hello: {exc or 'closed by the server'}")
        if not self._lost.done():
            self._lost.set_result(None)

    # ------------------------------------------------------------------ frames from the server

    def _frames(self) -> None:
        buf = self._buf
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            n, at = b1 & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    return
                n, at = struct.unpack_from("!H", buf, 2)[0], 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n, at = struct.unpack_from("!Q", buf, 2)[0], 10
            if b1 & 0x80:  # a server never masks; tolerate it anyway
                at += 4
            if len(buf) < at + n:
                return
            payload = bytes(buf[at:at + n])
            del buf[:at + n]
            self._on_frame(b0 & 0x0F, payload)

    def _on_frame(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            self.stats.pings += 1
            self._write(masked_frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            self._write(masked_frame(OP_CLOSE, payload[:2]))
            if self.transport is not None:
                self.transport.close()
        elif opcode == OP_TEXT:
            self.stats.text_frames += 1
            self._on_text(payload)
        elif opcode == OP_BINARY:
            self.stats.binary_frames += 1

    def _on_text(self, payload: bytes) -> None:
        try:
            msg = json.loads(payload)
        except ValueError:
            return
        if not isinstance(msg, dict):
            return
        if msg.get("type") == "hello" and not self._hello.done():
            self.session_id = str(msg.get("session_id") or "")
            self._hello.set_result(msg)
        elif msg.get("type") == "mcp":
            request = msg.get("payload") or {}
            if isinstance(request, dict) and "id" in request:
                method = request.get("method")
                result: dict[str, Any] = {}
                if method == "initialize":
                    result = {"protocolVersion": "2024-11-05", "capabilities": {"tools": {}},
                              "serverInfo": {"name": "bench-listener", "version": "1"}}
                elif method == "tools/list":
                    result = {"tools": []}
                self.stats.mcp_answered += 1
                self._send_json({"session_id": self.session_id, "type": "mcp",
                                 "payload": {"jsonrpc": "2.0", "id": request["id"], "result": result}})

    # ------------------------------------------------------------------ to the server

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _send_json(self, msg: dict[str, Any]) -> None:
        self._write(masked_frame(OP_TEXT, json.dumps(msg, separators=(",", ":")).encode()))

    def send_prebuilt(self, frame: bytes) -> bool:
        if self.closed or self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(frame)
        return True

    def _fail(self, why: str) -> None:
        if not self._hello.done():
            self._hello.set_exception(ConnectionError(why))
            # ready() may have given up already (timeout): mark the exception seen, so asyncio
            # does not log it as never retrieved.
            self._hello.exception()
        if self.transport is not None:
            self.transport.close()

    async def ready(self) -> dict[str, Any]:
        """Waits for the server's hello, then starts listening (auto mode)."""
        hello = await asyncio.wait_for(asyncio.shield(self._hello), HANDSHAKE_TIMEOUT_S)
        self._send_json({"session_id": self.session_id, "type": "listen", "state": "start", "mode": "auto"})
        return hello

    async def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._write(masked_frame(OP_CLOSE, struct.pack("!H", 1000)))
            self.transport.close()
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(asyncio.shield(self._lost), 2.0)


async def open_listener(index: int, ws_url: str, token: str = "") -> RawListener:
    """Connect one listening device and bring it to `listen start` (raises on any failure)."""
    url = urlsplit(ws_url)
    host = url.hostname or "127.0.0.1"
    port = url.port or (443 if url.scheme == "wss" else 80)
    if url.scheme == "wss":
        raise ValueError("the light listeners speak plain ws:// only")
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    loop = asyncio.get_running_loop()
    _, listener = await loop.create_connection(lambda: RawListener(index, f"{host}:{port}", path, token), host, port)
    try:
        await listener.ready()
    except BaseException:
        await listener.close()
        raise
    return listener


@dataclass
class ListenerPacer:
    """Sends the clip from every added listener in real time: device i sends packet k at
    t0 + k * 60 ms + (i mod PACING_SLOTS) * 10 ms. Frames are built and masked once."""

    frames: list[bytes]
    slots: list[list[RawListener]] = field(default_factory=lambda: [[] for _ in range(PACING_SLOTS)])
    sent: int = 0
    late_ms_max: float = 0.0
    _task: asyncio.Task[None] | None = None
    _count: int = 0

    @classmethod
    def for_packets(cls, packets: list[bytes]) -> ListenerPacer:
        return cls([masked_frame(OP_BINARY, p) for p in packets])

    def add(self, listener: RawListener) -> None:
        self.slots[self._count % PACING_SLOTS].append(listener)
        self._count += 1
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="listener-pacer")

    async def _run(self) -> None:
        slot_s = FRAME_MS / 1000 / PACING_SLOTS
        t0 = time.monotonic()
        tick = 0
        while True:
            due = t0 + tick * slot_s
            delay = due - time.monotonic()
            if delay < -FRAME_MS / 1000:
                # More than a frame behind: skip the missed slots (a microphone does not send
                # the past in a burst either).
                self.late_ms_max = max(self.late_ms_max, -delay * 1000)
                tick = int((time.monotonic() - t0) / slot_s)
                continue
            if delay < 0:
                self.late_ms_max = max(self.late_ms_max, -delay * 1000)
            await asyncio.sleep(max(0.0, delay))
            frame = self.frames[(tick // PACING_SLOTS) % len(self.frames)]
            sent = 0
            for listener in self.slots[tick % PACING_SLOTS]:
                sent += listener.send_prebuilt(frame)
            self.sent += sent
            tick += 1

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
