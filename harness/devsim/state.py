"""The part of the firmware's device state machine that governs audio (application.cc).

States idle / listening / speaking. `tts start` enters speaking (ResetDecoder flushes queued
audio; the mic stops unless the mode is realtime); `tts stop` leaves it (manual mode -> idle,
otherwise -> listening, and auto mode re-sends `listen start` once playback has drained).

An object of its own with an injected clock and no socket: the device feeds it what arrived and
what it sent, and gives it one callback to send the automatic `listen start`. Tests can drive it
on a virtual clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from harness.devsim.playback import MAX_DECODE_PACKETS_IN_QUEUE, PlaybackQueueModel
from server.audio.opus import OpusDecoder

DeviceState = Literal["idle", "listening", "speaking"]
ListenMode = Literal["auto", "manual", "realtime"]
Clock = Callable[[], float]
# Sends `listen start` in the given mode; False when it could not (the socket went away).
SendListenStart = Callable[[ListenMode], Awaitable[bool]]


class AudioStateMachine:
    """idle / listening / speaking, the mic, the decode queue and the decoder of one device."""

    def __init__(self, send_listen_start: SendListenStart, *, clock: Clock = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 state_change_delay_ms: float = 0.0, auto_relisten: bool = True,
                 decode_queue_capacity: int = MAX_DECODE_PACKETS_IN_QUEUE, decode_rate: int = 24000) -> None:
        self.clock = clock
        self._sleep = sleep
        self._send_listen_start = send_listen_start
        self.state_change_delay_ms = state_change_delay_ms
        self.auto_relisten = auto_relisten
        self.playback = PlaybackQueueModel(capacity=decode_queue_capacity)
        self.decode_rate = decode_rate
        self.listening_mode: ListenMode = "auto"
        self._state: DeviceState = "idle"
        self._mic_on = False
        self._pending: list[tuple[float, Callable[[float], None]]] = []
        self._decoder: OpusDecoder | None = None
        self._relisten_task: asyncio.Task[None] | None = None
        # Each listen start begins a fresh mic stream; the device's encoder resets before its
        # next packet (see take_new_mic_stream), never while a worker thread is encoding.
        self._new_mic_stream = False

    # ------------------------------------------------------------------ reading

    @property
    def state(self) -> DeviceState:
        self.advance(self.clock())
        return self._state

    @property
    def mic_on(self) -> bool:
        self.advance(self.clock())
        return self._mic_on

    def take_new_mic_stream(self) -> bool:
        """True once after each mic (re)start: the uplink encoder must start a fresh stream."""
        new, self._new_mic_stream = self._new_mic_stream, False
        return new

    # ------------------------------------------------------------------ what the device does

    def reset(self) -> None:
        """A new channel: idle, mic off, nothing queued or scheduled."""
        self._state, self._mic_on, self._pending = "idle", False, []
        self.playback.reset()

    def listening(self, mode: ListenMode) -> None:
        """The device sent `listen start`: listen with the mic open."""
        self.cancel_relisten()
        self.listening_mode = mode
        self._state, self._mic_on = "listening", True
        self._new_mic_stream = True

    def stopped_listening(self) -> None:
        """The device sent `listen stop` (push-to-talk release): idle, mic off."""
        self.cancel_relisten()
        self._state, self._mic_on = "idle", False

    def closed(self) -> None:
        self._state, self._mic_on = "idle", False

    # ------------------------------------------------------------------ what the server sends

    def tts_start(self, t: float) -> None:
        self._schedule(t, lambda when: self._set_state("speaking", when))

    def tts_stop(self, t: float) -> None:
        def stop(when: float) -> None:
            # Only meaningful while speaking: manual mode goes idle, the others listen again.
            if self._state == "speaking":
                self._set_state("idle" if self.listening_mode == "manual" else "listening", when)
        self._schedule(t, stop)

    def speaking_now(self, t: float) -> bool:
        """OnIncomingAudio pushes to the decode queue only in the speaking state."""
        self.advance(t)
        return self._state == "speaking"

    def decode(self, payload: bytes) -> bytes:
        if self._decoder is None:
            self._decoder = OpusDecoder(self.decode_rate)
        return self._decoder.decode(payload)

    def new_audio_params(self, decode_rate: int) -> None:
        """A server hello: a new decoder rate, applied at once when speaking."""
        self.decode_rate = decode_rate
        if self._state == "speaking":
            self._decoder = OpusDecoder(decode_rate)

    # ------------------------------------------------------------------ transitions

    def _schedule(self, t: float, action: Callable[[float], None]) -> None:
        """Run a state change the way the firmware's Schedule() does: on its main loop, a
        little later than the message arrived (state_change_delay_ms, default 0)."""
        delay = self.state_change_delay_ms / 1000
        if delay <= 0:
            action(t)
            return
        self._pending.append((t + delay, action))
        asyncio.get_running_loop().call_later(delay, lambda: self.advance(self.clock()))

    def advance(self, now: float) -> None:
        """Apply the scheduled changes due by `now`."""
        while self._pending and self._pending[0][0] <= now:
            when, action = self._pending.pop(0)
            action(when)

    def _set_state(self, new: DeviceState, t: float) -> None:
        old = self._state
        if new == old:
            return  # same-state transitions are no-ops (no decoder reset either)
        self._state = new
        if new == "speaking":
            # HandleStateChangedEvent: ResetDecoder() flushes queued audio; mic stops unless
            # the device runs in realtime (AEC) mode.
            self.playback.reset()
            self._decoder = OpusDecoder(self.decode_rate)
            if self.listening_mode != "realtime":
                self._mic_on = False
        elif new == "idle":
            self._mic_on = False
        elif (new == "listening" and old == "speaking" and not self._mic_on
              and self.listening_mode == "auto" and self.auto_relisten):
            # Realtime mode never stopped the mic; manual mode goes idle instead.
            self._relisten_task = asyncio.get_running_loop().create_task(self._relisten())

    # ------------------------------------------------------------------ automatic listen start

    def cancel_relisten(self) -> None:
        task, self._relisten_task = self._relisten_task, None
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    async def _relisten(self) -> None:
        # Auto mode after tts stop: wait until the playback queue drained, then send listen
        # start again and reopen the mic (StartListeningAudio via MAIN_EVENT_PLAYBACK_DRAINED).
        drained = self.playback.drained_at()
        if drained is not None:
            delay = drained - self.clock()
            if delay > 0:
                await self._sleep(delay)
        if self.state != "listening" or self._mic_on:
            return
        if not await self._send_listen_start(self.listening_mode):
            return
        self._mic_on = True
        self._new_mic_stream = True

    async def wait_relisten(self) -> None:
        """Wait for a pending automatic listen start (auto mode, after playback drained)."""
        task = self._relisten_task
        if task is not None and not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await task
