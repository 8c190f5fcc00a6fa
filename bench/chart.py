"""The PNG chart of a report, drawn with matplotlib: one panel per kind of figure the run produced.

  - end-to-end latency from the end of speech (p50 bar, p95 extension, max tick)
  - the server's stage breakdown from speech end to first frame (stacked medians)
  - latency vs devices for ramp runs (p50 and p95 lines, the threshold dashed)
  - component latencies (p50 bar, p95 extension, max tick)

It is drawn from the report's JSON dict, so a saved report can be charted again later.
matplotlib is the benchmark's optional extra (`pip install .[bench]`), never the server's: it is
imported only when a chart is drawn, and without it the report is still written.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bench.server_metrics import SERIAL_STAGES

if TYPE_CHECKING:
    from matplotlib.axes import Axes

P50 = "#3465a4"
P95 = "#98b9e2"
MAXC = "#c83c28"
P95_LINE = "#f57900"
STAGE_COLORS = ("#787878", "#4e9a06", "#3465a4", "#f57900", "#75507b")

Row = tuple[str, float | None, float | None, float | None]  # label, p50, p95, max
Panel = tuple[float, Callable[["Axes"], None]]  # relative height, draw on one Axes


class ChartUnavailable(RuntimeError):
    """matplotlib is not installed (it is the benchmark's optional extra)."""


def axis_end(rows: list[Row], values: list[float]) -> float:
    """The largest value, unless one row is an outlier (p95 over 4x every other row's): then the
    axis ends at 1.5x the next row, so one pathological case does not flatten all the others."""
    p95s = sorted(v for r in rows for v in (r[2] if r[2] is not None else r[1],)
                  if v is not None and math.isfinite(v))
    if len(p95s) >= 2 and p95s[-1] > 4 * p95s[-2] > 0:
        return 1.5 * p95s[-2]
    return max(values) if values else 1.0


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "inf"
    if value == int(value):
        return str(int(value))
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.2f}"


def _num(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if value == "inf":
        return math.inf
    return None


def bar_panel(title: str, rows: list[Row], unit: str = "ms") -> Panel | None:
    rows = [r for r in rows if r[1] is not None]
    if not rows:
        return None

    def draw(ax: Axes) -> None:
        finite = [v for r in rows for v in r[1:] if v is not None and math.isfinite(v)]
        end = axis_end(rows, finite) * 1.05 or 1.0

        def clip(v: float | None) -> float:
            return 0.0 if v is None else min(v, end)

        ys = list(range(len(rows)))
        ax.barh(ys, [clip(r[2]) for r in rows], color=P95, height=0.6, label="p95")
        ax.barh(ys, [clip(r[1]) for r in rows], color=P50, height=0.6, label="p50")
        marks = [(clip(r[3]), y) for y, r in zip(ys, rows, strict=True) if r[3] is not None]
        if marks:
            ax.scatter([m[0] for m in marks], [m[1] for m in marks], marker="|", s=300, color=MAXC, label="max")
        for y, (_, p50, p95, mx) in zip(ys, rows, strict=True):
            off_scale = any(v is not None and v > end for v in (p50, p95, mx))
            # The exact values beside each bar: a clipped outlier stays readable.
            ax.annotate(f"{'> ' if off_scale else ''}p50 {fmt(p50)}  p95 {fmt(p95)}  max {fmt(mx)}",
                        (1.01, y), xycoords=("axes fraction", "data"), va="center", fontsize=8)
        ax.set_yticks(ys, [r[0] for r in rows])
        ax.invert_yaxis()
        ax.set_xlim(0, end)
        ax.set_xlabel(unit)
        ax.grid(axis="x", color="#e1e1e1")
        ax.set_axisbelow(True)
        ax.set_title(title, loc="left")
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=8, ncols=3, frameon=False)

    return 0.6 + 0.35 * len(rows), draw


def stages_panel(stages: dict[str, Any], where: str = "") -> Panel | None:
    values = [(name, _num((stages.get(name) or {}).get("p50"))) for name in SERIAL_STAGES]
    if not any(v for _, v in values):
        return None
    total_p50 = _num((stages.get("speech_end_to_first_frame") or {}).get("p50"))

    def draw(ax: Axes) -> None:
        left = 0.0
        for i, (name, v) in enumerate(values):
            width = v or 0.0
            ax.barh(0, width, left=left, color=STAGE_COLORS[i % len(STAGE_COLORS)], label=f"{name} {fmt(v)} ms")
            left += width
        ax.set_yticks([])
        ax.set_xlabel(f"ms (sum of medians {fmt(left)}; median total {fmt(total_p50)})")
        ax.set_title(f"Server stages, median ms: end of speech -> first reply frame{where}", loc="left")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.45), ncols=3, fontsize=8, frameon=False)

    return 1.3, draw


