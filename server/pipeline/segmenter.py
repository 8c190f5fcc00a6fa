"""End-of-utterance detection from VAD probabilities, counted in audio time.

Pure state machine: feed one speech probability per VAD window, get events back with sample
positions. Time is the number of samples seen, never the wall clock, so network jitter or a
burst of late packets cannot end an utterance early (the reference server measures arrival time).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum


class SegmentEvent(Enum):
    SPEECH_START = "speech_start"
    SPEECH_END = "speech_end"
    # Speech that started but was too short to be an utterance (a cough, a click).
    DISCARD = "discard"


@dataclass(slots=True, frozen=True)
class Segment:
    event: SegmentEvent
    # Sample positions (16 kHz) in the stream fed so far.
    start: int
    end: int


@dataclass(slots=True)
class SegmenterConfig:
    threshold: float = 0.5
    neg_threshold: float = 0.35
    min_silence_ms: int = 500
    min_speech_ms: int = 250
    window_samples: int = 512
    sample_rate: int = 16000
    # Speech starts when this many of the last `start_window` windows are voiced.
    start_votes: int = 3
    start_window: int = 5


class Segmenter:
    def __init__(self, config: SegmenterConfig | None = None) -> None:
        self.config = config or SegmenterConfig()
        self.reset()

    def reset(self, position: int = 0) -> None:
        self.position = position  # samples consumed
        self.in_speech = False
        self.speech_start = 0
        self.last_voiced_end = 0
        self._silence_samples = 0
        self._recent: deque[tuple[bool, int]] = deque(maxlen=self.config.start_window)

    @property
    def speech_ms(self) -> float:
        """Duration of the current utterance so far (0 when not in speech)."""
        if not self.in_speech:
            return 0.0
        return (self.last_voiced_end - self.speech_start) * 1000 / self.config.sample_rate

    @property
    def silence_ms(self) -> float:
        """Trailing silence inside the current utterance (0 when not in speech)."""
        if not self.in_speech:
            return 0.0
        return self._silence_samples * 1000 / self.config.sample_rate

    def feed(self, prob: float) -> Segment | None:
        c = self.config
        win_start = self.position
        self.position += c.window_samples
        if not self.in_speech:
            voiced = prob >= c.threshold
            self._recent.append((voiced, win_start))
            if sum(v for v, _ in self._recent) >= c.start_votes:
                self.in_speech = True
                self.speech_start = next(pos for v, pos in self._recent if v)
                self.last_voiced_end = self.position
                self._silence_samples = 0
                self._recent.clear()
                return Segment(SegmentEvent.SPEECH_START, self.speech_start, self.position)
            return None
        # In speech: only a clearly low probability counts as silence (hysteresis).
        if prob < c.neg_threshold:
            self._silence_samples += c.window_samples
        else:
            self._silence_samples = 0
            self.last_voiced_end = self.position
        if self._silence_samples * 1000 >= c.min_silence_ms * c.sample_rate:
            return self.end()
        return None

    def skip_quiet(self, windows: int) -> None:
        """`windows` windows of probability 0 while not in speech (a DTX packet): the same state
        `feed(0.0)` would leave, without a call per window."""
        assert not self.in_speech
        c = self.config
        recent = self._recent
        if recent:
            if windows >= c.start_window or not any(voiced for voiced, _ in recent):
                # No vote left in the start window (unvoiced entries count for nothing): the
                # same state as pushing `windows` unvoiced ones in, and a quiet room's usual one.
                recent.clear()
            else:
                for i in range(windows):
                    recent.append((False, self.position + i * c.window_samples))
        self.position += windows * c.window_samples

    def end(self) -> Segment | None:
        """Close the current utterance now (silence reached, or forced by a length limit)."""
        if not self.in_speech:
            return None
        start, end = self.speech_start, self.last_voiced_end
        self.in_speech = False
        self._silence_samples = 0
        kind = SegmentEvent.SPEECH_END
        if (end - start) * 1000 < self.config.min_speech_ms * self.config.sample_rate:
            kind = SegmentEvent.DISCARD
        return Segment(kind, start, end)
