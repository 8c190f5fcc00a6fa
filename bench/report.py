"""The record of one run: its JSON form (every raw figure, the machine, the config), the flat
summary that `--compare` reads, and the tables printed on the terminal."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.components import ComponentReport
from bench.console import Console
from bench.e2e import E2EResult
from bench.idle import IdleResult
from bench.load import RampResult
from bench.server_metrics import SPAN_LABELS, SPANS, STAGES, span_summary, stage_summary

SCHEMA = "xiaozhi-bench/1"
# Names that end like a credential (api_key, token, secret, an Authorization header); anchored
# at the end so that e.g. `max_tokens_param` ("max_tokens") is not hidden.
_SECRET = re.compile(r"(key|secret|token|password|authorization)$", re.IGNORECASE)


@dataclass
class BenchRun:
    command: list[str]
    modes: list[str]
    machine: dict[str, Any]
    config: dict[str, Any]
    config_source: str
    started_at: str = field(default_factory=lambda: dt.datetime.now().astimezone().isoformat(timespec="seconds"))
    finished_at: str | None = None
    duration_s: float | None = None
    load_average_after: list[float] | None = None
    components: list[ComponentReport] = field(default_factory=list)
    e2e: E2EResult | None = None
    e2e_empty: E2EResult | None = None  # --idle-talk: the same turns on the empty server first
    ramp: RampResult | None = None
    idle: IdleResult | None = None
    fakes: dict[str, Any] | None = None  # what the in-process fake providers saw (--fake-*)
    interrupted: bool = False
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def failed(self) -> bool:
        if self.errors or any(c.status == "failed" for c in self.components):
            return True
        if self.idle is not None and (self.idle.connect_errors or self.idle.closed_by_server):
            return True
        if self.e2e is not None:
            s = self.e2e.summary()
            return bool(s["turns_failed"] or s["connect_errors"])
        return False

    def server_turns(self) -> list[dict[str, Any]]:
        """Every /metrics turn of our devices, from the end-to-end run and the ramp steps."""
        turns = list(self.e2e.server_turns) if self.e2e is not None else []
        if self.ramp is not None:
            for step in self.ramp.steps:
                turns += step.result.server_turns
        return turns

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "command": self.command,
            "modes": self.modes,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_s": self.duration_s,
            "interrupted": self.interrupted,
            "machine": {**self.machine, "load_average_after": self.load_average_after},
            "config_source": self.config_source,
            "config": self.config,
            "components": {c.key or c.kind: dataclasses.asdict(c) for c in self.components},
            "e2e": self.e2e.to_json() if self.e2e is not None else None,
            "e2e_empty": self.e2e_empty.to_json() if self.e2e_empty is not None else None,
            "ramp": self.ramp.to_json() if self.ramp is not None else None,
            "idle": self.idle.to_json() if self.idle is not None else None,
            "fakes": self.fakes,
            "summary": flat_summary(self),
            "errors": self.errors,
            "notes": self.notes,
        }


def redact(value: Any, key: str = "") -> Any:
    """Config as recorded in reports: API keys and secrets replaced, so reports can be shared."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if _SECRET.search(key) and isinstance(value, str) and value:
        return "***"
    return value


# ------------------------------------------------------------------------------ flat summary


def _put(out: dict[str, float], name: str, value: Any) -> None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        out[name] = float(value)


def _put_stats(out: dict[str, float], name: str, stats: dict[str, Any] | None, keys: tuple[str, ...]) -> None:
    for k in keys:
        _put(out, f"{name}.{k}", (stats or {}).get(k))


