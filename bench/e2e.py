"""End to end: N firmware-faithful simulated devices (harness.devsim) speak generated questions to
the real server as paced 60 ms Opus, in auto mode, and record what a user would experience.

All latencies are measured on the device side from the end of speech (the last speech frame the
device sent; the question audio is trimmed so that is where the voice really stops):
  stt_ms          -> the `stt` message (endpointing + recognition)
  first_frame_ms  -> the first reply audio frame the device would play (what a user hears)
  tts_stop_ms     -> `tts stop` (the reply has played; the device returns to listening)
and, in an abort trial per device, abort_to_stop_ms: `abort` sent -> `tts stop` received.
Frame pacing, per reply, from the arrival times of the frames the device accepted: the jitter
of each frame is its gap to the previous one minus the previous one's duration (0 = exactly
paced, negative = early, e.g. the pre-buffer burst; positive = late), and the stalls are the
times the device's playback queue ran dry before the reply ended (the firmware's speaker goes
silent mid-reply), replayed with harness.devsim's queue model.
The server's own stage breakdown comes from /metrics, and its CPU and RSS from psutil.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.console import Console, Progress
from bench.resources import ResourceSampler
from bench.server_metrics import (
    HttpStatusError,
    MetricsPoller,
    get_json,
    span_summary,
    stage_summary,
    turn_spans,
)
from bench.stats import percentile, summarize
from bench.testset import ABORT_PROMPT, E2E_QUESTIONS, error_counts, speech
from harness.devsim import DeviceIdentity, SimDevice
from harness.devsim.playback import PlaybackQueueModel
from server.conversation.metrics import MetricsLog
from server.loop_lag import watch_loop_lag

ABORT_AFTER_FIRST_FRAME_S = 0.3  # let the reply get going before interrupting it
LATE_FRAME_WAIT_S = 0.5  # anything of the aborted reply still in flight arrives by then


@dataclass(slots=True)
class Target:
    ws_url: str
    http_url: str | None = None
    pid: int | None = None
    spawned: bool = False


@dataclass(slots=True)
class E2EOptions:
    devices: int = 1
    prompts: int = 3
    stagger_ms: int = 200  # device i starts i * stagger_ms after the first
    abort_trial: bool = True
    # Typed questions per device (`listen detect` text, as py-xiaozhi sends), after the spoken
    # ones: the first reply frame without the silence window and ASR, for comparison.
    typed: int = 0
    turn_timeout_s: float = 60.0
    trailing_silence_ms: int = 1500  # room silence the mic keeps sending after the question
    # The devices decode the reply frames they play (reply audio length); the ramp only times
    # them (DeviceConfig.decode_replies).
    decode_replies: bool = True
    language: str = "en"


@dataclass
class TurnRecord:
    device: int
    index: int
    kind: str  # question | typed | abort
    text: str
    started_s: float  # since the run started
    ok: bool = False
    error: str | None = None
    interrupted: bool = False  # cut short by Ctrl-C: neither a success nor a server failure
    stt_text: str | None = None
    stt_edits: int | None = None
    stt_ref_len: int | None = None
    stt_ms: float | None = None
    first_frame_ms: float | None = None
    tts_stop_ms: float | None = None
    abort_to_stop_ms: float | None = None
    frames_after_stop: int | None = None
    reply_ended_before_abort: bool | None = None
    frames: int = 0
    reply_audio_ms: float | None = None
    sentences: list[str] = field(default_factory=list)
    # Downlink pacing as the device saw it (see the module docstring).
    jitter_ms: list[float] = field(default_factory=list)
    stalls: int | None = None
    stall_ms: float | None = None


@dataclass
class E2EResult:
    options: E2EOptions
    target: Target
    turns: list[TurnRecord] = field(default_factory=list)
    connect_errors: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    resources: dict[str, Any] = field(default_factory=dict)
    server_turns: list[dict[str, Any]] = field(default_factory=list)
    server_counters: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    wall_s: float | None = None
    interrupted: bool = False

    # ------------------------------------------------------------------ figures

    def questions(self) -> list[TurnRecord]:
        return [t for t in self.turns if t.kind == "question" and not t.interrupted]

    def first_frame_p95(self) -> float | None:
        """p95 of first-reply latency where a failed turn counts as never answered (infinite):
        a server that drops turns must not look fast. None without turns."""
        values = [t.first_frame_ms if t.ok and t.first_frame_ms is not None else math.inf
                  for t in self.questions()]
        return percentile(values, 95)

    def summary(self) -> dict[str, Any]:
        q = self.questions()
        aborts = [t for t in self.turns if t.kind == "abort" and not t.interrupted]
        ok = [t for t in q if t.ok]
        edits = sum(t.stt_edits or 0 for t in ok if t.stt_edits is not None)
        ref = sum(t.stt_ref_len or 0 for t in ok if t.stt_ref_len is not None)
        valid_aborts = [t for t in aborts if t.ok and not t.reply_ended_before_abort]
        p95 = self.first_frame_p95()
        p95_shown = None if p95 is None else round(p95, 1) if math.isfinite(p95) else "inf"
        jitter = [j for t in ok for j in t.jitter_ms]
        typed = [t for t in self.turns if t.kind == "typed" and t.ok and not t.interrupted]
        return {
            "devices": self.options.devices,
            "typed_first_frame_ms": summarize(t.first_frame_ms for t in typed),
            "frame_jitter_ms": summarize(jitter),
            "stalls": sum(t.stalls or 0 for t in ok),
            "stall_ms": round(sum(t.stall_ms or 0 for t in ok), 1),
            "turns_with_stall": sum(1 for t in ok if t.stalls),
            "turns": len(q),
            "turns_ok": len(ok),
            "turns_failed": len(q) - len(ok),
            "stt_ms": summarize(t.stt_ms for t in ok),
            "first_frame_ms": summarize(t.first_frame_ms for t in ok),
            "tts_stop_ms": summarize(t.tts_stop_ms for t in ok),
            "abort_to_stop_ms": summarize(t.abort_to_stop_ms for t in valid_aborts),
            "abort_trials": len(aborts),
            "abort_frames_after_stop": sum(t.frames_after_stop or 0 for t in valid_aborts),
            "first_frame_p95_counting_failures": p95_shown,
            "stt_wer": round(edits / ref, 4) if ref else None,
            "connect_errors": len(self.connect_errors),
            "turns_interrupted": sum(1 for t in self.turns if t.interrupted),
        }

    def per_device(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for dev in sorted({t.device for t in self.turns}):
            mine = [t for t in self.turns if t.device == dev and not t.interrupted]
            ok = [t for t in mine if t.kind == "question" and t.ok]
            out[str(dev)] = {
                "turns": sum(1 for t in mine if t.kind == "question"), "turns_ok": len(ok),
                "stt_ms": summarize(t.stt_ms for t in ok),
                "first_frame_ms": summarize(t.first_frame_ms for t in ok),
                "tts_stop_ms": summarize(t.tts_stop_ms for t in ok),
                "abort_to_stop_ms": summarize(t.abort_to_stop_ms for t in mine
                                              if t.kind == "abort" and t.ok and not t.reply_ended_before_abort),
            }
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "options": asdict(self.options),
            "target": asdict(self.target),
            "wall_s": self.wall_s,
            "interrupted": self.interrupted,
            "summary": self.summary(),
            "per_device": self.per_device(),
            "server_stages_ms": stage_summary(self.server_turns),
            "server_spans_ms": span_summary(self.server_turns),
            "resources": self.resources,
            "server_counters": self.server_counters,
            "connect_errors": self.connect_errors,
            "violations": self.violations,
            "notes": self.notes,
            "turns": [asdict(t) for t in self.turns],
            # Each raw /metrics turn, with its spans from the LLM's first token worked out.
            "server_turns": [{**t, "spans_ms": turn_spans(t)} for t in self.server_turns],
        }


# ---------------------------------------------------------------------------------- probing


async def probe(target: Target, timeout_s: float = 10.0) -> str | None:
    """None if the server answers like a server; else one line saying what is wrong."""
    if target.http_url:
        try:
            await get_json(target.http_url.rstrip("/") + "/health", timeout_s)
        except HttpStatusError as exc:
            # It answers, just not /health (the reference server has neither /health nor
            # /metrics): measure what the devices see, without the server's stage breakdown.
            print(f"note: {target.http_url} has no /health ({exc}); running without the server's stage breakdown",
                  file=sys.stderr)
        except Exception as exc:  # noqa: BLE001
            return f"cannot reach {target.http_url} (/health): {_reason(exc)}"
    dev = SimDevice(hello_timeout=timeout_s)
    try:
        await asyncio.wait_for(dev.connect(url=target.ws_url), timeout_s + 5)
    except Exception as exc:  # noqa: BLE001 - DeviceConnectError, HelloTimeout, OSError, ...
        reason = _reason(exc).replace(f"WebSocket connect to {target.ws_url} failed: ", "")
        return f"cannot connect to {target.ws_url}: {reason}"
    finally:
        with contextlib.suppress(Exception):
            await dev.close()
    return None



async def _recorded(record: TurnRecord, trial: Any) -> None:
    """Run one trial; a failure is written into its record instead of ending the device's run."""
    try:
        await trial
    except asyncio.CancelledError:
        record.error, record.interrupted = "interrupted", True
        raise
    except Exception as exc:  # noqa: BLE001
        record.error = _reason(exc)

