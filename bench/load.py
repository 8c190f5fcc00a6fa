"""Load ramp: run the end-to-end test with more and more devices until the p95 first-reply latency
passes a threshold. The last device count that stayed under it is this machine's capacity for
this config.

A failed turn counts as an infinitely slow one (see E2EResult.first_frame_p95), so a server that
starts dropping turns under load fails the step instead of looking fast. Abort trials are off
during the ramp: they would add load that has nothing to do with answering questions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from bench.console import Console
from bench.e2e import E2EOptions, E2EResult, Target, run_e2e

SETTLE_S = 1.0  # let the previous step's sessions close before the next one starts


@dataclass(slots=True)
class RampOptions:
    start: int = 1
    step: int = 1
    max_devices: int = 16
    threshold_ms: float = 2000.0
    # Pacing criterion (None: not used): a step also needs the p95 frame jitter at or under
    # this and no playback stall.
    jitter_ms: float | None = None


@dataclass
class RampStep:
    devices: int
    result: E2EResult
    p95_first_frame_ms: float | None = None
    passed: bool = False

    def to_json(self) -> dict[str, Any]:
        s = self.result.summary()
        p95 = self.p95_first_frame_ms
        return {
            "devices": self.devices,
            "passed": self.passed,
            "p95_first_frame_ms": p95 if p95 is None else round(p95, 1) if math.isfinite(p95) else "inf",
            "first_frame_ms": s["first_frame_ms"],
            "frame_jitter_ms": s["frame_jitter_ms"],
            "stalls": s["stalls"],
            "stt_ms": s["stt_ms"],
            "tts_stop_ms": s["tts_stop_ms"],
            "turns": s["turns"],
            "turns_failed": s["turns_failed"],
            "cpu_percent_mean": self.result.resources.get("cpu_percent_mean"),
            "rss_peak_mb": self.result.resources.get("rss_peak_mb"),
            "e2e": self.result.to_json(),
        }


@dataclass
class RampResult:
    options: RampOptions
    steps: list[RampStep] = field(default_factory=list)
    capacity: int | None = None  # None until a step has finished
    # True when the ramp ended at --ramp-max still under the threshold: capacity is at least that.
    capacity_is_lower_bound: bool = False
    stopped_because: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"options": dataclasses.asdict(self.options), "capacity_devices": self.capacity,
                "capacity_is_lower_bound": self.capacity_is_lower_bound,
                "stopped_because": self.stopped_because, "steps": [s.to_json() for s in self.steps]}


def device_counts(opts: RampOptions) -> list[int]:
    counts = list(range(max(1, opts.start), opts.max_devices + 1, max(1, opts.step)))
    if counts and counts[-1] != opts.max_devices and opts.max_devices > counts[-1]:
        counts.append(opts.max_devices)
    return counts


async def run_ramp(target: Target, ramp: RampOptions, base: E2EOptions, console: Console,
                   result: RampResult | None = None) -> RampResult:
    result = result or RampResult(ramp)
    for n in device_counts(ramp):
        opts = dataclasses.replace(base, devices=n, abort_trial=False)
        step = RampStep(n, E2EResult(opts, target))
        result.steps.append(step)
        await run_e2e(target, opts, console, step.result, label=f"ramp {n} dev")
        step.p95_first_frame_ms = step.result.first_frame_p95()
        p95 = step.p95_first_frame_ms
        latency_ok = p95 is not None and p95 <= ramp.threshold_ms
        summary = step.result.summary()
        jitter = (summary["frame_jitter_ms"] or {}).get("p95")
        pacing_ok = ramp.jitter_ms is None or (jitter is not None and jitter <= ramp.jitter_ms
                                               and not summary["stalls"])
        # A device that could not even connect is a failure of the step, not a lighter load.
        connected_ok = not step.result.connect_errors
        step.passed = latency_ok and pacing_ok and connected_ok
        shown = "inf (failed turns)" if p95 is not None and not math.isfinite(p95) else f"{p95:.0f} ms"
        console.log(f"ramp: {n} device(s): p95 first reply {shown} "
                    f"{'<=' if latency_ok else '>'} {ramp.threshold_ms:.0f} ms; frame jitter p95 {jitter} ms, "
                    f"{summary['stalls']} stall(s)")
        if not step.passed:
            result.stopped_because = (
                f"{len(step.result.connect_errors)} device(s) could not connect at {n} devices" if not connected_ok
                else f"p95 first reply above {ramp.threshold_ms:.0f} ms at {n} devices" if not latency_ok
                else f"pacing (jitter p95 {jitter} ms, {summary['stalls']} stalls) at {n} devices")
            break
        result.capacity = n
        await asyncio.sleep(SETTLE_S)
    else:
        result.stopped_because = f"still under the threshold at --ramp-max {ramp.max_devices}"
        result.capacity_is_lower_bound = True
    if result.capacity is None and result.steps and not result.steps[0].passed:
        result.capacity = 0
    return result
