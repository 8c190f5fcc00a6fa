"""The state backends on the real engines: embedded SQLite, PostgreSQL and Redis on 127.0.0.1.

The same contract runs on every backend (memory, summaries with compare-and-set, leases with
fencing, the fleet bus); PostgreSQL adds what only a shared store has: two "processes" (two
independent pools) writing the same user's summary at once, migrations raced by two openers."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from harness.fakes.openai_server import ChatReply, FakeOpenAIServer
from server.memory.manager import MemoryConfig, MemoryManager
from server.memory.store import SqliteMemoryStore
from server.providers.base import ProviderContext
from server.providers.registry import build_provider, settings_model
from server.state import StateBackend, open_state
from server.state.config import StateConfig
from server.state.embedded import LocalLeases


@pytest.fixture(params=["embedded", "postgresql"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StateBackend]:
    if request.param == "embedded":
        state = await open_state(StateConfig(), tmp_path)
    else:
        pg = request.getfixturevalue("pg_cluster")
        state = await open_state(StateConfig(url=await pg.new_database()), None)
    yield state
    await state.close()


async def test_memory_contract(backend: StateBackend) -> None:
    store = backend.memory
    await store.add_exchange("alice", "s1", "hi", "hello alice")
    await store.add_exchange("bob", "s2", "hi", "hello bob")
    await store.add_exchange("alice", "s1", "bye", "see you", interrupted=True)
    alice = await store.recent_exchanges("alice", 10)
    assert [(e.user, e.assistant, e.interrupted) for e in alice] == [("hi", "hello alice", False),
                                                                      ("bye", "see you", True)]
    assert alice[0].id < alice[1].id
    assert [e.user for e in await store.recent_exchanges("alice", 1)] == ["bye"]
    assert [e.user for e in await store.session_exchanges("alice", "s1")] == ["hi", "bye"]
    assert [e.user for e in await store.exchanges_after("alice", alice[0].id, 10)] == ["bye"]
    # Summaries: compare-and-set on the version, watermark advanced with the write.
    state = await store.summary_state("alice")
    assert (state.summary, state.version, state.through_id) == ("", 0, 0)
    assert await store.put_summary("alice", "says hi", 0, alice[0].id)
    assert not await store.put_summary("alice", "stale writer", 0, alice[1].id)
    state = await store.summary_state("alice")
    assert (state.summary, state.version, state.through_id) == ("says hi", 1, alice[0].id)
    assert await store.put_summary("alice", "says hi and bye", 1, alice[1].id)
    assert not await store.put_summary("alice", "stale again", 1, alice[1].id)
    assert await store.get_summary("alice") == "says hi and bye"
    await store.set_summary("alice", "set directly")  # the unconditional write still bumps the version
    assert (await store.summary_state("alice")).version == 3
    await store.set_value("alice", "persona", "a pirate")
    assert await store.get_value("alice", "persona") == "a pirate"
    await store.set_value("alice", "persona", None)
    assert await store.get_value("alice", "persona") is None
    await store.forget("alice")
    assert await store.recent_exchanges("alice", 10) == [] and await store.get_summary("alice") == ""
    assert [e.user for e in await store.recent_exchanges("bob", 10)] == ["hi"]


async def test_concurrent_writers_lose_nothing(backend: StateBackend) -> None:
    async def talk(user: str) -> None:
        for i in range(30):
            await backend.memory.add_exchange(user, f"{user}-s", f"q{i}", f"a{i}")
    await asyncio.gather(*(talk(f"user{n}") for n in range(5)))
    for n in range(5):
        got = await backend.memory.recent_exchanges(f"user{n}", 100)
        assert [e.user for e in got] == [f"q{i}" for i in range(30)]


async def test_old_embedded_data_dir_is_migrated_in_place(tmp_path: Path) -> None:
    """A data/memory.sqlite3 written before schema versions existed (no version columns)."""
    path = tmp_path / "memory.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE exchanges (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, session_id TEXT NOT NULL,
            ts REAL NOT NULL, user_text TEXT NOT NULL, assistant_text TEXT NOT NULL,
            interrupted INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE summaries (user_id TEXT PRIMARY KEY, summary TEXT NOT NULL, updated REAL NOT NULL);
        CREATE TABLE kv (user_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (user_id, key));
        INSERT INTO exchanges (user_id, session_id, ts, user_text, assistant_text)
            VALUES ('u', 's', 1, 'old q', 'old a');
        INSERT INTO summaries VALUES ('u', 'an old summary', 1);
        INSERT INTO kv VALUES ('u', 'persona', 'a cat');
    """)
    db.commit()
    db.close()
    store = SqliteMemoryStore(path)
    await store.open()
    try:
        assert [e.user for e in await store.recent_exchanges("u", 5)] == ["old q"]
        state = await store.summary_state("u")
        assert (state.summary, state.version, state.through_id) == ("an old summary", 0, 0)
        assert await store.get_value("u", "persona") == "a cat"
        assert await store.put_summary("u", "new", 0, 1)
    finally:
        await store.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 2
    again = SqliteMemoryStore(path)  # reopening applies nothing twice
    try:
        assert (await again.summary_state("u")).summary == "new"
    finally:
        await again.close()


