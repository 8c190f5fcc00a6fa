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
