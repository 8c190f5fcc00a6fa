"""`--fleet N`: run the benchmark against N server processes behind HAProxy on one PostgreSQL,
all started here on 127.0.0.1 (harness/fleet), with the tester's own config for the providers.
`--hello K` measures connect-to-hello latency through the balancer and straight to one process.

What a fleet on one machine measures is the balancer's and the shared store's overhead and how
devices spread, not capacity: the N processes share this machine's cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from bench.console import Console
from bench.stats import summarize
from harness.devsim import SimDevice


@dataclass
class HelloResult:
    path: str  # "balancer" | "direct"
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"path": self.path, "connects": len(self.latencies_ms), "errors": len(self.errors),
                **summarize(self.latencies_ms)}


async def hello_latency(http_url: str, ws_url: str | None, count: int, rate_per_s: float, path: str) -> HelloResult:
    """`count` devices one after another at `rate_per_s`: OTA once, then time the WebSocket
    connect + firmware hello -> server hello, and hang up."""
    result = HelloResult(path)
    interval = 1 / rate_per_s
    for _ in range(count):
        started = time.monotonic()
        dev = SimDevice()
        try:
            await dev.ota(http_url)
            t0 = time.monotonic()
            await dev.connect(url=ws_url)
            result.latencies_ms.append(round((time.monotonic() - t0) * 1000, 2))
            # Let the device answer the server's MCP initialize before hanging up (as a board
            # would), so the hang-up does not race that exchange.
            with contextlib.suppress(Exception):
                await dev.wait_for(lambda e: e.is_msg("mcp"), timeout=2)
                await asyncio.sleep(0.05)
        except Exception as exc:  # noqa: BLE001 - a failed connect is a finding, not a crash
            result.errors.append(repr(exc)[:200])
        finally:
            with contextlib.suppress(Exception):
                await dev.close()
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
    return result


async def spread(http_url: str, count: int, prometheus_urls: dict[str, str], console: Console) -> None:
    """Hold `count` listening devices through the balancer at once and read, per process, how
    many it got and its RSS compared with before (devices per process, memory per device)."""
    before = await node_figures(prometheus_urls)
    devices: list[SimDevice] = []
    try:
        for _ in range(count):
            dev = SimDevice()
            await dev.ota(http_url)
            await dev.connect()
            await dev.listen_start("auto")
            devices.append(dev)
        await asyncio.sleep(2)
        after = await node_figures(prometheus_urls)
        for name in prometheus_urls:
            got = after[name]["sessions"]
            grew = after[name]["rss_mb"] - before[name]["rss_mb"]
            console.log(f"spread: process {name} holds {got:.0f} of {count} devices; RSS {before[name]['rss_mb']} -> "
                        f"{after[name]['rss_mb']} MB ({grew / got * 1000 if got else 0:.0f} kB per device)")
    finally:
        await asyncio.gather(*(d.close() for d in devices), return_exceptions=True)


async def node_figures(prometheus_urls: dict[str, str]) -> dict[str, dict[str, float]]:
    """Sessions, finished turns and RSS of each process, from its Prometheus listener."""
    import aiohttp

    out: dict[str, dict[str, float]] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        for name, url in prometheus_urls.items():
            figures = {"sessions": 0.0, "turns": 0.0, "rss_mb": 0.0}
            try:
                async with http.get(url) as r:
                    text = await r.text()
            except Exception:  # noqa: BLE001 - a node that died is reported as empty
                out[name] = figures
                continue
            for line in text.splitlines():
                if line.startswith("xz_sessions "):
                    figures["sessions"] = float(line.split()[-1])
                elif line.startswith("xz_turns_total{"):
                    figures["turns"] += float(line.split()[-1])
                elif line.startswith("process_resident_memory_bytes "):
                    figures["rss_mb"] = round(float(line.split()[-1]) / 1e6, 1)
            out[name] = figures
    return out


@contextlib.asynccontextmanager
async def fleet_target(nodes: int, overrides: dict[str, Any], console: Console, echo: bool,
                       hello: int = 0) -> AsyncIterator[Any]:
    from bench.e2e import Target
    from harness.fleet.cluster import fleet
    from harness.fleet.engines import in_thread, postgres_cluster

    console.log(f"starting PostgreSQL, {nodes} server processes and HAProxy on 127.0.0.1...")
    t0 = time.monotonic()
    async with in_thread(postgres_cluster()) as pg:
        url = await pg.new_database("bench")
        async with fleet(url, None, nodes=nodes, overrides=overrides, echo=echo) as f:
            console.log(f"fleet ready in {time.monotonic() - t0:.1f} s: balancer {f.balancer.ws_url}, processes "
                        + ", ".join(f"{n} pid {s.pid}" for n, s in zip(f.names, f.servers, strict=True)))
            if hello:
                for path, ws in (("balancer", None), ("direct", f.servers[0].ws_url)):
                    res = await hello_latency(f.balancer.http_url, ws, hello, 10.0, path)
                    s = res.summary()
                    console.log(f"hello latency {path}: {s.get('n', 0)} connects, p50 {s.get('p50')} ms, "
                                f"p95 {s.get('p95')} ms, max {s.get('max')} ms, errors {len(res.errors)}")
            prom = {n: f.prometheus_url(n) for n in f.names}
            if hello:
                await spread(f.balancer.http_url, hello, prom, console)
            # The balancer's address: OTA and WebSocket go through HAProxy; /metrics is denied there,
            # so the per-turn server breakdown is not recorded (per-process figures are logged below).
            # CPU and RSS are sampled on process a only (the report's "server" figures).
            console.log(f"resource figures below are process a's (pid {f.servers[0].pid}) only")
            yield Target(f.balancer.ws_url, f.balancer.http_url, f.servers[0].pid, spawned=True)
            for name, figures in (await node_figures(prom)).items():
                console.log(f"process {name}: {figures['turns']:.0f} turns, {figures['sessions']:.0f} sessions now, "
                            f"RSS {figures['rss_mb']} MB")