async def test_postgres_migrations_are_versioned_and_race_free(pg_cluster: Any) -> None:
    url = await pg_cluster.new_database()
    states = await asyncio.gather(*(open_state(StateConfig(url=url), None) for _ in range(3)))
    try:
        pool = states[0].extras["pg_pool"]
        rows = {r["component"]: r["version"] for r in await pool.fetch("SELECT component, version FROM xz_schema")}
        assert rows == {"memory": 1, "leases": 1}
    finally:
        for s in states:
            await s.close()


async def test_unreachable_postgres_is_one_clear_line() -> None:
    from harness.fleet.engines import free_port
    from server.providers.base import ProviderUnavailable

    with pytest.raises(ProviderUnavailable) as err:
        await open_state(StateConfig(url=f"postgresql://xz:secret@127.0.0.1:{free_port()}/db", connect_timeout_s=3),
                         None)
    text = str(err.value)
    assert text.startswith("state.url: cannot connect to PostgreSQL at postgresql://xz:***@127.0.0.1:")
    assert "secret" not in text and "\n" not in text


# ------------------------------------------------------------------ summaries across processes


@pytest.fixture
async def fake_llm() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer() as server:
        yield server


async def openai_llm(fake: FakeOpenAIServer, tmp_path: Path) -> Any:
    settings = settings_model("llm", "openai").model_validate(
        {"type": "openai", "base_url": fake.base_url, "api_key": "k", "model": "m", "timeout_s": 5,
         "first_token_timeout_s": 5, "retries": 0})
    provider = build_provider("llm", settings, ProviderContext(tmp_path, tmp_path, tmp_path))
    await provider.load()
    return provider


async def test_two_processes_summarize_one_user_at_once_one_write_lands(
        pg_cluster: Any, fake_llm: FakeOpenAIServer, tmp_path: Path) -> None:
    url = await pg_cluster.new_database()
    # Two independent pools and managers: what two server processes have.
    a, b = [await open_state(StateConfig(url=url), None) for _ in range(2)]
    llm = await openai_llm(fake_llm, tmp_path)
    try:
        for i in range(3):
            await a.memory.add_exchange("family", "session-a", f"question {i} from the kitchen", f"answer {i}")
            await b.memory.add_exchange("family", "session-b", f"question {i} from the bedroom", f"answer {i}")
        # Both summaries are slow, so both processes read version 0 before either writes.
        fake_llm.chat_script += [ChatReply(text="Summary written by A.", ttft_s=0.5),
                                 ChatReply(text="Summary written by B.", ttft_s=0.5)]
        cfg = MemoryConfig(mode="local_short")
        ma, mb = MemoryManager(cfg, a.memory, llm, "en"), MemoryManager(cfg, b.memory, llm, "en")
        ma.close_session("family", "session-a")
        mb.close_session("family", "session-b")
        await asyncio.gather(ma.drain(), mb.drain())
        state = await a.memory.summary_state("family")
        assert state.version == 1, "exactly one of the two concurrent summaries was written"
        assert state.summary in ("Summary written by A.", "Summary written by B.")
        newest = (await a.memory.recent_exchanges("family", 1))[0]
        assert state.through_id == newest.id  # it covers both sessions' exchanges
        prompts = [r.body["messages"][-1]["content"] for r in fake_llm.chat_requests()]
        assert len(prompts) == 2 and all("kitchen" in p and "bedroom" in p for p in prompts)
        # The loser re-read, found nothing left to add, and did not call the LLM a third time.
        # A later session on either process continues from the watermark.
        await b.memory.add_exchange("family", "session-c", "my cat is called Tom", "nice name")
        fake_llm.chat_script.append(ChatReply(text="Summary with Tom."))
        mb.close_session("family", "session-c")
        await mb.drain()
        state = await b.memory.summary_state("family")
        assert (state.summary, state.version) == ("Summary with Tom.", 2)
        last_prompt = fake_llm.chat_requests()[-1].body["messages"][-1]["content"]
        assert "Tom" in last_prompt and "kitchen" not in last_prompt.split("Today's conversation")[1]
    finally:
        await llm.close()
        await a.close()
        await b.close()