def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


# ---------------------------------------------------------------------------------- the run


async def _question(dev: SimDevice, record: TurnRecord, pcm: bytes, opts: E2EOptions) -> None:
    result = await dev.ask_audio(pcm, mode="auto", trailing_silence_ms=opts.trailing_silence_ms,
                                 timeout=opts.turn_timeout_s)
    t_end = result.t_input_end

    def since_end(t: float | None) -> float | None:
        return round((t - t_end) * 1000, 1) if t is not None and t_end is not None else None

    record.stt_text = result.stt_text
    record.stt_ms = since_end(result.t_stt)
    record.first_frame_ms = since_end(result.t_first_audio)
    record.tts_stop_ms = since_end(result.t_tts_stop)
    record.frames = result.frames_played
    record.reply_audio_ms = round(result.reply_duration_ms, 1) if result.reply_pcm else None
    record.sentences = list(result.sentences)
    record.jitter_ms, record.stalls, record.stall_ms = pacing(result.events)
    if result.stt_text is not None:
        record.stt_edits, record.stt_ref_len = error_counts(record.text, result.stt_text, opts.language)
    record.error = result.error
    if record.error is None and result.t_first_audio is None:
        record.error = "no reply audio" if result.t_stt is not None else "nothing recognised (no stt)"
    record.ok = record.error is None and result.completed


