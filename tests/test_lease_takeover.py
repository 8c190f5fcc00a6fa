"""Leases across real processes on PostgreSQL and on Redis: a holder killed with SIGKILL is
replaced within the lease time; a holder frozen with SIGSTOP is replaced after it, and when it
wakes up (SIGCONT) its write is refused by the store; several jobs between two processes are each
held by exactly one of them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from server.state import open_state
from server.state.config import StateConfig
from tests.conftest import redis_url_for

ROOT = Path(__file__).resolve().parents[1]
TTL = 2.0


@dataclass
class Holder:
    proc: asyncio.subprocess.Process
    events: list[dict[str, Any]] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    async def wait_for(self, pred: Any, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for ev in self.events[seen:]:
                if pred(ev):
                    return ev
            seen = len(self.events)
            await asyncio.sleep(0.02)
        raise AssertionError(f"no matching event in {timeout} s; got {self.events[-5:]}")


async def _read(holder: Holder) -> None:
    assert holder.proc.stdout is not None
    while line := await holder.proc.stdout.readline():
        with contextlib.suppress(ValueError):
            ev = json.loads(line)
            # The holder's own time of the event (CLOCK_MONOTONIC is one clock for every process).
            ev["t"] = ev.get("at", time.monotonic())
            holder.events.append(ev)


@dataclass
class Engine:
    url: str
    redis_url: str


@pytest.fixture(params=["postgresql", "redis"])
async def engine(request: pytest.FixtureRequest, pg_cluster: Any) -> Engine:
    redis_url = await redis_url_for(request)
    return Engine(await pg_cluster.new_database(), redis_url)


@pytest.fixture
async def spawn(engine: Engine) -> AsyncIterator[Any]:
    procs: list[Holder] = []

    async def start(owner: str, *names: str, raw: bool = False) -> Holder:
        args = [sys.executable, "-m", "harness.fleet.lease_holder", "--url", engine.url, "--owner", owner,
                "--ttl", str(TTL), "--interval", "0.1"]
        if engine.redis_url:
            args += ["--redis-url", engine.redis_url]
        if raw:
            args.append("--raw")
        proc = await asyncio.create_subprocess_exec(*args, *names, cwd=str(ROOT), stdout=asyncio.subprocess.PIPE,
                                                    env=dict(os.environ, PYTHONUNBUFFERED="1"))
        holder = Holder(proc)
        holder.reader = asyncio.create_task(_read(holder))
        procs.append(holder)
        return holder

    yield start
    for h in procs:
        if h.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                h.proc.send_signal(signal.SIGCONT)
                h.proc.kill()
            await h.proc.wait()
        if h.reader is not None:
            h.reader.cancel()


async def progress(engine: Engine, key: str) -> tuple[str, int] | None:
    state = await open_state(StateConfig(url=engine.url, redis_url=engine.redis_url), None)
    try:
        return await state.leases.fenced_get(key)
    finally:
        await state.close()


def acquired(owner: str, name: str = "speaker-1") -> Any:
    return lambda e: e["event"] == "acquired" and e["owner"] == owner and e["name"] == name


def wrote_ok(owner: str, name: str = "speaker-1") -> Any:
    return lambda e: e["event"] == "wrote" and e["owner"] == owner and e["name"] == name and e["ok"]


async def test_sigkilled_holder_is_replaced_within_the_lease_time(spawn: Any, engine: Engine) -> None:
    a = await spawn("proc-a", "speaker-1")
    first = await a.wait_for(acquired("proc-a"), 30)
    await a.wait_for(wrote_ok("proc-a"), 10)
    b = await spawn("proc-b", "speaker-1")
    await b.wait_for(lambda e: e["event"] == "started", 30)
    await asyncio.sleep(1.0)
    assert not any(e["event"] == "acquired" for e in b.events), "B never holds it while A is alive"
    a.proc.kill()
    killed = time.monotonic()
    taken = await b.wait_for(acquired("proc-b"), TTL * 3)
    # The lease lapses at most TTL after A's last renewal; B retries every TTL/3.
    assert taken["t"] - killed <= TTL + TTL / 3 + 0.5, f"takeover took {taken['t'] - killed:.2f} s"
    assert taken["generation"] > first["generation"]
    await b.wait_for(wrote_ok("proc-b"), 5)
    value, generation = await progress(engine, "speaker-1:progress") or ("", 0)
    assert value.startswith("proc-b:") and generation == taken["generation"]


async def test_frozen_holder_wakes_up_and_its_write_is_refused(spawn: Any, engine: Engine) -> None:
    # A checks nothing before writing (it passed its deadline check just before freezing).
    a = await spawn("proc-a", "speaker-1", raw=True)
    first = await a.wait_for(acquired("proc-a"), 30)
    await a.wait_for(wrote_ok("proc-a"), 10)
    b = await spawn("proc-b", "speaker-1")
    await b.wait_for(lambda e: e["event"] == "started", 30)
    a.proc.send_signal(signal.SIGSTOP)
    frozen = time.monotonic()
    taken = await b.wait_for(acquired("proc-b"), TTL * 3)
    assert taken["t"] - frozen >= TTL * 0.5, "B waited for A's lease to run out"
    assert taken["generation"] > first["generation"]
    await b.wait_for(wrote_ok("proc-b"), 5)
    a.proc.send_signal(signal.SIGCONT)
    refused = await a.wait_for(lambda e: e["event"] == "wrote" and not e["ok"], 10)
    assert refused["generation"] == first["generation"]
    assert await asyncio.wait_for(a.proc.wait(), 10) == 0
    # B kept the lease and its progress is what the store holds.
    await b.wait_for(lambda e: wrote_ok("proc-b")(e) and e["t"] > refused["t"], 5)
    value, generation = await progress(engine, "speaker-1:progress") or ("", 0)
    assert value.startswith("proc-b:") and generation == taken["generation"]
    assert not any(e["event"] == "wrote" and e["owner"] == "proc-a" and e["ok"] and e["t"] > taken["t"]
                   for e in a.events), "no write of A succeeded after B took over"


async def test_three_jobs_two_processes_each_held_exactly_once(spawn: Any) -> None:
    names = ["speaker-1", "speaker-2", "speaker-3"]
    a = await spawn("proc-a", *names)
    b = await spawn("proc-b", *names)
    deadline = time.monotonic() + 30
    while not all(any(e["event"] == "wrote" and e["name"] == n and e["ok"] for h in (a, b) for e in h.events)
                  for n in names):
        assert time.monotonic() < deadline, "not every job started"
        await asyncio.sleep(0.05)
    await asyncio.sleep(TTL * 1.5)  # long enough for any double holding to show up
    for n in names:
        holders = {e["owner"] for h in (a, b) for e in h.events if e["event"] == "acquired" and e["name"] == n}
        assert len(holders) == 1, f"{n} was held by {holders}"
        gens = {e["generation"] for h in (a, b) for e in h.events if e["event"] == "wrote" and e["name"] == n}
        assert len(gens) == 1, f"{n} written under generations {gens}"
    # Kill whoever holds speaker-1: the other process takes it and keeps its own.
    holder = next(h for h in (a, b) if any(e["event"] == "acquired" and e["name"] == "speaker-1" for e in h.events))
    other = b if holder is a else a
    other_owner = "proc-b" if holder is a else "proc-a"
    holder.proc.kill()
    for n in names:
        await other.wait_for(lambda e, n=n: e["event"] == "wrote" and e["name"] == n and e["ok"]
                             and e["owner"] == other_owner, TTL * 3)


async def test_holder_stops_at_its_own_deadline_when_the_store_hangs(redis_engine: Any, pg_cluster: Any) -> None:
    """Redis frozen (SIGSTOP): renewals hang. The job must stop by the lease's local deadline,
    not whenever the store answers again."""
    from server.fleet.leased import LeasedJob

    state = await open_state(StateConfig(url=await pg_cluster.new_database(), redis_url=redis_engine.url), None)
    running = asyncio.Event()
    stopped: list[float] = []

    async def job(handle: Any) -> None:
        running.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.append(time.monotonic())

    leased = LeasedJob(state.leases, f"hang-{os.getpid()}-{time.monotonic_ns()}", "me", TTL, job)
    leased.start()
    try:
        await asyncio.wait_for(running.wait(), 10)
        deadline = leased.handle.lease.deadline if leased.handle else 0.0
        os.kill(redis_engine.proc.pid, signal.SIGSTOP)
        try:
            for _ in range(int(TTL * 20)):
                if stopped:
                    break
                await asyncio.sleep(0.1)
        finally:
            os.kill(redis_engine.proc.pid, signal.SIGCONT)
        assert stopped, "the job kept running while the store was unreachable"
        # The last renewal before the freeze may have moved the deadline by up to TTL/3.
        assert stopped[0] <= deadline + TTL / 3 + 0.3
        assert not leased.holding
    finally:
        await leased.stop()
        await state.close()


async def test_a_clean_release_hands_over_at_once(pg_cluster: Any) -> None:
    """SIGTERM path: the holder releases its leases, so another process need not wait a TTL."""
    from server.fleet.leased import LeasedJob

    url = await pg_cluster.new_database()
    a_state, b_state = [await open_state(StateConfig(url=url), None) for _ in range(2)]
    started: dict[str, float] = {}

    def job(owner: str) -> Any:
        async def run(handle: Any) -> None:
            started[owner] = time.monotonic()
            await asyncio.Event().wait()
        return run

    ttl = 30.0  # far longer than the test: only a release can explain a quick takeover
    a = LeasedJob(a_state.leases, "speaker-9", "proc-a", ttl, job("a"))
    b = LeasedJob(b_state.leases, "speaker-9", "proc-b", ttl, job("b"), retry_s=0.2)
    a.start()
    try:
        for _ in range(100):
            if "a" in started:
                break
            await asyncio.sleep(0.05)
        b.start()
        await asyncio.sleep(0.5)
        assert "b" not in started
        released = time.monotonic()
        await a.release()
        for _ in range(100):
            if "b" in started:
                break
            await asyncio.sleep(0.05)
        assert "b" in started and started["b"] - released < 1.0
        holder = await b_state.leases.holder("speaker-9")
        assert holder is not None and holder[0] == "proc-b"
    finally:
        await a.stop()
        await b.stop()
        await a_state.close()
        await b_state.close()


async def test_speaker_fence_asks_the_store_not_only_the_clock(engine: Engine) -> None:
    """The Xiaomi bridge's fence: a holder whose own clock still says "mine" (a slow clock, or
    a pause between the local check and the request) is refused by the store once another
    process took the speaker: no command, no claim of a query; the new holder's claims stand."""
    import dataclasses

    from server.fleet.leased import LeaseHandle
    from server.xiaomi.conversation import ConversationRecord
    from server.xiaomi.errors import NotOurSpeaker
    from server.xiaomi.fence import Cursor, LeaseFence, RefusalCounter

    a_state, b_state = [await open_state(StateConfig(url=engine.url, redis_url=engine.redis_url), None)
                        for _ in range(2)]
    try:
        name, key = "xiaomi/1/kitchen", "xiaomi/1/kitchen/cursor"
        counter = RefusalCounter()
        first = await a_state.leases.acquire(name, "a", TTL)
        assert first is not None
        a = LeaseFence(LeaseHandle(a_state.leases, first), key, "a", counter)
        await a.check()
        await a.claim(ConversationRecord("q1", 1000, "现在几点"))
        await asyncio.sleep(TTL + 0.2)
        second = await b_state.leases.acquire(name, "b", TTL)
        assert second is not None and second.generation == first.generation + 1
        b = LeaseFence(LeaseHandle(b_state.leases, second), key, "b", counter)
        assert await b.cursor() == Cursor(1000, "q1"), "the new holder starts after the old holder's last query"
        # a's clock is made to say its lease is fresh: only the store can stop it now.
        a.holding.lease = dataclasses.replace(first, requested_at=time.monotonic())  # type: ignore[attr-defined]
        assert a.holding.valid()
        with pytest.raises(NotOurSpeaker):
            await a.check()
        with pytest.raises(NotOurSpeaker):
            await a.claim(ConversationRecord("q2", 2000, "开灯"))
        assert await a.check(write=False) is None  # a status read trusts the clock (no command is sent)
        await b.claim(ConversationRecord("q2", 2000, "开灯"))
        await b.check()
        assert counter.refused == 2
        assert await b.cursor() == Cursor(2000, "q2")
    finally:
        for s in (a_state, b_state):
            await s.close()
