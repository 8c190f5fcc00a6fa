"""Auth off (the default): a device id is only a claim, so memory goes by trust on first use
(server/pairing/memory_identity.py). Against the real server with a fake LLM that records what
each conversation sends it: another client claiming a device's id never sees that device's
history, and memory written before the rule existed goes to the first client that comes back."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from harness.devsim import SimDevice
from harness.devsim.identity import DeviceIdentity
from harness.devsim.server_process import ServerProcess, start_server
from harness.fakes.openai_server import ChatReply, FakeOpenAIServer

pytestmark = pytest.mark.e2e

VICTIM = DeviceIdentity(mac="02:70:00:00:00:01", client_id="1b7e0c52-0000-4000-8000-000000000001")
IMPOSTOR = DeviceIdentity(mac=VICTIM.mac, client_id="1b7e0c52-0000-4000-8000-0000000000ff")
NO_CLIENT = DeviceIdentity(mac=VICTIM.mac, client_id="")


def echo(body: dict[str, Any]) -> ChatReply:
    users = [m.get("content") for m in body.get("messages") or [] if m.get("role") == "user"]
    last = users[-1] if users and isinstance(users[-1], str) else ""
    return ChatReply(text=f"Noted: {' '.join(last.split())[:60]}")


@dataclass
class Setup:
    server: ServerProcess
    llm: FakeOpenAIServer

    async def ask(self, identity: DeviceIdentity, text: str) -> str:
        """One typed turn; returns everything the LLM was sent for it (history included)."""
        before = len(self.llm.chat_requests())
        async with SimDevice(identity=identity) as dev:
            await dev.connect(url=self.server.ws_url, token="")
            result = await dev.ask_text(text, timeout=30)
            assert result.completed, result.error
        requests = self.llm.chat_requests()[before:]
        assert requests
        await asyncio.sleep(0.3)  # exchanges are stored in the background
        return "\n".join(str(m.get("content")) for r in requests for m in r.body.get("messages") or [])


@pytest.fixture(scope="module")
async def setup() -> AsyncIterator[Setup]:
    async with FakeOpenAIServer(default_reply=echo) as llm:
        overrides = {"llm": {"type": "openai", "base_url": llm.base_url, "api_key": "k", "model": "fake",
                             "timeout_s": 5, "first_token_timeout_s": 5, "retries": 0},
                     "memory": {"mode": "history", "history_turns": 4}}
        async with start_server(overrides) as server:
            yield Setup(server, llm)


async def test_another_client_never_gets_a_device_s_memory(setup: Setup) -> None:
    await setup.ask(VICTIM, "My secret word is pineapple.")
    seen = await setup.ask(IMPOSTOR, "What is my secret word?")
    assert "pineapple" not in seen
    assert "pineapple" not in await setup.ask(NO_CLIENT, "What is my secret word?")
    # The impostor has a memory of its own, which works for it across connections ...
    await setup.ask(IMPOSTOR, "My colour is teal.")
    assert "teal" in await setup.ask(IMPOSTOR, "And my colour?")
    # ... and the device's own memory still works for the device, without the impostor's words.
    mine = await setup.ask(VICTIM, "Remind me?")
    assert "pineapple" in mine and "teal" not in mine
    log = setup.server.log_text()
    assert log.count(f"device id {VICTIM.mac} first came with another client id (this one: {IMPOSTOR.client_id})") == 1


async def test_memory_from_before_the_upgrade_goes_to_the_first_client_back(setup: Setup) -> None:
    """Rows stored under a device id before claims existed (no claim recorded): the first client
    to connect with that id claims them; a later one with another client id does not see them."""
    old = DeviceIdentity(mac="02:70:00:00:00:02", client_id="1b7e0c52-0000-4000-8000-000000000002")
    db = sqlite3.connect(setup.server.data_dir / "memory.sqlite3")
    try:
        with db:
            db.execute("INSERT INTO exchanges (user_id, session_id, ts, user_text, assistant_text) "
                       "VALUES (?, 'old-session', ?, 'I keep bees on the roof.', 'Noted.')", (old.mac, time.time()))
    finally:
        db.close()
    assert "bees" in await setup.ask(old, "What do I keep?")
    other = DeviceIdentity(mac=old.mac, client_id="1b7e0c52-0000-4000-8000-0000000000fe")
    assert "bees" not in await setup.ask(other, "What do I keep?")