def flat_summary(run: BenchRun) -> dict[str, float]:
    """One number per metric name, the same names in every report, for `--compare`."""
    out: dict[str, float] = {}
    three = ("p50", "p95", "max")
    for c in run.components:
        s = c.summary
        k = c.key or c.kind
        if c.kind == "vad":
            _put_stats(out, f"{k}.ms_per_frame", s.get("vad_ms_per_frame"), ("mean", "p95"))
            _put_stats(out, f"{k}.endpoint_delay_ms", s.get("endpoint_delay_ms"), ("p50", "max"))
            _put_stats(out, f"{k}.abs_offset_error_ms", s.get("abs_offset_error_ms"), ("p50", "max"))
            _put_stats(out, f"{k}.onset_error_ms", s.get("onset_error_ms"), ("p50", "max"))
        elif c.kind == "asr":
            _put_stats(out, f"{k}.rtf", s.get("rtf"), ("mean", "p95"))
            for name, group in (s.get("by_set") or {}).items():
                _put(out, f"{k}.{group.get('metric')}.{name}", group.get("error_rate"))
                _put_stats(out, f"{k}.elapsed_ms.{name}", group.get("elapsed_ms"), ("p50",))
        elif c.kind == "llm":
            _put_stats(out, f"{k}.ttft_ms", s.get("ttft_ms"), three)
            _put_stats(out, f"{k}.first_clause_ms", s.get("first_clause_ms"), three)
            _put_stats(out, f"{k}.tokens_per_s", s.get("tokens_per_s"), ("mean",))
            _put(out, f"{k}.success_rate", s.get("success_rate"))
        elif c.kind == "tts":
            _put_stats(out, f"{k}.first_chunk_ms", s.get("first_chunk_ms"), three)
            _put_stats(out, f"{k}.rtf", s.get("rtf"), ("mean", "max"))
            _put(out, f"{k}.success_rate", s.get("success_rate"))
    if run.e2e is not None:
        s = run.e2e.summary()
        for metric in ("stt_ms", "first_frame_ms", "tts_stop_ms", "abort_to_stop_ms", "typed_first_frame_ms"):
            _put_stats(out, f"e2e.{metric}", s.get(metric), three)
        _put(out, "e2e.stt_wer", s.get("stt_wer"))
        _put_stats(out, "e2e.frame_jitter_ms", s.get("frame_jitter_ms"), ("p50", "p95", "max"))
        for key in ("speculation_started", "speculation_used", "speculation_discarded",
                    "speculation_wasted_llm_chunks", "partial_asr_started", "partial_asr_reused"):
            _put(out, f"e2e.{key}", run.e2e.server_counters.get(key, 0))
        _put(out, "e2e.stalls", s.get("stalls"))
        _put(out, "e2e.turns_failed", s.get("turns_failed"))
        r = run.e2e.resources
        for key in ("cpu_percent_mean", "cpu_percent_per_device", "rss_peak_mb", "rss_per_device_mb"):
            _put(out, f"e2e.{key}", r.get(key))
        for stage, stats in stage_summary(run.e2e.server_turns).items():
            _put_stats(out, f"server.{stage}_ms", stats, ("p50", "p95"))
        spans = span_summary(run.e2e.server_turns)
        for key in [k for k, *_ in SPANS] + ["tool_ms", "memory_ms"]:
            _put_stats(out, f"server.{key}" + ("" if key.endswith("_ms") else "_ms"), spans.get(key), ("p50", "p95"))
    if run.e2e_empty is not None:
        s = run.e2e_empty.summary()
        for metric in ("stt_ms", "first_frame_ms"):
            _put_stats(out, f"e2e_empty.{metric}", s.get(metric), three)
        if run.e2e is not None:
            empty = (s.get("first_frame_ms") or {}).get("p50")
            busy = (run.e2e.summary().get("first_frame_ms") or {}).get("p50")
            if empty and busy:
                _put(out, "e2e.first_frame_p50_vs_empty", round(busy / empty, 3))
    if run.idle is not None:
        for step in run.idle.steps:
            _put(out, f"idle.{step.devices}dev.rss_mb", step.rss_mb)
            _put(out, f"idle.{step.devices}dev.rss_peak_mb", step.rss_peak_mb)
            _put(out, f"idle.{step.devices}dev.cpu_percent", step.cpu_percent)
            if step.devices and step.cpu_percent is not None:
                _put(out, f"idle.{step.devices}dev.cpu_percent_per_device", round(step.cpu_percent / step.devices, 3))
            _put(out, f"idle.{step.devices}dev.cpu_ms_per_frame", step.cpu_ms_per_frame)
            _put(out, f"idle.{step.devices}dev.cpu_percent_per_device_realtime",
                 step.cpu_percent_per_device_realtime)
            if step.frames_expected:
                _put(out, f"idle.{step.devices}dev.frames_sent_share",
                     round(step.frames_sent / step.frames_expected, 3))
        for key, value in run.idle.increments().items():
            _put(out, f"idle.{key}", value)
    fake_llm = ((run.fakes or {}).get("llm") or {})
    for key in ("token_delivery_ms", "clause_delivery_ms"):
        _put_stats(out, f"fake.llm.{key}", fake_llm.get(key), ("p50", "p95"))
    tool = ((run.fakes or {}).get("tool_round_summary") or {})
    for key in ("server_tool_ms", "end_to_follow_request_ms", "end_to_follow_first_token_ms", "added_to_turn_ms"):
        _put_stats(out, f"fake.tool_round.{key}", tool.get(key), ("p50", "p95"))
    edge = ((run.fakes or {}).get("edge") or {})
    _put_stats(out, "fake.edge.server_and_client_ms", edge.get("server_and_client_ms"), ("p50", "p95"))
    if run.ramp is not None:
        _put(out, "ramp.capacity_devices", run.ramp.capacity)
        for step in run.ramp.steps:
            _put(out, f"ramp.{step.devices}dev.p95_first_frame_ms", step.p95_first_frame_ms)
            step_summary = step.result.summary()
            _put(out, f"ramp.{step.devices}dev.frame_jitter_p95_ms", (step_summary["frame_jitter_ms"] or {}).get("p95"))
            _put(out, f"ramp.{step.devices}dev.stalls", step_summary["stalls"])
    return out


