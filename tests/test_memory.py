"""The SQLite memory store and the memory modes, on a real database file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from server.memory.manager import MemoryConfig, MemoryManager
from server.memory.store import SqliteMemoryStore
from server.pipeline.dialogue import Dialogue, estimate_tokens


@pytest.fixture
async def store(tmp_path: Path):
    s = SqliteMemoryStore(tmp_path / "memory.sqlite3")
    await s.open()
    yield s
    await s.close()


async def test_exchanges_are_kept_per_user(store: SqliteMemoryStore) -> None:
    await store.add_exchange("alice", "s1", "hi", "hello alice")
    await store.add_exchange("bob", "s2", "hi", "hello bob")
    await store.add_exchange("alice", "s1", "bye", "see you", interrupted=True)
    alice = await store.recent_exchanges("alice", 10)
    assert [(e.user, e.assistant, e.interrupted) for e in alice] == [("hi", "hello alice", False),
                                                                      ("bye", "see you", True)]
    assert [e.assistant for e in await store.recent_exchanges("bob", 10)] == ["hello bob"]
    assert len(await store.recent_exchanges("alice", 1)) == 1
    assert (await store.recent_exchanges("alice", 1))[0].user == "bye"  # the most recent ones


async def test_summary_and_values(store: SqliteMemoryStore) -> None:
    assert await store.get_summary("u") == ""
    await store.set_summary("u", "likes tea")
    await store.set_summary("u", "likes coffee now")
    assert await store.get_summary("u") == "likes coffee now"
    await store.set_value("u", "persona", "a pirate")
    assert await store.get_value("u", "persona") == "a pirate"
    await store.set_value("u", "persona", None)
    assert await store.get_value("u", "persona") is None
    await store.forget("u")
    assert await store.get_summary("u") == ""


async def test_concurrent_writers_lose_nothing(store: SqliteMemoryStore) -> None:
    async def talk(user: str) -> None:
        for i in range(50):
            await store.add_exchange(user, f"{user}-s", f"q{i}", f"a{i}")
    await asyncio.gather(*(talk(f"user{n}") for n in range(6)))
    for n in range(6):
        got = await store.recent_exchanges(f"user{n}", 100)
        assert [e.user for e in got] == [f"q{i}" for i in range(50)]


async def test_wal_mode_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite3"
    a = SqliteMemoryStore(path)
    await a.add_exchange("u", "s", "remember", "ok")
    await a.close()
    import sqlite3

    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    b = SqliteMemoryStore(path)
    assert [e.user for e in await b.recent_exchanges("u", 5)] == ["remember"]
    await b.close()


def test_identity_mapping() -> None:
    cfg = MemoryConfig(identities={"AA:BB:CC:DD:EE:01": "family", "speaker-1": "family"})
    assert cfg.user_for("aa:bb:cc:dd:ee:01") == "family"
    assert cfg.user_for("speaker-1") == "family"
    assert cfg.user_for("aa:bb:cc:dd:ee:02") == "aa:bb:cc:dd:ee:02"


async def test_modes(store: SqliteMemoryStore) -> None:
    await store.add_exchange("u", "old", "my name is Li", "nice to meet you, Li")
    await store.set_summary("u", "The user is called Li.")
    await store.set_value("u", "persona", "a pirate")
    nomem = await MemoryManager(MemoryConfig(mode="nomem"), store, None, "en").open_session("u")
    assert nomem.history == [] and nomem.summary == "" and nomem.persona == "a pirate"
    history = await MemoryManager(MemoryConfig(mode="history"), store, None, "en").open_session("u")
    assert [e.user for e in history.history] == ["my name is Li"] and history.summary == ""
    short = await MemoryManager(MemoryConfig(mode="local_short"), store, None, "en").open_session("u")
    assert short.summary == "The user is called Li." and short.history


async def test_nomem_records_nothing(store: SqliteMemoryStore) -> None:
    manager = MemoryManager(MemoryConfig(mode="nomem"), store, None, "en")
    manager.record("u2", "s", "secret", "ok", False)
    await manager.drain()
    assert await store.recent_exchanges("u2", 5) == []


def test_token_budget_drops_oldest() -> None:
    d = Dialogue(max_turns=100)
    for i in range(20):
        d.add(f"question number {i} " * 5, f"answer number {i} " * 5)
    msgs = d.messages("sys", "now", token_budget=200)
    kept = [m.content for m in msgs if m.role == "user"][:-1]
    assert 0 < len(kept) < 20
    assert kept[-1].startswith("question number 19")  # the newest survive
    total = sum(estimate_tokens(m.content) for m in msgs[1:-1])
    assert total <= 200


def test_token_estimate() -> None:
    assert estimate_tokens("你好世界") == 4
    assert estimate_tokens("hello world, this is text") in range(5, 9)
