"""Idle devices: the server's memory and CPU with 0, 1 and N connected devices nobody talks to.

Each simulated device does what a firmware does when it opens its audio channel: the OTA request,
the WebSocket handshake, `hello` (the server then lists its MCP tools) and `listen start auto`.
Then nobody speaks. With `audio="silence"` (the default) each device keeps streaming 60 ms Opus
frames of digital silence in real time, as a listening firmware streams its microphone (DTX makes
them 1-3 byte packets); the server decodes and runs VAD on every frame, so this is the cost of a
device left listening. With `audio="none"` nothing follows `listen start`: only the per-connection
state (session, Opus decoder, VAD state, MCP client) is measured.

Steps: 0 devices (the server as started), then 1, then N, each followed by `settle_s` seconds
with nothing new happening; RSS is read at the end of that window (and its peak inside it), CPU
is the mean over it. The server's no-voice timeout (`session.idle_timeout_s`, 120 s by default)
hangs up on devices left longer than that; a device the server closed is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.console import Console
from bench.e2e import Target, _reason
from bench.resources import MB, ResourceSampler, Sample
from harness.devsim import DeviceIdentity, SimDevice, silence

SILENCE_CHUNK_MS = 3000  # encoded per to_thread call; streamed paced, frame by frame
AUDIO_MODES = ("silence", "none")


@dataclass(slots=True)
class IdleOptions:
    devices: int = 20
    settle_s: float = 5.0
    audio: str = "silence"  # silence | none (see the module docstring)


@dataclass
class IdleStep:
    devices: int
    connected: int = 0  # devices open at the end of the step
    connect_s: float | None = None  # time to bring the devices added in this step up to listening
    rss_mb: float | None = None  # at the end of the settle window
    rss_peak_mb: float | None = None  # highest sample in the settle window
    cpu_percent: float | None = None  # mean over the settle window; 100 = one core
    window_s: float | None = None
    samples: int = 0


@dataclass
class IdleResult:
    options: IdleOptions
    target: Target
    steps: list[IdleStep] = field(default_factory=list)
    connect_errors: list[str] = field(default_factory=list)
    closed_by_server: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    client_cpu_percent: float | None = None  # the simulated devices (this process), over the run
    interrupted: bool = False

    def increments(self) -> dict[str, Any]:
        """What one more idle device costs: the first one (which may also warm up per-process
        state) and each of the next ones, from the settled figures of the steps."""
        by_n = {s.devices: s for s in self.steps if s.rss_mb is not None}
        out: dict[str, Any] = {"rss_first_device_mb": None, "rss_per_device_mb": None,
                               "cpu_percent_first_device": None, "cpu_percent_per_device": None}
        zero, one = by_n.get(0), by_n.get(1)
        if zero is not None and one is not None:
            out["rss_first_device_mb"] = _delta(one.rss_mb, zero.rss_mb, 1)
            out["cpu_percent_first_device"] = _delta(one.cpu_percent, zero.cpu_percent, 1)
        top = max(by_n) if by_n else None
        if top is not None and top > 1 and one is not None:
            n = by_n[top]
            out["rss_per_device_mb"] = _delta(n.rss_mb, one.rss_mb, top - 1, 2)
            out["cpu_percent_per_device"] = _delta(n.cpu_percent, one.cpu_percent, top - 1, 2)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"options": asdict(self.options), "target": asdict(self.target),
                "steps": [asdict(s) for s in self.steps], "increments": self.increments(),
                "connect_errors": self.connect_errors, "closed_by_server": self.closed_by_server,
                "client_cpu_percent": self.client_cpu_percent, "notes": self.notes,
                "interrupted": self.interrupted}


def _delta(a: float | None, b: float | None, n: int, digits: int = 1) -> float | None:
    return None if a is None or b is None or n < 1 else round((a - b) / n, digits)


def idle_counts(n: int) -> list[int]:
    return sorted({0, 1, max(1, n)})


async def _stream_silence(dev: SimDevice) -> None:
    chunk = silence(SILENCE_CHUNK_MS)
    while not dev.closed:
        await dev.stream_audio(chunk)


async def _connect(index: int, target: Target) -> SimDevice:
    dev = SimDevice(identity=DeviceIdentity())
    try:
        if target.http_url:
            await dev.ota(target.http_url)
        await dev.connect(url=target.ws_url)
        await dev.listen_start("auto")
    except BaseException:
        with contextlib.suppress(Exception):
            await dev.close()
        raise
    return dev


def _window(samples: list[Sample], start: Sample, end: Sample, step: IdleStep) -> None:
    inside = [s for s in samples if start.t <= s.t <= end.t]
    step.samples = len(inside)
    step.window_s = round(end.t - start.t, 2)
    step.rss_mb = round(end.rss / MB, 1)
    step.rss_peak_mb = round(max(s.rss for s in inside) / MB, 1) if inside else step.rss_mb
    if end.t > start.t:
        step.cpu_percent = round((end.cpu_s - start.cpu_s) / (end.t - start.t) * 100, 1)


async def run_idle(target: Target, opts: IdleOptions, console: Console, result: IdleResult | None = None) -> IdleResult:
    """Fills `result` step by step, so an interrupted run keeps the finished steps."""
    result = result or IdleResult(opts, target)
    sampler = ResourceSampler(target.pid, interval_s=0.25)
    await sampler.start()
    if sampler.error:
        result.notes.append(f"idle: {sampler.error}; nothing to measure")
        return result
    devices: list[SimDevice] = []
    streams: list[asyncio.Task[None]] = []
    client_cpu0, t0 = time.process_time(), time.monotonic()
    try:
        for count in idle_counts(opts.devices):
            step = IdleStep(count)
            started = time.monotonic()
            while len(devices) + len(result.connect_errors) < count:
                index = len(devices) + len(result.connect_errors)
                try:
                    dev = await _connect(index, target)
                except Exception as exc:  # noqa: BLE001 - a device that cannot connect is a finding
                    result.connect_errors.append(f"device {index}: {_reason(exc)}")
                    continue
                devices.append(dev)
                if opts.audio == "silence":
                    streams.append(asyncio.create_task(_stream_silence(dev), name=f"idle-mic-{index}"))
            step.connect_s = round(time.monotonic() - started, 2) if count else None
            result.steps.append(step)
            console.log(f"idle: {len(devices)} device(s) connected and listening; settling {opts.settle_s:g} s")
            first = await sampler.sample_now()
            await asyncio.sleep(opts.settle_s)
            last = await sampler.sample_now()
            if first is None or last is None:
                result.notes.append(f"idle: {sampler.error or 'the server process could not be read'}")
                return result
            _window(sampler.samples, first, last, step)
            step.connected = sum(1 for d in devices if not d.closed)
            console.log(f"idle: {count} device(s): RSS {step.rss_mb} MB (peak {step.rss_peak_mb}), "
                        f"CPU {step.cpu_percent}%")
    except asyncio.CancelledError:
        result.interrupted = True
        raise
    finally:
        for index, dev in enumerate(devices):
            if dev.closed:
                code = next((e.close_code for e in reversed(dev.events) if e.kind == "close"), None)
                result.closed_by_server.append(f"device {index}: closed (code {code})")
        for task in streams:
            task.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
        await asyncio.gather(*(d.close() for d in devices), return_exceptions=True)
        await sampler.stop()
        wall = time.monotonic() - t0
        if wall > 0:
            result.client_cpu_percent = round((time.process_time() - client_cpu0) / wall * 100, 1)
    if opts.audio == "silence":
        result.notes.append("each device streamed 60 ms Opus frames of digital silence in real time "
                            "(a listening firmware's microphone)")
    else:
        result.notes.append("the devices sent nothing after listen start")
    return result
