"""Paced audio output for one session.

The firmware queues at most 40 decoded packets and silently drops the rest, so we send a small
pre-buffer at once and then one frame per frame duration against a monotonic clock. `play_end`
is our estimate of when the device finishes playing everything sent so far; it advances by
exactly one frame per frame (no accumulated sleep drift) and restarts from "now" after a gap (a
slow TTS sentence), because the device then played out its queue and starts over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol


class TurnLike(Protocol):
    @property
    def active(self) -> bool: ...


class PacedOutput:
    def __init__(self, send_audio: Callable[[bytes], Awaitable[None]], frame_ms: int, prebuffer: int,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._send_audio = send_audio
        self.frame_s = frame_ms / 1000
        self.prebuffer = prebuffer
        self.clock = clock
        self.sleep = sleep
        self.play_end = 0.0
        self.max_ahead_frames = 0.0  # highest lead over playback ever reached, for diagnostics

    def frames_ahead(self) -> float:
        return max(0.0, self.play_end - self.clock()) / self.frame_s

    async def send_frame(self, turn: TurnLike, packet: bytes) -> bool:
        """Send one frame when the pacing allows it. False if the turn ended meanwhile."""
        limit = (self.prebuffer - 1) * self.frame_s
        while True:
            if not turn.active:
                return False
            now = self.clock()
            lead = self.play_end - now
            if lead <= limit + 1e-6:  # float noise must not cost a micro-sleep
                break
            await self.sleep(lead - limit)
        await self._send_audio(packet)
        self.play_end = max(self.play_end, now) + self.frame_s
        self.max_ahead_frames = max(self.max_ahead_frames, (self.play_end - now) / self.frame_s)
        return True

    async def wait_played(self, turn: TurnLike) -> bool:
        """Sleep until everything sent has played. False if the turn ended meanwhile."""
        while turn.active:
            remaining = self.play_end - self.clock()
            if remaining <= 0:
                return True
            await self.sleep(remaining)
        return False

    def reset(self) -> None:
        """After an abort the device flushes its queue on the next tts start."""
        self.play_end = 0.0
