"""A deliberately minimal WebSocket client on a raw socket, for abuse tests: it completes the
handshake and then sends frames, and never reads unless asked to (the websockets client keeps
reading into its own queue even when told to pause, so it cannot play a client that stops
reading). Nothing here is imported by the server."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct


def frame(payload: bytes, opcode: int) -> bytes:
    """One final, masked client frame (RFC 6455 5.2)."""
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


class RawWebSocket:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def connect(cls, port: int, path: str, headers: dict[str, str], *, local: str = "127.0.0.1",
                      rcvbuf: int = 4096) -> tuple[RawWebSocket, bytes]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # a small window fills fast
        sock.bind((local, 0))
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
            if not chunk:
                break
            head += chunk
        return cls(sock), head

    async def send_text(self, text: str) -> None:
        await self.loop.sock_sendall(self.sock, frame(text.encode(), 0x1))

    async def send_binary(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, frame(data, 0x2))

    async def read_some(self, timeout: float = 5) -> bytes:
        return await asyncio.wait_for(self.loop.sock_recv(self.sock, 65536), timeout)

    def close(self) -> None:
        self.sock.close()
