"""`performance_tester.py --xiaomi N`: the Xiaomi bridge against the fake Xiaomi cloud.

What it measures, each on a freshly started server (the real `python -m server`, with the LLM
and TTS pointed at the fake OpenAI server and the cloud endpoints at harness/fakes/xiaomi_cloud.py,
both in this process):

- the server with the bridge off (baseline), with 1 speaker and with N speakers polling:
  RSS at the end and mean CPU over a `settle` window in which nobody talks (the cost of polling),
  and the polls per second the fake cloud saw;
- latency, with 1 and with N speakers asked at the same moment: from the moment a query becomes
  visible in the conversation API to the first speak command our server sends to that speaker
  (`visible -> speak`), split into `visible -> polled` (waiting for the next poll) and
  `polled -> speak` (muting, LLM to the first sentence, the MiNA call). The issue's goal is
  visible -> speak <= poll interval + LLM first clause + 100 ms; the fake LLM answers its first
  sentence in one chunk after --fake-ttft-ms, so the first clause time is the TTFT.

Queries are spread over the poll phase (random wait between rounds), so `visible -> polled` is
sampled uniformly over the interval rather than always landing just after (or before) a poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.console import Console
from bench.resources import MB, ResourceSampler
from bench.stats import summarize


@dataclass
class XiaomiOptions:
    speakers: int = 20
    rounds: int = 5  # queries per speaker count (each round asks every speaker of the step once)
    settle_s: float = 10.0
    poll_interval_s: float = 1.0
    ttft_ms: float = 300.0
    tokens_per_s: float = 50.0
    server_log: bool = False


@dataclass
class XiaomiStep:
    speakers: int
    rss_mb: float | None = None
    cpu_percent: float | None = None
    polls_per_s: float | None = None
    window_s: float | None = None
    rss_after_turns_mb: float | None = None  # after the latency rounds (each speaker has had turns)
    visible_to_speak_ms: dict[str, Any] = field(default_factory=dict)
    visible_to_poll_ms: dict[str, Any] = field(default_factory=dict)
    poll_to_speak_ms: dict[str, Any] = field(default_factory=dict)
    within_goal: str = ""
    missed: int = 0  # queries with no speak command within the timeout
    errors: list[str] = field(default_factory=list)


@dataclass
class XiaomiResult:
    options: XiaomiOptions
    steps: list[XiaomiStep] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def increments(self) -> dict[str, Any]:
        by_n = {s.speakers: s for s in self.steps if s.rss_mb is not None}
        out: dict[str, Any] = {}
        base, one = by_n.get(0), by_n.get(1)
        top = max(by_n) if by_n else None
        if base and one:
            out["rss_first_speaker_mb"] = _delta(one.rss_mb, base.rss_mb, 1)
            out["cpu_percent_first_speaker"] = _delta(one.cpu_percent, base.cpu_percent, 1, 2)
        if one and top and top > 1:
            n = by_n[top]
            out["rss_per_speaker_mb"] = _delta(n.rss_mb, one.rss_mb, top - 1, 2)
            out["cpu_percent_per_speaker"] = _delta(n.cpu_percent, one.cpu_percent, top - 1, 3)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"options": asdict(self.options), "steps": [asdict(s) for s in self.steps],
                "increments": self.increments(), "notes": self.notes}


def _delta(a: float | None, b: float | None, n: int, digits: int = 1) -> float | None:
    return None if a is None or b is None or n < 1 else round((a - b) / n, digits)


USER = "9876543210"
FIRST_SENTENCE = "好的，这是第一句。"
REST = ["这是第二句。", "这是最后一句。"]


def server_overrides(cloud: Any, llm: Any, speakers: list[Any], opts: XiaomiOptions) -> dict[str, Any]:
    openai = {"base_url": llm.base_url, "api_key": "k", "timeout_s": 10, "retries": 0}
    return {
        "assistant": {"language": "zh"},
        "llm": {"type": "openai", "model": "fake-model", **openai},
        "tts": {"type": "openai", "model": "tts-1", "voice": "alloy", "response_format": "pcm", **openai},
        "asr": {"type": "openai", "model": "whisper-1", **openai},
        "xiaomi": {
            "enabled": bool(speakers), "poll_interval_s": opts.poll_interval_s,
            # No faster polling after a turn: every query is measured at the same interval.
            "fast_poll_interval_s": opts.poll_interval_s,
            "endpoints": cloud.endpoints(),
            "accounts": [{"user_id": USER, "password": "bench", "speakers": [
                {"match": s.name, "mode": "always", "model": {"speech_rate": 20}} for s in speakers]}]
            if speakers else [],
        },
    }


async def run_xiaomi(opts: XiaomiOptions, console: Console) -> XiaomiResult:
    from harness.fakes.openai_server import ChatReply, FakeOpenAIServer
    from harness.fakes.xiaomi_cloud import FakeSpeaker, FakeXiaomiCloud

    result = XiaomiResult(opts)
    chunk_s = 1 / opts.tokens_per_s

    def reply(body: dict[str, Any]) -> ChatReply:
        return ChatReply(chunks=[FIRST_SENTENCE, *REST], ttft_s=opts.ttft_ms / 1000, chunk_delay_s=chunk_s)

    for count in sorted({0, 1, max(1, opts.speakers)}):
        step = XiaomiStep(count)
        result.steps.append(step)
        cloud = FakeXiaomiCloud(speech_scale=0.05, record_lag_s=0.0, native_answer_s=2.0)
        speakers = [FakeSpeaker(f"音箱{i + 1:02d}", "LX06") for i in range(count)]
        cloud.add_account(USER, "bench", *speakers)
        async with cloud, FakeOpenAIServer(default_reply=reply) as llm:
            try:
                await _measure_step(step, cloud, llm, speakers, opts, console)
            except RuntimeError as exc:
                step.errors.append(f"server: {' '.join(str(exc).split())[:300]}")
                console.log(f"server failed: {str(exc).splitlines()[0]}")
    result.notes.append("CPU 100 % = one core, mean over the idle window; RSS of the server process at the end "
                        "of the idle window, and again after the latency rounds")
    return result


async def _measure_step(step: XiaomiStep, cloud: Any, llm: Any, speakers: list[Any], opts: XiaomiOptions,
                        console: Console) -> None:
    from harness.devsim.server_process import start_server

    console.log(f"xiaomi: starting the server with {step.speakers} speaker(s)...")
    async with start_server(server_overrides(cloud, llm, speakers, opts), echo=opts.server_log) as srv:
        if speakers:
            deadline = time.monotonic() + 60
            while not all(cloud.polls.get(sp.device_id, 0) >= 2 for sp in speakers):
                if time.monotonic() > deadline:
                    step.errors.append("the speakers were not all polled within 60 s")
                    return
                await asyncio.sleep(0.1)
        sampler = ResourceSampler(srv.pid, interval_s=0.5)
        await sampler.start()
        start = await sampler.sample_now()
        polls0, t0 = cloud.count("conversation"), time.monotonic()
        await asyncio.sleep(opts.settle_s)
        end = await sampler.sample_now()
        polls1, t1 = cloud.count("conversation"), time.monotonic()
        await sampler.stop()
        if start is not None and end is not None and end.t > start.t:
            step.rss_mb = round(end.rss / MB, 1)
            step.cpu_percent = round((end.cpu_s - start.cpu_s) / (end.t - start.t) * 100, 2)
            step.window_s = round(end.t - start.t, 1)
        step.polls_per_s = round((polls1 - polls0) / (t1 - t0), 2)
        console.log(f"xiaomi: {step.speakers} speaker(s) idle: RSS {step.rss_mb} MB, CPU {step.cpu_percent} %, "
                    f"{step.polls_per_s} polls/s")
        if speakers:
            await _latency(step, cloud, speakers, opts, console)
            with contextlib.suppress(Exception):
                import psutil

                step.rss_after_turns_mb = round(psutil.Process(srv.pid).memory_info().rss / MB, 1)


async def _latency(step: XiaomiStep, cloud: Any, speakers: list[Any], opts: XiaomiOptions, console: Console) -> None:
    to_speak: list[float] = []
    to_poll: list[float] = []
    poll_to_speak: list[float] = []
    rng = random.Random(9)
    for n in range(opts.rounds):
        await asyncio.sleep(rng.uniform(0, opts.poll_interval_s))  # a random poll phase
        asked = [(sp, cloud.say(sp, f"请回答第{n + 1}个问题", lag_s=0.0)["requestId"]) for sp in speakers]
        deadline = time.monotonic() + 15
        pending = list(asked)
        while pending and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            still = []
            for sp, rid in pending:
                speak = next((c for c in sp.commands if c.name == "text_to_speech"
                              and c.args.get("text") == FIRST_SENTENCE), None)
                if speak is None:
                    still.append((sp, rid))
                    continue
                visible = cloud.visible_at(sp, rid)
                polled = cloud.first_served.get(rid)
                to_speak.append((speak.at - visible) * 1000)
                if polled is not None:
                    to_poll.append((polled - visible) * 1000)
                    poll_to_speak.append((speak.at - polled) * 1000)
            pending = still
        step.missed += len(pending)
        # Let the replies play out (and the speakers go quiet) before the next round.
        for _ in range(200):
            if not any(sp.playing() for sp in speakers):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        for sp in speakers:
            sp.commands.clear()
    step.visible_to_speak_ms = summarize(to_speak, 0)
    step.visible_to_poll_ms = summarize(to_poll, 0)
    step.poll_to_speak_ms = summarize(poll_to_speak, 0)
    goal_ms = opts.poll_interval_s * 1000 + opts.ttft_ms + 100
    within = sum(1 for v in to_speak if v <= goal_ms)
    step.within_goal = f"{within}/{len(to_speak)} <= {goal_ms:.0f} ms"
    console.log(f"xiaomi: {step.speakers} speaker(s): visible -> speak p50 {step.visible_to_speak_ms['p50']} ms, "
                f"p95 {step.visible_to_speak_ms['p95']} ms ({step.within_goal})")


def render(result: XiaomiResult) -> str:
    o = result.options
    lines = [f"Xiaomi bridge against the fake cloud (poll interval {o.poll_interval_s:g} s, fake LLM TTFT "
             f"{o.ttft_ms:g} ms, {o.rounds} rounds)",
             f"{'speakers':>8} {'RSS MB':>8} {'after':>7} {'CPU %':>7} {'polls/s':>8} "
             f"{'vis->speak p50/p95/max ms':>27} "
             f"{'vis->poll p50':>14} {'poll->speak p50':>16}  goal"]
    for s in result.steps:
        v, p, q = s.visible_to_speak_ms, s.visible_to_poll_ms, s.poll_to_speak_ms
        lat = f"{v.get('p50')}/{v.get('p95')}/{v.get('max')}" if v else "-"
        lines.append(f"{s.speakers:>8} {s.rss_mb!s:>8} {s.rss_after_turns_mb!s:>7} {s.cpu_percent!s:>7} "
                     f"{s.polls_per_s!s:>8} {lat:>27} "
                     f"{p.get('p50', '-')!s:>14} {q.get('p50', '-')!s:>16}  {s.within_goal or '-'}"
                     + (f"  missed {s.missed}" if s.missed else "") + (f"  errors: {s.errors}" if s.errors else ""))
    inc = result.increments()
    if inc:
        lines.append("per speaker: " + ", ".join(f"{k} {v}" for k, v in inc.items()))
    return "\n".join(lines)


async def measure(opts: XiaomiOptions, console: Console) -> XiaomiResult:
    try:
        return await run_xiaomi(opts, console)
    except asyncio.CancelledError:
        return XiaomiResult(opts, notes=["interrupted"])


def save(result: XiaomiResult, out: Path | None) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out or Path(__file__).resolve().parents[1] / "data" / "bench" / f"xiaomi-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_json(), indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def xiaomi_main(opts: XiaomiOptions, out: Path | None, console: Console) -> int:
    result = asyncio.run(measure(opts, console))
    console.print(render(result))
    console.print(f"\nJSON report: {save(result, out)}")
    failed = any(s.errors or s.missed for s in result.steps) or not result.steps
    return 1 if failed else 0
