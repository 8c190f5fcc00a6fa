"""Model of the firmware's downlink decode queue and playback clock.

The firmware (main/audio/audio_service.{h,cc}) pushes every Opus packet that arrives while it is
speaking into a decode queue of MAX_DECODE_PACKETS_IN_QUEUE = 2400 / 60 = 40 packets with
wait=false: when the queue is full the packet is silently dropped. The speaker consumes audio in
real time, so a server that sends faster than real time (beyond a small pre-buffer) loses audio.

This model keeps, for every accepted packet, the wall-clock time at which its playback will have
finished. Playback of a packet starts when it arrives or when the previous one finishes, whichever
is later; a packet counts as queued until its playback has finished. That makes the model
slightly stricter than the device (which also holds 2 decoded PCM jobs outside the 40-packet
queue, plus the frame in the I2S DMA buffer): a server that passes here passes on hardware.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

MAX_DECODE_PACKETS_IN_QUEUE = 40
# A gap shorter than this between two frames is scheduling noise, not an audible underrun.
UNDERRUN_TOLERANCE_S = 0.005


@dataclass(slots=True)
class PlaybackQueueModel:
    capacity: int = MAX_DECODE_PACKETS_IN_QUEUE
    accepted: int = 0
    overflow_drops: int = 0
    max_depth: int = 0
    underruns: int = 0
    underrun_s: float = 0.0
    _finish_times: deque[float] = field(default_factory=deque, repr=False)
    _last_finish: float | None = field(default=None, repr=False)

    def reset(self) -> None:
        """Entering the speaking state calls ResetDecoder() on the device, which flushes
        whatever was still queued. Counters are cumulative and survive."""
        self._finish_times.clear()
        self._last_finish = None

    def _expire(self, now: float) -> None:
        while self._finish_times and self._finish_times[0] <= now:
            self._finish_times.popleft()

    def depth(self, now: float) -> int:
        """Packets accepted and not yet completely played at `now`."""
        self._expire(now)
        return len(self._finish_times)

    def push(self, now: float, duration_s: float) -> bool:
        """A packet of `duration_s` arrives at `now` (monotonic seconds). Returns False if the
        device would drop it because the queue is full. Arrival times must not decrease."""
        self._expire(now)
        if len(self._finish_times) >= self.capacity:
            self.overflow_drops += 1
            return False
        if self._finish_times:
            start = self._finish_times[-1]
        else:
            # The queue ran dry: playback restarts with this packet. If the previous packet of
            # this speaking period already finished, the listener heard a gap.
            start = now
            if self._last_finish is not None and now - self._last_finish > UNDERRUN_TOLERANCE_S:
                self.underruns += 1
                self.underrun_s += now - self._last_finish
        finish = start + duration_s
        self._finish_times.append(finish)
        self._last_finish = finish
        self.accepted += 1
        self.max_depth = max(self.max_depth, len(self._finish_times))
        return True

    def drained_at(self) -> float | None:
        """Monotonic time at which everything accepted so far has been played (None if nothing
        was accepted since the last reset)."""
        return self._last_finish

    def is_idle(self, now: float) -> bool:
        return self.depth(now) == 0
