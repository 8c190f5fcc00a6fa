"""The PNG chart of a report: one panel per kind of figure the run produced.

  - end-to-end latency from the end of speech (p50 bar, p95 extension, max tick)
  - the server's stage breakdown from speech end to first frame (stacked medians)
  - latency vs devices for ramp runs (p50 and p95 lines, the threshold dashed)
  - component latencies (p50 bar, p95 extension, max tick)

It is drawn from the report's JSON dict, so a saved report can be charted again later.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from bench.png import Canvas, Color
from bench.server_metrics import SERIAL_STAGES

WIDTH = 1000
MARGIN = 24
LABEL_W = 190
VALUE_W = 260
ROW_H = 26
TITLE_H = 30
INK: Color = (40, 40, 40)
GRID: Color = (225, 225, 225)
P50: Color = (52, 101, 164)
P95: Color = (152, 185, 226)
MAXC: Color = (200, 60, 40)
STAGE_COLORS: tuple[Color, ...] = ((120, 120, 120), (78, 154, 6), (52, 101, 164), (245, 121, 0), (117, 80, 123))

Row = tuple[str, float | None, float | None, float | None]  # label, p50, p95, max
Panel = tuple[int, Callable[[Canvas, int], None]]


def nice_ceiling(value: float) -> float:
    """The next 1, 2 or 5 x 10^k at or above `value` (axis ends)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if value <= m * exp:
            return m * exp
    return 10 * exp


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


def _title(c: Canvas, y: int, text: str) -> None:
    c.text(MARGIN, y + 8, text, INK, scale=2)


def bar_panel(title: str, rows: list[Row], unit: str = "ms") -> Panel | None:
    rows = [r for r in rows if r[1] is not None]
    if not rows:
        return None
    height = TITLE_H + 20 + ROW_H * len(rows) + 24

    def draw(c: Canvas, y: int) -> None:
        _title(c, y, title)
        top = y + TITLE_H + 16
        x0, x1 = MARGIN + LABEL_W, WIDTH - MARGIN - VALUE_W
        finite = [v for r in rows for v in r[1:] if v is not None and math.isfinite(v)]
        scale_max = nice_ceiling(axis_end(rows, finite))
        for k in range(6):  # grid and axis labels
            gx = x0 + (x1 - x0) * k / 5
            c.line(gx, top - 4, gx, top + ROW_H * len(rows), GRID)
            c.text(gx, top + ROW_H * len(rows) + 6, fmt(scale_max * k / 5), INK, align="center")
        last = fmt(scale_max)
        c.text(x1 + Canvas.text_width(last) / 2 + 6, top + ROW_H * len(rows) + 6, unit, INK)

        def px(v: float) -> float:
            return x0 + (x1 - x0) * min(v, scale_max) / scale_max

        for i, (label, p50, p95, mx) in enumerate(rows):
            ry = top + i * ROW_H
            c.text(x0 - 8, ry + 6, label, INK, align="right")
            if any(v is not None and v > scale_max for v in (p50, p95, mx)):
                c.text(x1 + 3, ry + 6, ">", MAXC)  # off the scale: the real values are in the text
            if p95 is not None:
                c.rect(x0, ry + 3, px(p95), ry + ROW_H - 7, P95)
            c.rect(x0, ry + 3, px(p50 or 0), ry + ROW_H - 7, P50)
            if mx is not None:
                c.rect(px(mx) - 1, ry, px(mx) + 2, ry + ROW_H - 4, MAXC)
            c.text(x1 + 16, ry + 6, f"p50 {fmt(p50)}  p95 {fmt(p95)}  max {fmt(mx)}", INK)
        legend_y = y + TITLE_H - 4
        lx = WIDTH - MARGIN - 300
        for color, name in ((P50, "p50"), (P95, "p95"), (MAXC, "max")):
            c.rect(lx, legend_y, lx + 14, legend_y + 8, color)
            c.text(lx + 18, legend_y, name, INK)
            lx += 70

    return height, draw


