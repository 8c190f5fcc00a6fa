"""Per-turn timings (monotonic seconds), kept in a small ring for /metrics and logged once per
turn. They answer "where did the time go" between the end of the user's speech and our first
audio frame."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(slots=True)
class TurnMetrics:
    session_id: str = ""
    device_id: str = ""
    turn_id: int = 0
    kind: str = "voice"  # voice | text | wake | phrase
    speech_end_arrival: float | None = None  # when the frame holding the last speech sample arrived
    endpoint: float | None = None  # when the server decided the utterance was over
    asr_done: float | None = None
    llm_first_token: float | None = None
    first_clause: float | None = None
    tts_first_chunk: float | None = None
    first_frame_sent: float | None = None
    last_frame_sent: float | None = None
    tts_stop_sent: float | None = None
    frames_sent: int = 0
    tool_calls: int = 0
    tool_ms: float = 0.0
    memory_ms: float = 0.0  # memory/persona lookups on this turn's critical path
    interrupted: bool = False
    speculative: bool = False  # answered by a reply started inside the silence window
    # What speculation did for this utterance (server/session/speculation.py): replies started on
    # its early transcripts, thrown away (the user went on), and their streamed LLM pieces.
    speculations_started: int = 0
    speculations_discarded: int = 0
    speculation_wasted_llm_chunks: int = 0
    error: str = ""
    started: float = field(default_factory=time.monotonic)

    def stages_ms(self) -> dict[str, float | None]:
        """Durations between consecutive milestones, in ms (None where a milestone is missing)."""

        def span(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else round((b - a) * 1000, 1)

        origin = self.asr_done if self.kind == "text" else self.endpoint
        return {
            "endpoint_wait": span(self.speech_end_arrival, self.endpoint),
            "asr": span(self.endpoint, self.asr_done),
            "llm_first_clause": span(self.asr_done if self.asr_done is not None else origin, self.first_clause),
            "tts_first_chunk": span(self.first_clause, self.tts_first_chunk),
            "to_first_frame": span(self.tts_first_chunk, self.first_frame_sent),
            "speech_end_to_first_frame": span(self.speech_end_arrival, self.first_frame_sent),
            "total_to_stop": span(self.speech_end_arrival or self.started, self.tts_stop_sent),
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stages_ms"] = self.stages_ms()
        return d


class MetricsLog:
    def __init__(self, size: int = 200) -> None:
        self.turns: deque[TurnMetrics] = deque(maxlen=size)
        self.counters: dict[str, int] = {}
        # Values that go up and down or are a maximum (not summed across processes like counters).
        self.gauges: dict[str, float] = {}
        # Called with every finished turn (the Prometheus histograms, server/fleet/prometheus.py).
        self.observers: list[Callable[[TurnMetrics], None]] = []

    def record(self, m: TurnMetrics) -> None:
        self.turns.append(m)
        for observe in self.observers:
            observe(m)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def snapshot(self) -> dict[str, Any]:
        return {"counters": dict(self.counters), "gauges": dict(self.gauges),
                "turns": [t.to_dict() for t in self.turns]}