# ------------------------------------------------------------------------------ JSON


def json_safe(value: Any) -> Any:
    """Strict JSON: an infinite or NaN float (a failed turn counted as never answered) becomes
    the string "inf" / "nan" instead of the non-standard Infinity/NaN tokens."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic write (temp file + rename), so an interrupted write never leaves half a report."""
    data = json_safe(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, ensure_ascii=False, indent=1, allow_nan=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------ tables


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths,
                                                                                                  strict=True)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "inf"
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 1 else f"{v:.3f}"
    return str(v)


def _stats_row(label: str, s: dict[str, Any] | None, unit: str = "ms") -> list[Any]:
    s = s or {}
    return [label, s.get("p50"), s.get("p95"), s.get("max"), s.get("mean"), s.get("n"), unit]


STATS_HEADERS = ["metric", "p50", "p95", "max", "mean", "n", "unit"]


def component_rows(c: ComponentReport) -> list[list[Any]]:
    s = c.summary
    if c.kind == "vad":
        return [
            _stats_row("VAD per 60 ms frame", s.get("vad_ms_per_frame")),
            _stats_row("Opus decode per frame", s.get("decode_ms_per_frame")),
            _stats_row("endpoint delay (audio)", s.get("endpoint_delay_ms")),
            _stats_row("onset error", s.get("onset_error_ms")),
            _stats_row("offset error", s.get("offset_error_ms")),
            ["detected / split / missed", f"{s.get('detected')}/{s.get('split')}/{s.get('missed')}", "", "", "",
             s.get("utterances"), "utt"],
        ]
    if c.kind == "asr":
        rows = [_stats_row("real-time factor", s.get("rtf"), "x")]
        for name, g in (s.get("by_set") or {}).items():
            rate = g.get("error_rate")
            rows.append([f"{g.get('metric', '').upper()} {name}", f"{rate * 100:.1f}%" if rate is not None else "-",
                         "", "", "", g.get("utterances"), "%"])
            rows.append(_stats_row(f"time {name}", g.get("elapsed_ms")))
        return rows
    if c.kind == "llm":
        rate = s.get("success_rate")
        return [
            _stats_row("time to first token", s.get("ttft_ms")),
            _stats_row("time to first clause", s.get("first_clause_ms")),
            _stats_row("whole reply", s.get("total_ms")),
            _stats_row("tokens per second", s.get("tokens_per_s"), "tok/s"),
            ["success rate", f"{rate * 100:.0f}%" if rate is not None else "-", "", "", "", s.get("prompts"), "%"],
        ]
    if c.kind == "tts":
        rate = s.get("success_rate")
        return [
            _stats_row("time to first chunk", s.get("first_chunk_ms")),
            _stats_row("real-time factor", s.get("rtf"), "x"),
            ["success rate", f"{rate * 100:.0f}%" if rate is not None else "-", "", "", "", s.get("sentences"), "%"],
        ]
    return []