def ramp_panel(ramp: dict[str, Any]) -> Panel | None:
    steps = [s for s in ramp.get("steps") or [] if _num(s.get("devices")) is not None]
    if not steps:
        return None
    threshold = _num((ramp.get("options") or {}).get("threshold_ms"))

    def draw(ax: Axes) -> None:
        cap = ramp.get("capacity_devices")
        shown = "-" if cap is None else f">={cap}" if ramp.get("capacity_is_lower_bound") else str(cap)
        xs = [int(s["devices"]) for s in steps]
        p50 = [_num((s.get("first_frame_ms") or {}).get("p50")) for s in steps]
        p95 = [_num(s.get("p95_first_frame_ms")) for s in steps]
        finite = [v for v in p50 + p95 + [threshold] if v is not None and math.isfinite(v)]
        top = max(finite) * 1.1 if finite else 1.0
        for series, color, name in ((p50, P50, "p50"), (p95, P95_LINE, "p95")):
            points = [(d, v if math.isfinite(v) else top) for d, v in zip(xs, series, strict=True) if v is not None]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], "s-", color=color,
                        label=f"{name} first frame")
        if threshold is not None:
            ax.axhline(threshold, color=MAXC, linestyle="--", label=f"threshold {fmt(threshold)}")
        ax.set_xticks(sorted(set(xs)))
        ax.set_ylim(0, top)
        ax.set_xlabel("devices")
        ax.set_ylabel("ms")
        ax.grid(axis="y", color="#e1e1e1")
        ax.set_axisbelow(True)
        ax.set_title(f"First reply latency vs devices (capacity {shown})", loc="left")
        ax.legend(fontsize=8)

    return 3.0, draw


def _stat_row(label: str, s: dict[str, Any] | None) -> Row:
    s = s or {}
    return label, _num(s.get("p50")), _num(s.get("p95")), _num(s.get("max"))


def component_rows(components: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    get = {k: (v or {}).get("summary") or {} for k, v in components.items()}
    if "asr" in get:
        by_set = get["asr"].get("by_set") or {}
        for name, s in by_set.items():
            rows.append(_stat_row(f"ASR {name}", s.get("elapsed_ms")))
    if "llm" in get:
        rows.append(_stat_row("LLM first token", get["llm"].get("ttft_ms")))
        rows.append(_stat_row("LLM first clause", get["llm"].get("first_clause_ms")))
    if "tts" in get:
        rows.append(_stat_row("TTS first chunk", get["tts"].get("first_chunk_ms")))
    if "vad" in get:
        rows.append(_stat_row("VAD endpoint delay", get["vad"].get("endpoint_delay_ms")))
    return rows


def panels_of(report: dict[str, Any]) -> list[Panel]:
    """The panels a report has data for, top to bottom."""
    panels: list[Panel | None] = []
    e2e = report.get("e2e")
    if e2e:
        s = e2e.get("summary") or {}
        panels.append(bar_panel("End to end, ms from the end of speech (device view)", [
            _stat_row("-> stt", s.get("stt_ms")),
            _stat_row("-> first reply frame", s.get("first_frame_ms")),
            _stat_row("-> tts stop", s.get("tts_stop_ms")),
            _stat_row("abort -> tts stop", s.get("abort_to_stop_ms")),
        ]))
        panels.append(stages_panel(e2e.get("server_stages_ms") or {}))
    ramp = report.get("ramp")
    if ramp:
        panels.append(ramp_panel(ramp))
        if not e2e:
            steps = [st for st in ramp.get("steps") or [] if st.get("e2e")]
            if steps:
                panels.append(stages_panel(steps[-1]["e2e"].get("server_stages_ms") or {},
                                           f" ({steps[-1].get('devices')} dev)"))
    comps = report.get("components")
    if comps:
        panels.append(bar_panel("Components, ms", component_rows(comps)))
    return [p for p in panels if p is not None]


def render_chart(report: dict[str, Any]) -> bytes | None:
    """PNG bytes for a report dict, or None when it holds nothing to draw. Raises
    ChartUnavailable without matplotlib."""
    panels = panels_of(report)
    if not panels:
        return None
    try:
        # The object API with the Agg canvas: no pyplot global state, no display needed.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ChartUnavailable("matplotlib is not installed (pip install '.[bench]')") from None
    heights = [h for h, _ in panels]
    fig = Figure(figsize=(11, 0.6 + sum(heights) + 0.5 * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)
    machine = report.get("machine") or {}
    fig.suptitle(f"xiaozhi performance - {report.get('started_at', '')} - {machine.get('cpu_model', '?')} "
                 f"x{machine.get('cores_logical', '?')} - load {machine.get('load_average')}", fontsize=9)
    axes = fig.subplots(len(panels), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, (_, draw) in zip(axes, panels, strict=True):
        draw(ax)
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=90)
    return out.getvalue()