def stages_panel(stages: dict[str, Any], where: str = "") -> Panel | None:
    values = [(name, _num((stages.get(name) or {}).get("p50"))) for name in SERIAL_STAGES]
    if not any(v for _, v in values):
        return None
    total_p50 = _num((stages.get("speech_end_to_first_frame") or {}).get("p50"))
    height = TITLE_H + 16 + 34 + 22 * 3 + 10

    def draw(c: Canvas, y: int) -> None:
        _title(c, y, f"Server stages, median ms: end of speech -> first reply frame{where}")
        top = y + TITLE_H + 12
        x0, x1 = MARGIN, WIDTH - MARGIN
        total = sum(v or 0 for _, v in values) or 1
        x = float(x0)
        for i, (_name, v) in enumerate(values):
            w = (x1 - x0) * (v or 0) / total
            c.rect(x, top, x + w, top + 26, STAGE_COLORS[i % len(STAGE_COLORS)])
            if w > 40:
                c.text(x + w / 2, top + 10, fmt(v), (255, 255, 255), align="center")
            x += w
        ly = top + 40
        for i, (name, v) in enumerate(values):
            col, row = i % 3, i // 3
            lx = x0 + col * 320
            c.rect(lx, ly + row * 22, lx + 14, ly + row * 22 + 10, STAGE_COLORS[i % len(STAGE_COLORS)])
            c.text(lx + 20, ly + row * 22 + 2, f"{name} {fmt(v)} ms", INK)
        c.text(x0 + 2 * 320, ly + 22, f"sum of medians {fmt(sum(v or 0 for _, v in values))} ms; "
               f"median total {fmt(total_p50)}", INK)

    return height, draw


def ramp_panel(ramp: dict[str, Any]) -> Panel | None:
    steps = [s for s in ramp.get("steps") or [] if _num(s.get("devices")) is not None]
    if not steps:
        return None
    threshold = _num((ramp.get("options") or {}).get("threshold_ms"))
    plot_h = 260
    height = TITLE_H + 20 + plot_h + 40

    def draw(c: Canvas, y: int) -> None:
        cap = ramp.get("capacity_devices")
        shown = "-" if cap is None else f">={cap}" if ramp.get("capacity_is_lower_bound") else str(cap)
        _title(c, y, f"First reply latency vs devices (capacity {shown})")
        top, bottom = y + TITLE_H + 16, y + TITLE_H + 16 + plot_h
        x0, x1 = MARGIN + 70, WIDTH - MARGIN - 150
        xs = [int(s["devices"]) for s in steps]
        p50 = [_num((s.get("first_frame_ms") or {}).get("p50")) for s in steps]
        p95 = [_num(s.get("p95_first_frame_ms")) for s in steps]
        finite = [v for v in p50 + p95 + [threshold] if v is not None and math.isfinite(v)]
        y_max = nice_ceiling(max(finite) * 1.1 if finite else 1)
        x_lo, x_hi = min(xs), max(max(xs), min(xs) + 1)

        def px(d: float) -> float:
            return x0 + (x1 - x0) * (d - x_lo) / (x_hi - x_lo)

        def py(v: float) -> float:
            return bottom - (bottom - top) * min(v, y_max) / y_max

        for k in range(6):
            gy = py(y_max * k / 5)
            c.line(x0, gy, x1, gy, GRID)
            c.text(x0 - 6, gy - 3, fmt(y_max * k / 5), INK, align="right")
        c.line(x0, top, x0, bottom, INK)
        c.line(x0, bottom, x1, bottom, INK)
        for d in sorted(set(xs)):
            c.line(px(d), bottom, px(d), bottom + 4, INK)
            c.text(px(d), bottom + 8, str(d), INK, align="center")
        c.text((x0 + x1) / 2, bottom + 22, "devices", INK, align="center")
        c.text(x0 - 6, top - 14, "ms", INK, align="right")
        if threshold is not None:
            c.line(x0, py(threshold), x1, py(threshold), MAXC, dash=6)
            c.text(x1 + 8, py(threshold) - 3, f"threshold {fmt(threshold)}", MAXC)
        for series, color, name, ly in ((p50, P50, "p50", top), (p95, (245, 121, 0), "p95", top + 16)):
            points = [(px(d), py(v if math.isfinite(v) else y_max)) for d, v in zip(xs, series, strict=True)
                      if v is not None]
            for (ax, ay), (bx, by) in zip(points, points[1:], strict=False):
                c.line(ax, ay, bx, by, color, width=2)
            for ax, ay in points:
                c.rect(ax - 3, ay - 3, ax + 3, ay + 3, color)
            c.rect(x1 + 8, ly, x1 + 22, ly + 8, color)
            c.text(x1 + 26, ly, f"{name} first frame", INK)

    return height, draw


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


def render_chart(report: dict[str, Any]) -> bytes | None:
    """PNG bytes for a report dict, or None when it holds nothing to draw."""
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
    drawn = [p for p in panels if p is not None]
    if not drawn:
        return None
    header = 40
    height = header + sum(h for h, _ in drawn) + MARGIN
    canvas = Canvas(WIDTH, height)
    machine = report.get("machine") or {}
    load = machine.get("load_average")
    canvas.text(MARGIN, 14, f"xiaozhi performance - {report.get('started_at', '')} - "
                f"{machine.get('cpu_model', '?')} x{machine.get('cores_logical', '?')} - load {load}", INK)
    y = header
    for h, draw in drawn:
        draw(canvas, y)
        y += h
    return canvas.to_png()