def print_report(run: BenchRun, console: Console) -> None:
    m = run.machine
    console.print()
    console.print(f"Machine: {m.get('cpu_model')} x{m.get('cores_logical')}, {m.get('ram_gb')} GB RAM, "
                  f"Python {m.get('python')}, load before {m.get('load_average')} after {run.load_average_after}")
    for c in run.components:
        console.print()
        head = f"{c.kind.upper()} {c.provider}  load {c.load_s} s" + (f", warm-up {c.warmup_s} s" if c.warmup_s
                                                                      is not None else "")
        if c.status != "ok":
            console.print(f"{head}  {c.status.upper()}: {c.error or ''}")
            if not c.summary:
                continue
        else:
            console.print(head)
        console.print(table(STATS_HEADERS, component_rows(c)))
        for note in c.notes:
            console.print(f"  note: {note}")
    if run.e2e_empty is not None:
        console.print("\n(the same turns on the empty server, before the idle devices connected)")
        print_e2e(run.e2e_empty, console)
    if run.idle is not None:
        print_idle(run.idle, console)
    if run.e2e is not None:
        if run.e2e_empty is not None and run.idle is not None:
            console.print(f"\n(while {run.idle.options.devices} devices listen: {run.idle.options.audio})")
        print_e2e(run.e2e, console)
        ratio = flat_summary(run).get("e2e.first_frame_p50_vs_empty")
        if ratio is not None:
            console.print(f"  first reply p50 with the idle devices / on the empty server: {ratio:.3f}")
    if run.ramp is not None:
        print_ramp(run.ramp, console)
    if run.fakes:
        print_fakes(run.fakes, console)
    for err in run.errors:
        console.print(f"error: {err}")
    if run.interrupted:
        console.print("\nINTERRUPTED: the figures above are what was measured before Ctrl-C.")


