"""What the figures were measured on: CPU, cores, RAM, Python, OS, and how busy the machine was.

Latency on a small machine depends as much on what else runs as on our code, so the load
average before and after a run is part of every report.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):  # Windows has no load average
        return None


def machine_info() -> dict[str, Any]:
    import psutil

    return {
        "cpu_model": cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
        "os": platform.platform(),
        "load_average": load_average(),
    }


def parse_cpu_list(text: str) -> set[int]:
    """`1`, `0,2` or `2-3` (the taskset/cpuset notation) -> CPU numbers this machine has."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"not a CPU list: {text!r} (e.g. 1, 0,2 or 2-3)")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    available = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    if not cpus or not cpus <= available:
        raise ValueError(f"{text!r} is not a subset of the CPUs available here ({sorted(available)})")
    if cpus == available:
        raise ValueError("leave at least one CPU for the tester")
    return cpus


def pin_process(pid: int, cpus: set[int]) -> set[int]:
    """Pin every thread of `pid` to `cpus` (threads started later inherit it from the thread that
    starts them) and this process to the remaining CPUs; returns the latter."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), cpus)
    rest = os.sched_getaffinity(0) - cpus
    for tid in os.listdir(f"/proc/{os.getpid()}/task"):
        os.sched_setaffinity(int(tid), rest)
    return rest
