"""Everything a board session sends: xiaozhi messages built from server.protocol types, paced
Opus frames in the negotiated binary framing, and `tts stop`.

Sends are guarded: a dead connection never raises into a turn; the first failure ends the
session (through `on_failed`) and later sends are dropped quietly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from server.conversation.turn import Turn
from server.protocol import Message, Tts, encode_message, framing
from server.session.device import Connection
from server.session.output import PacedOutput

log = logging.getLogger("server.session")

# The firmware resets its decoder when it enters "speaking" (on tts start, in its main loop):
# the first frame waits this long after tts start so it is not flushed with the reset.
FIRST_FRAME_GAP_S = 0.03


class Downlink:
    def __init__(self, connection: Connection, session_id: str, *, framing_version: int, frame_ms: int,
                 prebuffer_frames: int, on_failed: Callable[[Exception], None]) -> None:
        self.connection = connection
        self.session_id = session_id
        self.framing_version = framing_version
        self.output = PacedOutput(self._send_audio_packet, frame_ms, prebuffer_frames)
        self.reply_start_time = 0.0
        self._on_failed = on_failed
        self.failed = False

    async def send(self, message: Message) -> None:
        """One JSON text message, stamped with our session id."""
        message.session_id = self.session_id
        try:
            await self.connection.send_text(encode_message(message))
        except Exception as exc:  # noqa: BLE001 - a dead socket ends the session, nothing more
            self._failed(exc)

    async def send_for(self, turn: Turn, message: Message) -> None:
        """A message that belongs to `turn`: dropped once the turn is no longer current."""
        if turn.active:
            await self.send(message)

    async def tts_start(self, turn: Turn) -> None:
        await self.send_for(turn, Tts(state="start"))
        self.reply_start_time = time.monotonic()

    async def tts_stop(self, turn: Turn | None) -> None:
        """`tts stop` (the firmware leaves "speaking" only on it); timed on the turn if any."""
        if turn is not None:
            if turn.metrics.tts_stop_sent is not None:
                return  # this reply is already stopped (finished and interrupted at once)
            turn.metrics.tts_stop_sent = time.monotonic()
        await self.send(Tts(state="stop"))

    async def send_frame(self, turn: Turn, packet: bytes) -> bool:
        """One Opus frame of `turn`, paced. False once the turn is no longer current."""
        if not turn.active:
            return False
        if turn.metrics.first_frame_sent is None:
            gap = FIRST_FRAME_GAP_S - (time.monotonic() - self.reply_start_time)
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

    async def wait_played(self, turn: Turn) -> bool:
        """Until the device has played everything sent. False if the turn ended meanwhile."""
        return await self.output.wait_played(turn)

    def drop_buffered(self) -> None:
        """After an interruption: the device flushes its queue on the next tts start."""
        self.output.reset()

    async def _send_audio_packet(self, packet: bytes) -> None:
        try:
            await self.connection.send_binary(framing.pack(self.framing_version, packet,
                                                           timestamp=self._timestamp()))
        except Exception as exc:  # noqa: BLE001 - a dead socket ends the session, nothing more
            self._failed(exc)

    def _timestamp(self) -> int:
        # v2 carries a millisecond clock for server-side AEC; the device echoes it back.
        return int(time.monotonic() * 1000) & 0xFFFFFFFF if self.framing_version == 2 else 0

    def _failed(self, exc: Exception) -> None:
        if not self.failed:
            self.failed = True
            self._on_failed(exc)
