"""The server process's CPU and memory while devices talk to it (psutil, sampled off the loop).

CPU is computed from the process's CPU-time counters (user + system) between samples, so it is
exact over the run whatever the sampling interval; 100 % means one core fully busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

MB = 2**20


@dataclass(slots=True)
class Sample:
    t: float  # time.monotonic()
    cpu_s: float  # user + system CPU seconds of the process so far
    rss: int


@dataclass
class ResourceSampler:
    pid: int | None
    interval_s: float = 0.5
    samples: list[Sample] = field(default_factory=list)
    baseline_rss: int | None = None
    error: str | None = None
    _task: asyncio.Task[None] | None = None
    _proc: Any = None

    async def start(self) -> None:
        if self.pid is None:
            self.error = "server process unknown (remote --url without --server-pid)"
            return
        import psutil

        try:
            self._proc = psutil.Process(self.pid)
            first = await asyncio.to_thread(self._sample)
        except (psutil.Error, OSError) as exc:
            self.error = f"cannot watch process {self.pid}: {exc}"
            return
        self.baseline_rss = first.rss  # before any device connected
        self._task = asyncio.create_task(self._run(), name="bench-resources")

    def _sample(self) -> Sample:
        with self._proc.oneshot():
            times = self._proc.cpu_times()
            sample = Sample(time.monotonic(), times.user + times.system, self._proc.memory_info().rss)
        self.samples.append(sample)
        return sample

    async def _run(self) -> None:
        import psutil

        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await asyncio.to_thread(self._sample)
            except (psutil.Error, OSError) as exc:
                self.error = f"process {self.pid} went away: {exc}"
                return

    async def sample_now(self) -> Sample | None:
        """One sample at this moment (off the loop), e.g. at the edges of a measuring window;
        None once the process cannot be read."""
        if self._proc is None:
            return None
        import psutil

        try:
            return await asyncio.to_thread(self._sample)
        except (psutil.Error, OSError) as exc:
            self.error = f"process {self.pid} went away: {exc}"
            return None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._sample)  # a last sample, so the run's end is counted

    def summary(self, devices: int) -> dict[str, Any]:
        out: dict[str, Any] = {"pid": self.pid, "samples": len(self.samples), "error": self.error}
        if len(self.samples) < 2:
            return out
        first, last = self.samples[0], self.samples[-1]
        wall = last.t - first.t
        cpu = last.cpu_s - first.cpu_s
        peaks = [(b.cpu_s - a.cpu_s) / (b.t - a.t) * 100 for a, b in zip(self.samples, self.samples[1:], strict=False)
                 if b.t > a.t]
        peak_rss = max(s.rss for s in self.samples)
        mean_pct = cpu / wall * 100 if wall > 0 else None
        baseline = self.baseline_rss or first.rss
        out.update(
            wall_s=round(wall, 2), cpu_s=round(cpu, 2),
            cpu_percent_mean=round(mean_pct, 1) if mean_pct is not None else None,
            cpu_percent_peak=round(max(peaks), 1) if peaks else None,
            rss_baseline_mb=round(baseline / MB, 1), rss_peak_mb=round(peak_rss / MB, 1),
            cpu_percent_per_device=round(mean_pct / devices, 1) if mean_pct is not None and devices else None,
            rss_per_device_mb=round((peak_rss - baseline) / MB / devices, 2) if devices else None,
            timeline=[{"t": round(b.t - first.t, 2), "cpu_percent": round((b.cpu_s - a.cpu_s) / (b.t - a.t) * 100, 1),
                       "rss_mb": round(b.rss / MB, 1)}
                      for a, b in zip(self.samples, self.samples[1:], strict=False) if b.t > a.t],
        )
        return out


def find_listening_pid(url: str) -> int | None:
    """The pid listening on a loopback URL's port (to watch a server we did not start).
    None for remote hosts, or when the OS does not tell us."""
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1") or parts.port is None:
        return None
    import psutil

    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == parts.port and conn.pid:
                return int(conn.pid)
    except (psutil.Error, OSError):
        return None
    return None
