"""`--compare old.json new.json`: the ratio new/old for every metric both reports have.

Most metrics are costs (latency, CPU, memory, error rates): a ratio below 1 is an improvement.
A few are benefits (success rate, tokens per second, capacity): there, above 1 is better. The
verdict column says which, so nobody has to remember.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.report import table

HIGHER_IS_BETTER = ("success_rate", "tokens_per_s", "capacity_devices", "frames_sent_share", "speculation_used")
SAME_WITHIN = 0.05  # +-5 %: run-to-run noise on a shared machine is at least this much
SAME_MS = 1.0  # and sub-millisecond differences are timer noise, whatever their ratio


class CompareError(Exception):
    """A report cannot be read; the message is one line."""


@dataclass(slots=True)
class Ratio:
    metric: str
    old: float
    new: float
    ratio: float | None  # None when old is 0 (and new is not)
    verdict: str  # better | worse | same | new-only/...


def load_report(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CompareError(f"{p}: no such file") from None
    except (OSError, ValueError) as exc:
        raise CompareError(f"{p}: not a readable JSON report ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("summary"), dict):
        raise CompareError(f"{p}: not a performance_tester report (no 'summary')")
    return data


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[Ratio]:
    a, b = old["summary"], new["summary"]
    out: list[Ratio] = []
    for metric in sorted(set(a) & set(b)):
        x, y = a[metric], b[metric]
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in (x, y)):
            continue
        ratio = y / x if x else (1.0 if y == 0 else None)
        higher_better = any(h in metric for h in HIGHER_IS_BETTER)
        if ratio is None:
            verdict = "better" if higher_better else "worse"
        elif abs(ratio - 1) <= SAME_WITHIN or ("_ms" in metric and "per_frame" not in metric
                                                 and abs(y - x) < SAME_MS):
            verdict = "same"
        else:
            verdict = "better" if (ratio > 1) == higher_better else "worse"
        out.append(Ratio(metric, float(x), float(y), ratio, verdict))
    return out


def render(old_path: str, new_path: str, old: dict[str, Any], new: dict[str, Any], ratios: list[Ratio]) -> str:
    lines = [f"old: {old_path} ({old.get('started_at')}, load {(old.get('machine') or {}).get('load_average')})",
             f"new: {new_path} ({new.get('started_at')}, load {(new.get('machine') or {}).get('load_average')})"]
    if (old.get("machine") or {}).get("cpu_model") != (new.get("machine") or {}).get("cpu_model"):
        lines.append("warning: the two reports come from different CPUs")
    rows = [[r.metric, r.old, r.new, f"{r.ratio:.2f}x" if r.ratio is not None else "n/a", r.verdict]
            for r in ratios]
    lines.append(table(["metric", "old", "new", "new/old", "verdict"], rows) if rows
                 else "no metric in common between the two reports")
    only_old = sorted(set(old["summary"]) - set(new["summary"]))
    only_new = sorted(set(new["summary"]) - set(old["summary"]))
    for label, names in (("only in old", only_old), ("only in new", only_new)):
        if names:
            more = f" ... and {len(names) - 10} more" if len(names) > 10 else ""
            lines.append(f"{label}: {', '.join(names[:10])}{more}")
    better = sum(r.verdict == "better" for r in ratios)
    worse = sum(r.verdict == "worse" for r in ratios)
    lines.append(f"{better} better, {worse} worse, {len(ratios) - better - worse} within {SAME_WITHIN:.0%} "
                 "(ratios below 1 are improvements, except success rate, tokens/s and capacity)")
    return "\n".join(lines)