# ------------------------------------------------------------------ leases


@pytest.fixture(params=["embedded", "postgresql", "redis"])
async def leases(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "embedded":
        yield LocalLeases()
        return
    pg = request.getfixturevalue("pg_cluster")
    redis_url = request.getfixturevalue("redis_engine").url if request.param == "redis" else ""
    if redis_url:  # one Redis for the run: start from an empty keyspace
        import redis.asyncio as aioredis

        client = aioredis.from_url(redis_url)
        await client.flushdb()
        await client.aclose()
    state = await open_state(StateConfig(url=await pg.new_database(), redis_url=redis_url), None)
    yield state.leases
    await state.close()


async def test_lease_contract(leases: Any) -> None:
    a = await leases.acquire("speaker:1", "proc-a", 1.0)
    assert a is not None and a.generation >= 1 and a.valid()
    assert await leases.acquire("speaker:1", "proc-b", 1.0) is None, "held: nobody else gets it"
    renewed = await leases.acquire("speaker:1", "proc-a", 1.0)
    assert renewed is not None and renewed.generation == a.generation, "a renewal keeps the generation"
    assert await leases.holder("speaker:1") == ("proc-a", a.generation)
    assert await leases.fenced_set(renewed, "speaker:1:last", "record 1")
    assert await leases.fenced_get("speaker:1:last") == ("record 1", a.generation)
    # Another lease is independent.
    other = await leases.acquire("speaker:2", "proc-b", 1.0)
    assert other is not None
    # A lapses (not renewed): B takes over with a higher generation, and A's writes are refused.
    await asyncio.sleep(1.2)
    assert not renewed.valid()
    b = await leases.acquire("speaker:1", "proc-b", 5.0)
    assert b is not None and b.generation > a.generation
    assert not await leases.fenced_set(renewed, "speaker:1:last", "stale write from A")
    assert await leases.fenced_set(b, "speaker:1:last", "record 2")
    assert await leases.fenced_get("speaker:1:last") == ("record 2", b.generation)
    assert await leases.acquire("speaker:1", "proc-a", 1.0) is None
    # A clean release hands it over at once, still with a growing generation.
    await leases.release(b)
    c = await leases.acquire("speaker:1", "proc-a", 1.0)
    assert c is not None and c.generation > b.generation
    assert not await leases.fenced_set(b, "speaker:1:last", "released holder")


async def test_lease_local_deadline_counts_from_before_the_request() -> None:
    leases = LocalLeases()
    before = time.monotonic()
    lease = await leases.acquire("x", "me", 10.0)
    assert lease is not None
    assert before <= lease.requested_at <= time.monotonic()
    assert lease.deadline < lease.requested_at + 10.0, "the holder stops before the store's expiry"


# ------------------------------------------------------------------ fleet bus


@pytest.mark.parametrize("engine", ["postgresql", "redis"])
async def test_bus_reaches_every_process(engine: str, pg_cluster: Any, request: pytest.FixtureRequest) -> None:
    url = await pg_cluster.new_database()
    redis_url = request.getfixturevalue("redis_engine").url if engine == "redis" else ""
    a, b = [await open_state(StateConfig(url=url, redis_url=redis_url), None) for _ in range(2)]
    got_a: list[dict[str, Any]] = []
    got_b: list[dict[str, Any]] = []
    try:
        await a.bus.subscribe("presence", got_a.append)
        await b.bus.subscribe("presence", got_b.append)
        await asyncio.sleep(0.2)  # Redis subscriptions are confirmed asynchronously
        await a.bus.publish("presence", {"device": "aa:bb", "session": "s1", "text": "你好"})
        for _ in range(250):  # up to 5 s
            if got_a and got_b:
                break
            await asyncio.sleep(0.02)
        assert got_a == got_b == [{"device": "aa:bb", "session": "s1", "text": "你好"}]
    finally:
        await a.close()
        await b.close()
