"""Idle devices: the server's memory and CPU with 0, 1 and N connected devices nobody talks to.

Each simulated device does what a firmware does when it opens its audio channel: the OTA request,
the WebSocket handshake, `hello` (the server then lists its MCP tools) and `listen start auto`.
Then nobody speaks. With `audio="silence"` (the default) each device keeps streaming 60 ms Opus
frames of digital silence in real time, as a listening firmware streams its microphone (DTX makes
them 1-3 byte packets). With `audio="room"` the frames carry room noise at a realistic level
(`room_noise`: a generated, fixed clip of fan-like low-passed noise, mains hum and the odd
click, -50 dBFS RMS, like a quiet office through a board's microphone at its usual gain), which
DTX does not reduce to empty packets: the server decodes every frame and its VAD sees real
audio. So these are the costs of a device left listening. With `audio="none"` nothing follows
`listen start`: only the per-connection state (session, Opus decoder, VAD state, MCP client) is
measured.

The devices are the light listeners of bench/listeners.py: the firmware's handshake, hello (with
MCP, answered), `listen start auto` and the microphone frames, spoken directly on a socket rather
than by the full simulated device, so the tester stays light enough to drive a thousand devices on
the machine it shares with the server. One pacing task sends for all of them, spread evenly over
the 60 ms frame period as unsynchronised devices would be. They skip the OTA request (it does not
change what a listening connection costs, and the OTA rate limit per address would refuse a
thousand requests from one tester address).

Steps: 0 devices (the server as started), then 1, then N, each followed by `settle_s` seconds
with nothing new happening (after N, 5 s more first, while the last connections finish their
setup); RSS is read at the end of that window (and its peak inside it), CPU is the mean over it.
The server's no-voice timeout (`session.idle_timeout_s`, 120 s by default) hangs up on devices
left longer than that; a server the tester starts gets it raised past the run, and connection
limits that fit the devices (`server_overrides`); a device the server closed is reported.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bench.console import Console
from bench.e2e import Target, _reason
from bench.listeners import ListenerPacer, RawListener, open_listener
from bench.resources import MB, ResourceSampler, Sample
from harness.devsim import silence
from harness.devsim.codec import UplinkEncoder

CLIP_MS = 6000  # the looped clip each device streams (encoded once, shared by all devices)
FRAME_MS = 60
AUDIO_MODES = ("silence", "room", "none")
SETUP_SETTLE_S = 5.0  # after the last connection of a step, before its window opens
CONNECT_BATCH = 50  # devices connecting at the same time
ROOM_DBFS = -50.0


def room_noise(ms: int, level_dbfs: float = ROOM_DBFS, seed: int = 12) -> bytes:
    """PCM16 16 kHz room noise: low-passed (fan/air) noise, 50 Hz hum and its harmonics, and a
    soft click every ~1.7 s, scaled to `level_dbfs` RMS. Deterministic for a given seed."""
    rng = np.random.default_rng(seed)
    n = 16000 * ms // 1000
    white = rng.standard_normal(n)
    # One-pole low-pass (~300 Hz corner) twice: most of a room's noise energy is low.
    alpha = 0.89
    fan = np.empty(n)
    acc = acc2 = 0.0
    for i in range(n):  # a few hundred thousand steps, once per run
        acc = alpha * acc + (1 - alpha) * white[i]
        acc2 = alpha * acc2 + (1 - alpha) * acc
        fan[i] = acc2
    fan /= np.sqrt(np.mean(fan ** 2))
    t = np.arange(n) / 16000
    hum = 0.3 * np.sin(2 * np.pi * 50 * t) + 0.15 * np.sin(2 * np.pi * 150 * t)
    mix = fan + hum
    for start in range(8000, n - 160, 27000):  # clicks: 10 ms decaying bursts, +12 dB
        burst = rng.standard_normal(160) * np.exp(-np.arange(160) / 40) * 4
        mix[start:start + 160] += burst
    mix *= 10 ** (level_dbfs / 20) * 32768 / np.sqrt(np.mean(mix ** 2))
    return np.clip(mix, -32768, 32767).astype("<i2").tobytes()


def clip_packets(audio: str) -> list[bytes]:
    """The looped uplink clip, encoded once the way the firmware encodes (60 ms, DTX)."""
    pcm = silence(CLIP_MS) if audio == "silence" else room_noise(CLIP_MS)
    return UplinkEncoder(FRAME_MS).encode_all(pcm)


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
    # The server's counters (/metrics) over the settle window: uplink frames answered as DTX
    # without decoding, frames decoded, VAD windows run by the model or skipped as quiet, batches.
    server_counters: dict[str, int] = field(default_factory=dict)
    # Frames the devices sent in the window, against what real-time devices would have sent: on
    # a busy machine the tester can fall behind, and the server sees fewer frames.
    frames_sent: int = 0
    frames_expected: int = 0
    # Server CPU per uplink frame it took in (sent minus dropped), and the share of one core a
    # device streaming at the real-time rate costs at that price: comparable between runs even
    # when the machine is shared and the tester could not keep the full rate.
    cpu_ms_per_frame: float | None = None
    cpu_percent_per_device_realtime: float | None = None


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


def server_overrides(devices: int, limits: Any, idle_timeout_s: float, *, listening: bool) -> dict[str, Any]:
    """What a server the tester starts needs to hold `devices` connections from one address: the
    connection limits raised to fit (they guard a real server against one address opening
    hundreds of sockets, which is exactly what this tester does) and, with `listening` devices,
    the no-voice hang-up pushed past the run (a firmware hung up on stops streaming, which is not
    what is measured)."""
    out: dict[str, Any] = {}
    need = devices + 10
    server_limits: dict[str, Any] = {}
    if limits.max_connections and limits.max_connections < need:
        server_limits["max_connections"] = need
    if limits.max_connections_per_address and limits.max_connections_per_address < need:
        server_limits["max_connections_per_address"] = need
    if limits.ota_per_minute and limits.ota_per_minute < 4 * need:  # e2e devices ask OTA each step
        server_limits["ota_per_minute"] = 4 * need
    if server_limits:
        out["server"] = {"limits": server_limits}
    if listening and idle_timeout_s and idle_timeout_s < 3600:
        out["session"] = {"idle_timeout_s": 3600}
    return out


def idle_counts(n: int) -> list[int]:
    return sorted({0, 1, max(1, n)})


CONNECT_ATTEMPTS = 3  # a firmware that fails to open its channel tries again too


async def _connect(index: int, target: Target, retries: list[int]) -> RawListener:
    for attempt in range(CONNECT_ATTEMPTS):
        try:
            return await open_listener(index, target.ws_url)
        except (OSError, TimeoutError, ConnectionError):
            if attempt == CONNECT_ATTEMPTS - 1:
                raise
            retries[0] += 1
            await asyncio.sleep(1.0 + attempt)
    raise AssertionError("unreachable")


def _per_frame(step: IdleStep, cpu_s: float) -> None:
    taken = step.frames_sent - step.server_counters.get("uplink_frames_dropped", 0)
    if step.devices and taken > 0:
        step.cpu_ms_per_frame = round(cpu_s * 1000 / taken, 4)
        step.cpu_percent_per_device_realtime = round(step.cpu_ms_per_frame * (1000 / FRAME_MS) / 10, 4)


async def _counters(target: Target, notes: list[str]) -> dict[str, int]:
    if not target.http_url:
        return {}
    from bench.server_metrics import get_json

    try:
        data = await get_json(target.http_url.rstrip("/") + "/metrics", timeout_s=15.0)
    except Exception as exc:  # noqa: BLE001 - a server without /metrics: the counters are just missing
        note = f"server counters unavailable: {_reason(exc)}"
        if note not in notes:
            notes.append(note)
        return {}
    return {str(k): int(v) for k, v in (data.get("counters") or {}).items()}


def _window(samples: list[Sample], start: Sample, end: Sample, step: IdleStep) -> None:
    inside = [s for s in samples if start.t <= s.t <= end.t]
    step.samples = len(inside)
    step.window_s = round(end.t - start.t, 2)
    step.rss_mb = round(end.rss / MB, 1)
    step.rss_peak_mb = round(max(s.rss for s in inside) / MB, 1) if inside else step.rss_mb
    if end.t > start.t:
        step.cpu_percent = round((end.cpu_s - start.cpu_s) / (end.t - start.t) * 100, 1)


@dataclass
class IdleFleet:
    """The listening devices of a run, kept open after the idle steps when the e2e or ramp
    measurement should run while they listen (`--idle-talk`)."""

    devices: list[RawListener] = field(default_factory=list)
    pacer: ListenerPacer | None = None

    async def close(self) -> None:
        if self.pacer is not None:
            await self.pacer.stop()
        await asyncio.gather(*(d.close() for d in self.devices), return_exceptions=True)


async def run_idle(target: Target, opts: IdleOptions, console: Console, result: IdleResult | None = None,
                   fleet: IdleFleet | None = None) -> IdleResult:
    """Fills `result` step by step, so an interrupted run keeps the finished steps. With a
    `fleet`, the devices stay connected and streaming when this returns (the caller closes)."""
    result = result or IdleResult(opts, target)
    sampler = ResourceSampler(target.pid, interval_s=0.25)
    await sampler.start()
    if sampler.error:
        result.notes.append(f"idle: {sampler.error}; nothing to measure")
        return result
    keep = fleet is not None
    fleet = fleet or IdleFleet()
    devices = fleet.devices
    if opts.audio != "none":
        packets = await asyncio.to_thread(clip_packets, opts.audio)
        fleet.pacer = ListenerPacer.for_packets(packets)
        sizes = sorted(len(p) for p in packets)
        result.notes.append(f"uplink clip: {len(packets)} packets of {FRAME_MS} ms, {sizes[len(sizes) // 2]} bytes "
                            f"median (max {sizes[-1]}); {sum(1 for n in sizes if n <= 2)} DTX packets (<= 2 bytes)")
    client_cpu0, t0 = time.process_time(), time.monotonic()
    retries = [0]
    try:
        for count in idle_counts(opts.devices):
            step = IdleStep(count)
            started = time.monotonic()
            while len(devices) + len(result.connect_errors) < count:
                # A few at a time: a fleet of boards powering up is not one at a time either,
                # and a thousand serial handshakes would take minutes on a busy machine.
                first_index = len(devices) + len(result.connect_errors)
                batch = range(first_index, min(count, first_index + CONNECT_BATCH))
                outcomes = await asyncio.gather(*(_connect(i, target, retries) for i in batch),
                                                return_exceptions=True)
                for index, outcome in zip(batch, outcomes, strict=True):
                    if isinstance(outcome, BaseException):
                        if isinstance(outcome, asyncio.CancelledError):
                            raise outcome
                        result.connect_errors.append(f"device {index}: {_reason(outcome)}")
                        continue
                    devices.append(outcome)
                    if fleet.pacer is not None:
                        fleet.pacer.add(outcome)
            step.connect_s = round(time.monotonic() - started, 2) if count else None
            result.steps.append(step)
            console.log(f"idle: {len(devices)} device(s) connected and listening; settling {opts.settle_s:g} s")
            if count > 1:
                # The last connections' setup (hello, MCP tools/list, memory) finishes in the
                # first seconds: not what a listening device costs, so not in the window.
                await asyncio.sleep(SETUP_SETTLE_S)
            counters0 = await _counters(target, result.notes)
            first = await sampler.sample_now()
            sent0 = fleet.pacer.sent if fleet.pacer is not None else 0
            await asyncio.sleep(opts.settle_s)
            last = await sampler.sample_now()
            sent1 = fleet.pacer.sent if fleet.pacer is not None else 0
            counters1 = await _counters(target, result.notes)
            step.server_counters = {k: v - counters0.get(k, 0) for k, v in counters1.items()
                                    if v - counters0.get(k, 0)}
            if fleet.pacer is not None and first is not None and last is not None:
                step.frames_sent = sent1 - sent0
                step.frames_expected = int(len(devices) * (last.t - first.t) * 1000 / FRAME_MS)
            if first is None or last is None:
                result.notes.append(f"idle: {sampler.error or 'the server process could not be read'}")
                return result
            _window(sampler.samples, first, last, step)
            _per_frame(step, last.cpu_s - first.cpu_s)
            step.connected = sum(1 for d in devices if not d.closed)
            console.log(f"idle: {count} device(s): RSS {step.rss_mb} MB (peak {step.rss_peak_mb}), "
                        f"CPU {step.cpu_percent}%")
    except asyncio.CancelledError:
        result.interrupted = True
        raise
    finally:
        for index, dev in enumerate(devices):
            if dev.closed:
                result.closed_by_server.append(f"device {index}: closed (code {dev.close_code})")
        if fleet.pacer is not None and fleet.pacer.late_ms_max > FRAME_MS:
            result.notes.append(f"the tester fell behind its frame schedule by up to {fleet.pacer.late_ms_max:.0f} ms "
                                "(the machine is saturated; the server saw fewer frames than real devices send)")
        if retries[0]:
            result.notes.append(f"{retries[0]} connection attempt(s) failed and were retried (as a firmware retries)")
        if not keep:
            await fleet.close()
        await sampler.stop()
        wall = time.monotonic() - t0
        if wall > 0:
            result.client_cpu_percent = round((time.process_time() - client_cpu0) / wall * 100, 1)
    if opts.audio == "silence":
        result.notes.append("each device streamed 60 ms Opus frames of digital silence in real time "
                            "(a listening firmware's microphone)")
    elif opts.audio == "room":
        result.notes.append(f"each device streamed 60 ms Opus frames of room noise ({ROOM_DBFS:g} dBFS RMS) in "
                            "real time")
    else:
        result.notes.append("the devices sent nothing after listen start")
    return result