def pacing(events: list[Any]) -> tuple[list[float], int, float]:
    """(jitter of each accepted reply frame after the first, stalls, stalled ms) of one reply."""
    frames = [(e.t, e.duration_ms) for e in events if e.kind == "binary" and e.accepted and e.duration_ms]
    jitter = [round((t - prev_t) * 1000 - prev_ms, 2)
              for (prev_t, prev_ms), (t, _) in zip(frames, frames[1:], strict=False)]
    queue = PlaybackQueueModel()
    for t, ms in frames:
        queue.push(t, ms / 1000)
    return jitter, queue.underruns, round(queue.underrun_s * 1000, 1)


async def _typed(dev: SimDevice, record: TurnRecord, opts: E2EOptions) -> None:
    result = await dev.ask_text(record.text, timeout=opts.turn_timeout_s)
    t_end = result.t_input_end
    if result.t_first_audio is not None and t_end is not None:
        record.first_frame_ms = round((result.t_first_audio - t_end) * 1000, 1)
    if result.t_tts_stop is not None and t_end is not None:
        record.tts_stop_ms = round((result.t_tts_stop - t_end) * 1000, 1)
    record.frames = result.frames_played
    record.error = result.error or (None if result.t_first_audio is not None else "no reply audio")
    record.ok = record.error is None and result.completed


async def _abort(dev: SimDevice, record: TurnRecord, opts: E2EOptions) -> None:
    """Ask for a long answer by text, interrupt it once audio flows, time abort -> tts stop."""
    await dev.wait_relisten()
    start = len(dev.events)
    if dev.state != "listening":
        await dev.listen_start("manual")
    await dev.listen_detect(record.text)
    try:
        first = await dev.wait_for(lambda e: e.kind == "binary", opts.turn_timeout_s, start)
    except TimeoutError:
        record.error = "no reply audio to abort"
        return
    await asyncio.sleep(ABORT_AFTER_FIRST_FRAME_S)
    ended = any(e.is_msg("tts", "stop") and e.t >= first.t for e in dev.events[start:])
    sent = await dev.abort()
    stop = await dev.wait_for(lambda e: e.is_msg("tts", "stop") and e.t >= sent, 10.0, start)
    record.abort_to_stop_ms = round((stop.t - sent) * 1000, 1)
    await asyncio.sleep(LATE_FRAME_WAIT_S)
    record.frames_after_stop = sum(1 for e in dev.events[start:] if e.kind == "binary" and e.t > stop.t)
    record.reply_ended_before_abort = ended
    record.ok = True


