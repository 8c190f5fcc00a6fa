"""Small statistics helpers: percentiles and the p50/p95/max summaries every table shows."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def percentile(values: Iterable[float], q: float) -> float | None:
    """Percentile `q` (0-100) with linear interpolation between ranks (numpy's default method);
    None for no values. An infinite value (a failed turn counted as "never") propagates."""
    data = sorted(values)
    if not data:
        return None
    if len(data) == 1:
        return data[0]
    rank = (len(data) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(data) - 1)
    frac = rank - low
    if frac == 0 or data[low] == data[high]:
        return data[low]
    return data[low] + (data[high] - data[low]) * frac


def summarize(values: Iterable[float | None], digits: int = 1) -> dict[str, Any]:
    """n, mean, p50, p95, min, max of the values that are not None (rounded to `digits`)."""
    data = [float(v) for v in values if v is not None]
    if not data:
        return {"n": 0, "mean": None, "p50": None, "p95": None, "min": None, "max": None}
    finite = [v for v in data if math.isfinite(v)]
    return {
        "n": len(data),
        "mean": _r(sum(finite) / len(finite), digits) if finite else None,
        "p50": _r(percentile(data, 50), digits),
        "p95": _r(percentile(data, 95), digits),
        "min": _r(min(data), digits),
        "max": _r(max(data), digits),
    }


def _r(value: float | None, digits: int = 1) -> float | None:
    if value is None or not math.isfinite(value):
        return None if value is None else value
    return round(value, digits)
