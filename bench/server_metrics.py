"""The server's own view of each turn, from GET /metrics (loopback only).

The server keeps its last 200 turns in a ring, so a long run polls every few seconds and merges
by (session, turn) instead of reading once at the end. Only turns of our simulated devices are
kept: a shared server may be serving someone else too. Its counters are server-wide, so they are
reported as their change over the run (a baseline is read when polling starts).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.stats import summarize

STAGES = ("endpoint_wait", "asr", "llm_first_clause", "tts_first_chunk", "to_first_frame",
          "speech_end_to_first_frame", "total_to_stop")
# The stages that add up to speech_end_to_first_frame, in order (for the stacked chart).
SERIAL_STAGES = ("endpoint_wait", "asr", "llm_first_clause", "tts_first_chunk", "to_first_frame")


class HttpStatusError(RuntimeError):
    """The server answered, with a status other than 200 (it is up, the endpoint is not)."""

    def __init__(self, status: int, url: str) -> None:
        super().__init__(f"HTTP {status} from {url}")
        self.status = status


async def get_json(url: str, timeout_s: float = 5.0) -> Any:
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session, session.get(url) as resp:
        if resp.status != 200:
            raise HttpStatusError(resp.status, url)
        return await resp.json(content_type=None)


@dataclass
class MetricsPoller:
    http_url: str | None
    device_ids: set[str]
    interval_s: float = 3.0
    turns: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)  # change since start()
    error: str | None = None
    _baseline: dict[str, int] | None = None
    _task: asyncio.Task[None] | None = None

    async def poll(self) -> None:
        if not self.http_url:
            return
        try:
            data = await get_json(self.http_url.rstrip("/") + "/metrics")
        except HttpStatusError as exc:
            # A server without /metrics (the reference server): stop asking.
            self.error = f"no server stage breakdown: {self.http_url} has no /metrics ({exc})"
            self.http_url = None
            return
        except Exception as exc:  # noqa: BLE001 - metrics are a bonus; the run goes on without them
            self.error = f"/metrics: {exc!r}"
            return
        now = {str(k): int(v) for k, v in (data.get("counters") or {}).items()}
        if self._baseline is None:
            self._baseline = now
        self.counters = {k: v - self._baseline.get(k, 0) for k, v in now.items()}
        for turn in data.get("turns") or []:
            if turn.get("device_id") in self.device_ids:
                self.turns[(str(turn.get("session_id")), int(turn.get("turn_id", 0)))] = turn

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.poll()

    async def start(self) -> None:
        if self.http_url:
            await self.poll()  # the counters' baseline
            self._task = asyncio.create_task(self._run(), name="bench-metrics")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.poll()


def stage_summary(turns: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """p50/p95/max per server stage over completed voice turns (aborted and text turns have a
    different shape: no endpoint, no ASR)."""
    voice = [t for t in turns if t.get("kind") == "voice" and not t.get("interrupted") and not t.get("error")]
    return {stage: summarize((t.get("stages_ms") or {}).get(stage) for t in voice) for stage in STAGES}


# What the server adds between the LLM's first token and the first audio frame: each span is
# (JSON key, table label, from milestone, to milestone) over the raw TurnMetrics timestamps.
SPANS = (
    ("llm_first_token_to_first_clause", "llm_first_token -> first_clause", "llm_first_token", "first_clause"),
    ("first_clause_to_tts_first_chunk", "first_clause -> tts_first_chunk", "first_clause", "tts_first_chunk"),
    ("tts_first_chunk_to_first_frame_sent", "tts_first_chunk -> first_frame_sent", "tts_first_chunk",
     "first_frame_sent"),
    ("llm_first_token_to_first_frame_sent", "llm_first_token -> first_frame_sent", "llm_first_token",
     "first_frame_sent"),
)
SPAN_LABELS = {key: label for key, label, _, _ in SPANS}


def answered_turns(turns: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Turns the LLM answered in full: voice and typed ones alike (the spans start at the LLM's
    first token, so how the question arrived does not matter), but not interrupted or failed ones."""
    return [t for t in turns if t.get("kind") in ("voice", "text") and not t.get("interrupted")
            and not t.get("error")]


def _span_ms(turn: dict[str, Any], start: str, end: str) -> float | None:
    a, b = turn.get(start), turn.get(end)
    if not isinstance(a, int | float) or not isinstance(b, int | float):
        return None
    return round((b - a) * 1000, 2)


def turn_spans(turn: dict[str, Any]) -> dict[str, float | None]:
    return {key: _span_ms(turn, start, end) for key, _, start, end in SPANS}


def span_summary(turns: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """p50/p95/max of the server's spans from the LLM's first token to the first frame, and of
    the tool and memory costs per turn. Tool figures cover only turns that called a tool (a
    median over mostly-zero turns says nothing); memory_ms covers every answered turn, since
    the lookup runs before each LLM call."""
    done = answered_turns(turns)
    out: dict[str, Any] = {key: summarize((turn_spans(t)[key] for t in done), 2) for key, *_ in SPANS}
    with_tools = [t for t in done if (t.get("tool_calls") or 0) > 0]
    out["tool_turns"] = len(with_tools)
    out["tool_calls"] = summarize((t.get("tool_calls") for t in with_tools), 2)
    out["tool_ms"] = summarize((t.get("tool_ms") for t in with_tools), 2)
    out["memory_ms"] = summarize((t.get("memory_ms") for t in done if t.get("llm_first_token") is not None
                                  or t.get("first_clause") is not None), 2)
    return out
