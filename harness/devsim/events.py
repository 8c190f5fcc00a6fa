"""What the simulated device records: received events, sent records, and per-turn results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

EventKind = Literal["text", "binary", "close"]
# Decoded Opus silence is exactly or nearly zero; speech frames are far above this (PCM16 RMS).
SILENCE_RMS = 64.0


def _rms(pcm: bytes) -> float:
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], np.int16).astype(np.float64)
    return float(np.sqrt(np.mean(samples ** 2))) if samples.size else 0.0

DropReason = Literal["not_speaking", "overflow", "malformed"]


@dataclass(slots=True)
class DeviceEvent:
    """One thing received from the server, stamped with time.monotonic() on arrival."""

    t: float
    kind: EventKind
    raw: str | bytes | None = None
    message: dict[str, Any] | None = None  # parsed text frame (None if not a JSON object)
    # binary frames
    payload: bytes | None = None  # Opus packet after removing the v2/v3 header
    timestamp: int = 0  # v2 header timestamp
    duration_ms: float | None = None  # from the Opus TOC
    pcm: bytes | None = None  # decoded audio, only for frames the device would play
    accepted: bool = False  # True if it entered the decode queue
    drop_reason: DropReason | None = None
    queue_depth: int = 0  # decode-queue depth right after this frame
    play_end: float | None = None  # when the firmware model finishes playing this frame
    cleared: bool = False  # dropped unplayed by a client that clears its buffer on tts stop
    # close
    close_code: int | None = None
    close_reason: str | None = None

    @property
    def type(self) -> str | None:
        value = self.message.get("type") if self.message else None
        return value if isinstance(value, str) else None

    def get(self, key: str, default: Any = None) -> Any:
        return self.message.get(key, default) if self.message else default

    def is_msg(self, type_: str, state: str | None = None) -> bool:
        return self.type == type_ and (state is None or self.get("state") == state)


@dataclass(slots=True)
class SentRecord:
    t: float
    kind: Literal["text", "binary"]
    data: str | bytes


@dataclass(slots=True)
class TurnResult:
    """Everything observed during one request/response turn. Times are time.monotonic()."""

    mode: str
    stt_text: str | None = None
    sentences: list[str] = field(default_factory=list)
    emotions: list[str] = field(default_factory=list)
    reply_pcm: bytes = b""
    reply_sample_rate: int = 24000
    frames_received: int = 0  # binary frames received during the turn
    frames_played: int = 0  # of those, accepted into the decode queue
    dropped_not_speaking: int = 0
    overflow_drops: int = 0
    max_queue_depth: int = 0
    completed: bool = False  # a `tts stop` arrived
    error: str | None = None  # why the turn did not complete
    t_start: float | None = None  # turn started (listen start / first frame)
    t_input_end: float | None = None  # last speech frame sent, or the listen detect text sent
    t_last_speech_frame: float | None = None
    t_stt: float | None = None
    t_tts_start: float | None = None
    t_first_audio: float | None = None  # first frame accepted for playback
    t_tts_stop: float | None = None
    t_playback_end: float | None = None  # when the device would finish playing the reply
    events: list[DeviceEvent] = field(default_factory=list, repr=False)

    @property
    def reply_duration_ms(self) -> float:
        return len(self.reply_pcm) / 2 / self.reply_sample_rate * 1000

    @property
    def speech_lost_ms(self) -> float:
        """Reply audio that was not silence and that a client clearing its buffer on `tts stop`
        never played (DeviceConfig.clear_on_stop); 0 for the firmware."""
        lost = 0.0
        for event in self.events:
            if event.kind == "binary" and event.cleared and event.pcm and _rms(event.pcm) > SILENCE_RMS:
                lost += event.duration_ms or 0.0
        return lost

    def timings(self) -> dict[str, float]:
        """Derived latencies in ms; keys are present only when both ends were observed."""
        out: dict[str, float] = {}

        def span(name: str, a: float | None, b: float | None) -> None:
            if a is not None and b is not None:
                out[name] = (b - a) * 1000

        ref = self.t_input_end
        span("stt_ms", ref, self.t_stt)  # end of speech -> recognised text
        span("tts_start_ms", ref, self.t_tts_start)
        span("first_audio_ms", ref, self.t_first_audio)  # the latency a user hears
        span("stt_to_first_audio_ms", self.t_stt, self.t_first_audio)
        span("tts_start_to_first_audio_ms", self.t_tts_start, self.t_first_audio)
        span("speaking_ms", self.t_tts_start, self.t_tts_stop)
        span("total_ms", self.t_start, self.t_tts_stop)
        span("playback_tail_ms", self.t_tts_stop, self.t_playback_end)
        if self.reply_pcm:
            out["reply_audio_ms"] = self.reply_duration_ms
        return out
