"""The part of the firmware's device state machine that governs audio (application.cc).

States idle / listening / speaking. `tts start` enters speaking (ResetDecoder flushes queued
audio; the mic stops unless the mode is realtime); `tts stop` leaves it (manual mode -> idle,
otherwise -> listening, and auto mode re-sends `listen start` once playback has drained).
Split out of device.py to keep modules small; SimDevice is the only user.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from server.audio.opus import OpusDecoder

if TYPE_CHECKING:
    from harness.devsim.device import SimDevice

DeviceState = Literal["idle", "listening", "speaking"]
ListenMode = Literal["auto", "manual", "realtime"]


class StateMachineMixin:
    def _schedule(self: SimDevice, t: float, action: Callable[[float], None]) -> None:
        """Run a state change the way the firmware's Schedule() does: on its main loop, a
        little later than the message arrived (state_change_delay_ms, default 0)."""
        delay = self.config.state_change_delay_ms / 1000
        if delay <= 0:
            action(t)
            return
        self._pending.append((t + delay, action))
        asyncio.get_running_loop().call_later(delay, lambda: self._advance(time.monotonic()))

    def _advance(self: SimDevice, now: float) -> None:
        while self._pending and self._pending[0][0] <= now:
            when, action = self._pending.pop(0)
            action(when)

    def _set_state(self: SimDevice, new: DeviceState, t: float) -> None:
        old = self._state
        if new == old:
            return  # same-state transitions are no-ops (no decoder reset either)
        self._state = new
        if new == "speaking":
            # HandleStateChangedEvent: ResetDecoder() flushes queued audio; mic stops unless
            # the device runs in realtime (AEC) mode.
            self.playback.reset()
            self._decoder = OpusDecoder(self.decode_sample_rate)
            if self.listening_mode != "realtime":
                self._mic_on = False
        elif new == "idle":
            self._mic_on = False
        elif (new == "listening" and old == "speaking" and not self._mic_on
              and self.listening_mode == "auto" and self.config.auto_relisten):
            # Realtime mode never stopped the mic; manual mode goes idle instead.
            self._relisten_task = asyncio.get_running_loop().create_task(self._relisten())

    def _cancel_relisten(self: SimDevice) -> None:
        task, self._relisten_task = self._relisten_task, None
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    async def _relisten(self: SimDevice) -> None:
        # Auto mode after tts stop: wait until the playback queue drained, then send listen
        # start again and reopen the mic (StartListeningAudio via MAIN_EVENT_PLAYBACK_DRAINED).
        drained = self.playback.drained_at()
        if drained is not None:
            delay = drained - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        if self.closed or self.state != "listening" or self._mic_on:
            return
        try:
            await self._send_text(self._fw_message({"type": "listen", "state": "start",
                                                    "mode": self.listening_mode}))
        except Exception as exc:  # the socket may have gone meanwhile
            self.internal_errors.append(f"relisten failed: {exc!r}")
            return
        self._mic_on = True
        self._encoder_reset_pending = True

    async def wait_relisten(self: SimDevice) -> None:
        """Wait for a pending automatic listen start (auto mode, after playback drained)."""
        task = self._relisten_task
        if task is not None and not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await task
