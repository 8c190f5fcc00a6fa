"""Prometheus exposition (text format 0.0.4) on a private listener, next to the JSON /metrics.

The JSON /metrics keeps the last 200 turns with device ids for someone on the machine; a fleet
needs numbers that add up across processes instead: counters and histograms that Prometheus
scrapes from every process and sums (`sum by (le) (rate(xz_turn_first_audio_seconds_bucket[5m]))`).
Nothing here names a device. The listener is separate (`prometheus.listen`, e.g.
127.0.0.1:9100 or a private interface) so the balancer in front of the device ports never
exposes it. The format is simple enough to write directly; no client library is needed.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from server.conversation.metrics import TurnMetrics
from server.fleet.config import parse_listen

log = logging.getLogger("server.prometheus")

# Seconds. Voice turns land between a few hundred ms (fast APIs) and several seconds (CPU models).
LATENCY_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0)
STAGES = ("asr", "llm_first_clause", "tts_first_chunk")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


@dataclass
class Histogram:
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def observe(self, value: float) -> None:
        if not self.counts:
            self.counts = [0] * len(self.buckets)
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.n += 1


def provider_stage(m: TurnMetrics) -> str:
    """Which provider a failed turn was in, from the milestones it reached."""
    if m.kind == "voice" and m.asr_done is None:
        return "asr"
    if m.first_clause is None or m.llm_first_token is None:
        return "llm"
    if m.tts_first_chunk is None:
        return "tts"
    return "other"


class PrometheusMetrics:
    def __init__(self, services: Any, labels: dict[str, str] | None = None) -> None:
        self.services = services
        self.info = labels or {}
        self.started = time.time()
        self.turns: dict[tuple[tuple[str, str], ...], int] = {}
        self.errors: dict[tuple[tuple[str, str], ...], int] = {}
        self.first_audio: dict[tuple[tuple[str, str], ...], Histogram] = {}
        self.stages: dict[tuple[tuple[str, str], ...], Histogram] = {}
        self.extra_counters: dict[str, Any] = {}  # name -> () -> int, e.g. stale connections closed

    def observe_turn(self, m: TurnMetrics) -> None:
        outcome = "error" if m.error else ("interrupted" if m.interrupted else "ok")
        key = (("kind", m.kind), ("outcome", outcome))
        self.turns[key] = self.turns.get(key, 0) + 1
        if m.error:
            ekey = (("stage", provider_stage(m)),)
            self.errors[ekey] = self.errors.get(ekey, 0) + 1
        # From the end of the user's speech (voice) or the text's arrival to our first audio frame.
        origin = m.speech_end_arrival if m.kind == "voice" else (m.asr_done or m.started)
        if origin is not None and m.first_frame_sent is not None:
            self.first_audio.setdefault((("kind", m.kind),), Histogram()).observe(m.first_frame_sent - origin)
        spans = m.stages_ms()
        for stage in STAGES:
            value = spans.get(stage)
            if value is not None and value >= 0:
                self.stages.setdefault((("stage", stage),), Histogram()).observe(value / 1000)

    def render(self) -> str:
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        def histograms(name: str, data: dict[tuple[tuple[str, str], ...], Histogram]) -> None:
            for labels, h in sorted(data.items()):
                for bound, count in zip(h.buckets, h.counts, strict=True):
                    out.append(f"{name}_bucket{_labels(labels + (('le', _num(bound)),))} {count}")
                out.append(f"{name}_bucket{_labels(labels + (('le', '+Inf'),))} {h.n}")
                out.append(f"{name}_sum{_labels(labels)} {_num(h.total)}")
                out.append(f"{name}_count{_labels(labels)} {h.n}")

        family("xz_info", "gauge", "Constant 1, labelled with this process's node id and state backend.")
        out.append(f"xz_info{_labels(tuple(sorted(self.info.items())))} 1")
        family("xz_start_time_seconds", "gauge", "Unix time this process started.")
        out.append(f"xz_start_time_seconds {_num(round(self.started, 3))}")
        family("xz_sessions", "gauge", "Devices connected to this process.")
        out.append(f"xz_sessions {len(self.services.sessions)}")
        family("xz_turns_total", "counter", "Turns finished, by kind (voice, text, wake, phrase) and outcome.")
        for labels, n in sorted(self.turns.items()):
            out.append(f"xz_turns_total{_labels(labels)} {n}")
        family("xz_provider_errors_total", "counter", "Turns a provider failed in, by stage (asr, llm, tts).")
        for labels, n in sorted(self.errors.items()):
            out.append(f"xz_provider_errors_total{_labels(labels)} {n}")
        family("xz_turn_first_audio_seconds", "histogram",
               "End of the user's speech (or the typed text) to the first reply audio frame sent.")
        histograms("xz_turn_first_audio_seconds", self.first_audio)
        family("xz_turn_stage_seconds", "histogram", "Time spent per pipeline stage of a turn.")
        histograms("xz_turn_stage_seconds", self.stages)
        family("xz_events_total", "counter", "Server events (bad frames, drops, early ASR, auth rejections...).")
        for name, n in sorted(self.services.metrics.counters.items()):
            out.append(f"xz_events_total{_labels((('event', name),))} {n}")
        if "loop_lag_max_ms" in self.services.metrics.gauges:
            family("xz_event_loop_lag_max_seconds", "gauge", "Longest the event loop ran late since the start.")
            out.append(f"xz_event_loop_lag_max_seconds {self.services.metrics.gauges['loop_lag_max_ms'] / 1000}")
        for name, (help_text, read) in sorted(self.extra_counters.items()):
            family(name, "counter", help_text)
            out.append(f"{name} {read()}")
        rss = _rss_bytes()
        if rss is not None:
            family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.")
            out.append(f"process_resident_memory_bytes {rss}")
        return "\n".join(out) + "\n"

    async def handle(self, request: web.Request) -> web.Response:
        return web.Response(body=self.render().encode(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def _rss_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.Process(os.getpid()).memory_info().rss)
    except Exception:  # noqa: BLE001 - optional figure
        return None


async def start_listener(metrics: PrometheusMetrics, listen: str) -> tuple[web.AppRunner, int]:
    host, port = parse_listen(listen)
    app = web.Application()
    app.router.add_get("/metrics", metrics.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    log.info("Prometheus metrics on http://%s:%d/metrics", host, bound)
    return runner, bound
