"""Memory modes on top of a MemoryStore.

- nomem: nothing is kept after the session.
- history: every exchange is stored; a new session starts with the user's last few exchanges.
- local_short: history, plus a short summary of everything earlier, rewritten by the LLM in the
  background after each session and put in the system prompt.

Memory belongs to a *user* identity, the device id unless `identities` maps several devices (or
a Xiaomi speaker) to one user. Nothing here is per-device state on a shared object: each session
gets its own `SessionMemory`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from server.memory.store import MemoryStore, StoredExchange
from server.providers.base import ChatMessage, LLMRequest, ProviderError

log = logging.getLogger("server.memory")

# A summary folds in at most this many not-yet-summarized exchanges (the newest).
SUMMARY_MAX_EXCHANGES = 50
# Compare-and-set rounds against concurrent summary writers before giving up until next time.
SUMMARY_ATTEMPTS = 3


class MemoryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["nomem", "history", "local_short"] = "history"
    # SQLite file, relative to data_dir.
    db: str = "memory.sqlite3"
    # Exchanges from earlier sessions put back in front of a new session.
    history_turns: int = Field(default=4, ge=0, le=100)
    # device id -> user id: devices (and speakers) mapped to one user share one memory.
    identities: dict[str, str] = Field(default_factory=dict)
    summary_max_chars: int = Field(default=600, ge=50, le=5000)
    # Stored exchanges per user; the oldest are deleted beyond this (typed text from a chatty or
    # hostile client cannot grow the database without bound).
    max_exchanges_per_user: int = Field(default=1000, ge=10, le=1_000_000)

    def user_for(self, device_id: str) -> str:
        key = device_id.lower()
        for dev, user in self.identities.items():
            if dev.lower() == key:
                return user
        return device_id


SUMMARY_PROMPT = {
    "en": ("You keep a short memory about a user for a voice assistant.\n"
           "What you remembered before:\n{old}\n\nToday's conversation:\n{talk}\n\n"
           "Write the updated memory: facts about the user, their preferences and open topics, at most "
           "{limit} characters, plain sentences. Reply with the memory only."),
    "zh": ("你为语音助手记录关于用户的简短记忆。\n之前的记忆：\n{old}\n\n今天的对话：\n{talk}\n\n"
           "请写出更新后的记忆：用户的信息、喜好和未完成的话题，不超过{limit}个字，用简单的句子。只回复记忆内容。"),
}


@dataclass
class SessionMemory:
    user_id: str
    summary: str = ""
    history: list[StoredExchange] = field(default_factory=list)
    persona: str = ""
    load_ms: float = 0.0


class MemoryManager:
    def __init__(self, config: MemoryConfig, store: MemoryStore | None, llm: Any, language: str) -> None:
        self.config = config
        self.store = store
        self.llm = llm
        self.language = language
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def persistent(self) -> bool:
        return self.config.mode != "nomem" and self.store is not None

    def user_for(self, device_id: str) -> str:
        return self.config.user_for(device_id)

    async def open_session(self, user_id: str) -> SessionMemory:
        t0 = time.monotonic()
        mem = SessionMemory(user_id)
        if self.store is None:
            return mem
        try:
            # The persona is kept even in nomem mode: it is a setting the user chose, not memory.
            mem.persona = await self.store.get_value(user_id, "persona") or ""
            if self.persistent:
                if self.config.history_turns:
                    mem.history = await self.store.recent_exchanges(user_id, self.config.history_turns)
                if self.config.mode == "local_short":
                    mem.summary = await self.store.get_summary(user_id)
        except Exception:  # noqa: BLE001 - a broken memory must not stop the conversation
            log.exception("[%s] loading memory failed; continuing without it", user_id)
        mem.load_ms = (time.monotonic() - t0) * 1000
        return mem

    def record(self, user_id: str, session_id: str, user: str, assistant: str, interrupted: bool) -> None:
        if not self.persistent or not (user or assistant):
            return
        self._spawn(self.store.add_exchange(user_id, session_id, user, assistant, interrupted))  # type: ignore[union-attr]

    def close_session(self, user_id: str, session_id: str) -> None:
        if self.config.mode == "local_short" and self.store is not None:
            self._spawn(self._summarize(user_id, session_id))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("memory task failed: %r", task.exception())

    async def _summarize(self, user_id: str, session_id: str) -> None:
        """Fold the user's exchanges not yet in the summary into it.

        Works from the summary's watermark rather than this session alone, so exchanges of a
        session whose process was killed before summarizing are picked up by the next one, on
        any process. The LLM runs outside any transaction; the write is a compare-and-set on the
        summary's version, so when two processes close sessions of one user at once exactly one
        write lands and the other re-reads (and stops, if nothing is left to add)."""
        assert self.store is not None
        for _attempt in range(SUMMARY_ATTEMPTS):
            state = await self.store.summary_state(user_id)
            exchanges = await self.store.exchanges_after(user_id, state.through_id, SUMMARY_MAX_EXCHANGES)
            if not exchanges:
                return
            summary = await self._write_summary(user_id, state.summary, exchanges)
            if not summary:
                return
            if await self.store.put_summary(user_id, summary, state.version, exchanges[-1].id):
                log.info("[%s] memory summary updated (%d chars, version %d)", user_id, len(summary),
                         state.version + 1)
                return
            log.info("[%s] the memory summary was updated elsewhere meanwhile; re-reading it", user_id)
        log.warning("[%s] memory summary kept losing to concurrent writers; leaving it for next time", user_id)

    async def _write_summary(self, user_id: str, old: str, exchanges: list[StoredExchange]) -> str:
        talk = "\n".join(f"User: {e.user}\nAssistant: {e.assistant}" for e in exchanges)
        prompt = SUMMARY_PROMPT.get(self.language, SUMMARY_PROMPT["en"]).format(
            old=old or "(nothing yet)", talk=talk[-6000:], limit=self.config.summary_max_chars)
        request = LLMRequest(messages=[ChatMessage("user", prompt)], max_tokens=400, temperature=0.2)
        parts: list[str] = []
        try:
            async for delta in self.llm.stream(request):
                parts.append(delta.text)
        except ProviderError as exc:
            log.warning("[%s] memory summary failed (%s); the exchanges are kept and will be summarized "
                        "next time", user_id, exc)
            return ""
        return "".join(parts).strip()[: self.config.summary_max_chars]

    async def drain(self, timeout: float = 30.0) -> None:
        """Let pending writes and summaries finish (shutdown); exchanges are written first."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