def print_e2e(e2e: E2EResult, console: Console) -> None:
    s = e2e.summary()
    o = e2e.options
    console.print()
    console.print(f"END TO END: {o.devices} device(s) x {o.prompts} question(s), {s['turns_ok']}/{s['turns']} "
                  f"answered, {s['abort_trials']} abort trial(s); ms from the end of speech")
    console.print(table(STATS_HEADERS, [
        _stats_row("-> stt", s["stt_ms"]),
        _stats_row("-> first reply frame", s["first_frame_ms"]),
        _stats_row("typed -> first reply frame", s["typed_first_frame_ms"]),
        _stats_row("-> tts stop", s["tts_stop_ms"]),
        _stats_row("abort -> tts stop", s["abort_to_stop_ms"]),
    ]))
    if s["stt_wer"] is not None:
        console.print(f"  stt word error rate vs the spoken questions: {s['stt_wer'] * 100:.1f}%")
    jitter = s.get("frame_jitter_ms") or {}
    if jitter.get("n"):
        console.print(f"  reply frame pacing (gap minus frame duration, {jitter['n']} frames): p50 "
                      f"{_cell(jitter.get('p50'))} / p95 {_cell(jitter.get('p95'))} / "
                      f"max {_cell(jitter.get('max'))} ms; "
                      f"playback stalls {s['stalls']} ({s['stall_ms']} ms, in {s['turns_with_stall']} turn(s))")
    stages = stage_summary(e2e.server_turns)
    if any(v["n"] for v in stages.values()):
        console.print("Server stages (/metrics), ms")
        console.print(table(STATS_HEADERS, [_stats_row(name, stages[name]) for name in STAGES]))
    spans = span_summary(e2e.server_turns)
    if any((spans[key] or {}).get("n") for key in SPAN_LABELS):
        console.print("Server spans per answered turn (/metrics), ms: what the server adds between the LLM's first "
                      "token and the first audio frame")
        rows = [_stats_row(label, spans[key]) for key, label in SPAN_LABELS.items()]
        rows.append(_stats_row("memory lookup (memory_ms)", spans["memory_ms"]))
        if spans["tool_turns"]:
            rows.append(_stats_row("tool calls per tool turn", spans["tool_calls"], "calls"))
            rows.append(_stats_row("tools run (tool_ms)", spans["tool_ms"]))
        console.print(table(STATS_HEADERS, rows))
    counters = e2e.server_counters
    if counters.get("speculation_started"):
        voice = [t for t in e2e.server_turns if t.get("kind") == "voice" and not t.get("error")]
        spec = sum(1 for t in voice if t.get("speculative"))
        console.print(f"Speculation: {counters['speculation_started']} replies started inside the silence window, "
                      f"{counters.get('speculation_used', 0)} used, {counters.get('speculation_discarded', 0)} "
                      f"thrown away ({counters.get('speculation_wasted_llm_chunks', 0)} streamed LLM pieces wasted); "
                      f"{spec} of {len(voice)} voice turns answered by one")
        console.print("  per voice turn (started / used / thrown away / LLM pieces wasted): " + "; ".join(
            f"{t.get('speculations_started', 0)}/{'yes' if t.get('speculative') else 'no'}/"
            f"{t.get('speculations_discarded', 0)}/{t.get('speculation_wasted_llm_chunks', 0)}" for t in voice))
    reused = counters.get("partial_asr_reused", 0)
    if counters.get("early_asr_started") or reused:
        # A reused closing partial is handed over as the early transcript without a new request.
        started, used = counters.get("early_asr_started", 0) + reused, counters.get("early_asr_used", 0)
        console.print(f"Early ASR: {started} started during endpoint waits ({reused} of them the closing partial, "
                      f"reused), {used} handed to a turn, {started - used} thrown away (the speaker went on)")
    if counters.get("partial_asr_started"):
        console.print(f"Partial ASR: {counters['partial_asr_started']} transcriptions of the growing utterance "
                      f"while users spoke (vad.partial_asr_ms)")
    r = e2e.resources
    if r.get("cpu_percent_mean") is not None:
        console.print(f"Server process: CPU mean {r['cpu_percent_mean']}% (peak {r['cpu_percent_peak']}%, 100% = one "
                      f"core), {r['cpu_percent_per_device']}% per device; RSS {r['rss_baseline_mb']} MB idle, "
                      f"{r['rss_peak_mb']} MB peak, {r['rss_per_device_mb']} MB per device")
    if r.get("client_cpu_percent_mean") is not None:
        console.print(f"Simulated devices (this process): CPU mean {r['client_cpu_percent_mean']}%")
    lag = r.get("tester_loop_lag") or {}
    if lag.get("loop_lag_over_50ms"):
        console.print(f"  the tester's own event loop ran late: {lag.get('loop_lag_over_50ms', 0)} time(s) over 50 ms, "
                      f"worst {lag.get('loop_lag_max_ms')} ms; frame timing above includes that")
    server_lag = e2e.server_counters
    if server_lag.get("loop_lag_over_50ms"):
        console.print(f"  the server's event loop ran late: {server_lag.get('loop_lag_over_50ms', 0)} time(s) "
                      f"over 50 ms, {server_lag.get('loop_lag_over_250ms', 0)} over 250 ms")
    if 1 < o.devices <= 10:
        rows = []
        for dev, d in e2e.per_device().items():
            ff = d["first_frame_ms"]
            rows.append([dev, f"{d['turns_ok']}/{d['turns']}", (d["stt_ms"] or {}).get("p50"), ff.get("p50"),
                         ff.get("p95"), ff.get("max"), (d["tts_stop_ms"] or {}).get("p50"),
                         (d["abort_to_stop_ms"] or {}).get("p50")])
        console.print(table(["device", "ok", "stt p50", "first p50", "first p95", "first max", "stop p50",
                             "abort p50"], rows))
    elif o.devices > 10:
        console.print("  (per-device figures are in the JSON)")
    failed = [t for t in e2e.turns if not t.ok and not t.interrupted]
    for t in failed[:5]:
        console.print(f"  failed: device {t.device} turn {t.index + 1} ({t.kind}): {t.error}")
    if len(failed) > 5:
        console.print(f"  ... and {len(failed) - 5} more failed turns (see the JSON)")
    for err in e2e.connect_errors[:5]:
        console.print(f"  connect error: {err}")
    for v in e2e.violations[:5]:
        console.print(f"  firmware-visible problem: {v}")
    for note in e2e.notes:
        console.print(f"  note: {note}")