async def _device(index: int, identity: DeviceIdentity, target: Target, opts: E2EOptions,
                  questions: list[tuple[str, bytes]], result: E2EResult, t0: float, progress: Progress) -> None:
    await asyncio.sleep(index * opts.stagger_ms / 1000)
    dev = SimDevice(identity=identity, decode_replies=opts.decode_replies)
    steps = opts.prompts + opts.typed + (1 if opts.abort_trial else 0)
    try:
        try:
            if target.http_url:
                await dev.ota(target.http_url)
            await dev.connect(url=target.ws_url)
        except Exception as exc:  # noqa: BLE001 - one device failing to connect is a finding
            result.connect_errors.append(f"device {index}: {_reason(exc)}")
            progress.advance(steps, f"device {index} could not connect")
            return
        for k in range(opts.prompts):
            text, pcm = questions[(index + k) % len(questions)]
            record = TurnRecord(index, k, "question", text, round(time.monotonic() - t0, 2))
            result.turns.append(record)
            await _recorded(record, _question(dev, record, pcm, opts))
            progress.advance(detail=_describe(record))
            if dev.closed:
                record.error = record.error or "connection closed"
                progress.advance(steps - k - 1, f"device {index} disconnected")
                return
        for k in range(opts.typed):
            text = questions[(index + k) % len(questions)][0]
            record = TurnRecord(index, opts.prompts + k, "typed", text, round(time.monotonic() - t0, 2))
            result.turns.append(record)
            await _recorded(record, _typed(dev, record, opts))
            progress.advance(detail=_describe(record))
        if opts.abort_trial:
            record = TurnRecord(index, opts.prompts, "abort", ABORT_PROMPT.get(opts.language, ABORT_PROMPT["en"]),
                                round(time.monotonic() - t0, 2))
            result.turns.append(record)
            await _recorded(record, _abort(dev, record, opts))
            progress.advance(detail=_describe(record))
    finally:
        result.violations += [f"device {index}: {v}" for v in dev.violations]
        with contextlib.suppress(Exception):
            await dev.close()


def _describe(r: TurnRecord) -> str:
    who = f"device {r.device} turn {r.index + 1}"
    if r.kind == "abort":
        return f"{who} abort -> stop {r.abort_to_stop_ms} ms" if r.ok else f"{who} abort failed: {r.error}"
    if not r.ok:
        return f"{who} FAILED: {r.error}"
    if r.kind == "typed":
        return f"{who} typed: first frame {r.first_frame_ms:.0f} ms"
    return f"{who} stt {r.stt_ms:.0f} ms, first frame {r.first_frame_ms:.0f} ms, stop {r.tts_stop_ms:.0f} ms"


async def run_e2e(target: Target, opts: E2EOptions, console: Console, result: E2EResult | None = None,
                  label: str = "e2e") -> E2EResult:
    """Run the devices; fills `result` as turns finish, so an interrupted run keeps them."""
    result = result or E2EResult(opts, target)
    questions_text = E2E_QUESTIONS.get(opts.language, E2E_QUESTIONS["en"])
    questions = [(q, await speech(q, opts.language)) for q in questions_text]
    identities = [DeviceIdentity() for _ in range(opts.devices)]
    sampler = ResourceSampler(target.pid)
    poller = MetricsPoller(target.http_url, {i.mac for i in identities})
    if not target.http_url:
        result.notes.append("no --http-url: server stage breakdown (/metrics) not recorded")
    await sampler.start()
    await poller.start()
    progress = console.progress(opts.devices * (opts.prompts + opts.typed + (1 if opts.abort_trial else 0)), label)
    t0 = time.monotonic()
    # The simulated devices run on this machine too (Opus encode/decode, pacing): their CPU is
    # load the server would not see in the field, so it is recorded next to the server's.
    client_cpu0 = time.process_time()
    # The tester's own event loop: when it runs late, the devices timestamp frames late and the
    # fakes answer late, so its jitter and stall figures describe the tester, not the server.
    tester_lag = MetricsLog()
    lag_probe = asyncio.create_task(watch_loop_lag(tester_lag), name="tester-loop-lag")
    try:
        await asyncio.gather(*(_device(i, ident, target, opts, questions, result, t0, progress)
                               for i, ident in enumerate(identities)))
    except asyncio.CancelledError:
        result.interrupted = True
        raise
    finally:
        progress.close()
        lag_probe.cancel()
        await asyncio.gather(lag_probe, return_exceptions=True)
        result.wall_s = round(time.monotonic() - t0, 2)
        await sampler.stop()
        await poller.stop()
        result.resources = sampler.summary(opts.devices)
        wall = time.monotonic() - t0
        if wall > 0:
            result.resources["client_cpu_percent_mean"] = round((time.process_time() - client_cpu0) / wall * 100, 1)
        result.resources["tester_loop_lag"] = {**tester_lag.counters, **tester_lag.gauges}
        result.server_turns = sorted(poller.turns.values(), key=lambda t: t.get("started") or 0)
        result.server_counters = poller.counters
        if poller.error:
            result.notes.append(poller.error)
        if sampler.error:
            result.notes.append(sampler.error)
    return result