def print_idle(idle: IdleResult, console: Console) -> None:
    o = idle.options
    console.print()
    console.print(f"IDLE DEVICES: connected and listening, nobody speaking ({o.audio}); "
                  f"{o.settle_s:g} s settle per step")
    rows = [[s.devices, s.connected, s.rss_mb, s.rss_peak_mb, s.cpu_percent, s.connect_s] for s in idle.steps]
    console.print(table(["devices", "open", "RSS MB", "RSS peak MB", "CPU %", "connect s"], rows))
    inc = idle.increments()
    console.print(f"  first device: {_cell(inc['rss_first_device_mb'])} MB, {_cell(inc['cpu_percent_first_device'])}% "
                  f"CPU; each further device: {_cell(inc['rss_per_device_mb'])} MB, "
                  f"{_cell(inc['cpu_percent_per_device'])}% CPU (100% = one core)")
    if idle.client_cpu_percent is not None:
        console.print(f"  simulated devices (this process): CPU mean {idle.client_cpu_percent}%")
    for step in idle.steps:
        if step.frames_expected:
            console.print(f"  {step.devices} device(s): sent {step.frames_sent} of {step.frames_expected} real-time "
                          f"frames ({step.frames_sent / step.frames_expected * 100:.0f}%), "
                          f"{step.server_counters.get('uplink_frames_dropped', 0)} dropped by the server; "
                          f"server CPU {_cell(step.cpu_ms_per_frame)} ms per frame taken in = "
                          f"{_cell(step.cpu_percent_per_device_realtime)}% of a core per device at the real-time rate")
        c = step.server_counters
        frames = c.get("uplink_dtx_frames", 0) + c.get("uplink_decoded_frames", 0)
        if not frames:
            continue
        windows = c.get("vad_windows_run", 0) + c.get("vad_windows_skipped", 0)
        per_batch = c.get("vad_jobs", 0) / c["vad_batches"] if c.get("vad_batches") else None
        console.print(f"  {step.devices} device(s): {frames} uplink frames in the window, "
                      f"{c.get('uplink_dtx_frames', 0)} DTX (no decode, no model), {c.get('uplink_decoded_frames', 0)} "
                      f"decoded; VAD windows {c.get('vad_windows_run', 0)} run / {c.get('vad_windows_skipped', 0)} "
                      f"skipped as quiet of {windows}; {_cell(per_batch and round(per_batch, 1))} jobs per batch")
    for err in idle.connect_errors[:5]:
        console.print(f"  connect error: {err}")
    for closed in idle.closed_by_server[:5]:
        console.print(f"  closed by the server: {closed}")
    for note in idle.notes:
        console.print(f"  note: {note}")


def print_fakes(fakes: dict[str, Any], console: Console) -> None:
    llm, edge = fakes.get("llm"), fakes.get("edge")
    console.print()
    if llm:
        ttft = llm.get("ttft_ms_measured") or {}
        console.print(f"FAKE LLM: {llm['ttft_ms']:g} ms to the first token, {llm['tokens_per_s']:g} tokens/s"
                      f"{', tool call first' if llm.get('tools') else ''}; {llm['chat_requests']} request(s), "
                      f"measured TTFT p50 {_cell(ttft.get('p50'))} ms")
        if (llm.get("token_delivery_ms") or {}).get("n"):
            console.print("LLM stream -> server pipeline (fake wrote the chunk -> server milestone), ms")
            console.print(table(STATS_HEADERS, [
                _stats_row("first text chunk -> llm_first_token", llm["token_delivery_ms"]),
                _stats_row("first-clause chunk -> first_clause", llm["clause_delivery_ms"]),
            ]))
    rounds = fakes.get("tool_round_summary")
    if rounds:
        console.print(f"Tool-call rounds ({len(fakes.get('tool_rounds') or [])}), as the fake LLM saw them, ms")
        console.print(table(STATS_HEADERS, [
            _stats_row("tool-call stream (first chunk -> end)", rounds["call_stream_ms"]),
            _stats_row("tools run on the server (tool_ms)", rounds["server_tool_ms"]),
            _stats_row("stream end -> follow-up request", rounds["end_to_follow_request_ms"]),
            _stats_row("  of which not the tool itself", rounds["gap_minus_tool_ms"]),
            _stats_row("stream end -> follow-up first token", rounds["end_to_follow_first_token_ms"]),
            _stats_row("added to the turn (1st -> 2nd first token)", rounds["added_to_turn_ms"]),
        ]))
    if edge:
        console.print(f"FAKE EDGE: {edge['requests']} request(s)")
        console.print(table(STATS_HEADERS, [
            _stats_row("fake's own synthesis (SSML -> first audio)", edge.get("fake_synth_ms")),
            _stats_row("first_clause -> tts_first_chunk minus that", edge.get("server_and_client_ms")),
        ]))


def print_ramp(ramp: RampResult, console: Console) -> None:
    console.print()
    pacing = (f", frame jitter p95 <= {ramp.options.jitter_ms:g} ms and no stall"
              if ramp.options.jitter_ms is not None else "")
    console.print(f"LOAD RAMP: threshold p95 first reply <= {ramp.options.threshold_ms:.0f} ms{pacing}")
    rows = []
    for step in ramp.steps:
        j = step.to_json()
        rows.append([step.devices, (j["first_frame_ms"] or {}).get("p50"), step.p95_first_frame_ms,
                     (j["first_frame_ms"] or {}).get("max"), f"{j['turns'] - j['turns_failed']}/{j['turns']}",
                     (j["frame_jitter_ms"] or {}).get("p95"), j["stalls"],
                     j["cpu_percent_mean"], j["rss_peak_mb"], "pass" if step.passed else "FAIL"])
    console.print(table(["devices", "p50 ms", "p95 ms", "max ms", "ok", "jitter p95", "stalls", "CPU %", "RSS MB", ""],
                        rows))
    cap = ramp.capacity
    shown = "not determined" if cap is None else f"at least {cap}" if ramp.capacity_is_lower_bound else str(cap)
    console.print(f"Capacity: {shown} device(s) "
                  f"({ramp.stopped_because or 'interrupted'})")
