"""The Responder's tool loop with the real OpenAI provider (against the fake OpenAI server on
127.0.0.1) and real plugins: intent modes, direct results, audio, ending the session."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from harness.fakes.openai_server import ChatReply, FakeOpenAIServer, ToolCallSpec
from server.memory.store import SqliteMemoryStore
from server.pipeline.responder import Audio, EndSession, Responder, Sentence, parse_intent
from server.providers.base import ChatMessage, ProviderContext
from server.providers.registry import build_provider, settings_model
from server.tools.base import ToolContext
from server.tools.plugins import PluginTools
from server.tools.toolbox import Toolbox


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
async def llm(fake: FakeOpenAIServer, tmp_path: Path) -> AsyncIterator[Any]:
    settings = settings_model("llm", "openai").model_validate(
        {"type": "openai", "base_url": fake.base_url, "api_key": "k", "model": "m", "timeout_s": 3,
         "first_token_timeout_s": 3, "retries": 0})
    provider = build_provider("llm", settings, ProviderContext(tmp_path, tmp_path, tmp_path))
    await provider.load()
    yield provider
    await provider.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteMemoryStore]:
    s = SqliteMemoryStore(tmp_path / "m.sqlite3")
    yield s
    await s.close()


@pytest.fixture
def music_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "music"
    folder.mkdir()
    subprocess.run(["espeak-ng", "-w", str(folder / "Moon River.wav"), "la la la, moon river"], check=True)
    return folder


def toolbox(store: SqliteMemoryStore, music_dir: Path) -> Toolbox:
    plugins = PluginTools({"time_date": {}, "exit_intent": {}, "persona": {}, "music": {"music_dir": str(music_dir)}})
    box = Toolbox(lambda: ToolContext(device_id="d1", user_id="u1", session_id="s1", language="en", storage=store))
    box.add(plugins)
    return box


async def run(responder: Responder, text: str = "hi") -> list[Any]:
    return [item async for item in responder.run([ChatMessage("system", "be brief"), ChatMessage("user", text)])]


async def test_function_call_round_feeds_the_result_back(fake, llm, store, music_dir) -> None:
    fake.chat_script.extend([ChatReply(text="Let me check. ", tool_calls=[ToolCallSpec("get_time_and_date")]),
                             ChatReply(text="It is late.")])
    items = await run(Responder(llm, toolbox(store, music_dir)), "what time is it")
    assert [i.text for i in items if isinstance(i, Sentence)] == ["Let me check.", "It is late."]
    first, second = fake.chat_requests()
    assert "get_time_and_date" in {t["function"]["name"] for t in first.body["tools"]}
    tool_msgs = [m for m in second.body["messages"] if m["role"] == "tool"]
    assert tool_msgs and any(ch.isdigit() for ch in tool_msgs[0]["content"])
    assistant = [m for m in second.body["messages"] if m["role"] == "assistant"][-1]
    assert assistant["tool_calls"][0]["function"]["name"] == "get_time_and_date"


async def test_nointent_offers_no_tools(fake, llm, store, music_dir) -> None:
    fake.chat_script.append(ChatReply(text="Plain answer."))
    items = await run(Responder(llm, toolbox(store, music_dir), mode="nointent"))
    assert [i.text for i in items] == ["Plain answer."]
    assert not fake.chat_requests()[0].body.get("tools")


async def test_intent_llm_classifies_then_answers_with_the_result(fake, llm, store, music_dir) -> None:
    fake.chat_script.extend([
        ChatReply(text='Sure: {"function_call": {"name": "get_time_and_date", "arguments": {}}}'),
        ChatReply(text="It is some time today."),
    ])
    items = await run(Responder(llm, toolbox(store, music_dir), mode="intent_llm"), "what time is it")
    assert [i.text for i in items] == ["It is some time today."]
    classify, answer = fake.chat_requests()
    assert not classify.body.get("tools") and "get_time_and_date" in classify.body["messages"][0]["content"]
    assert not answer.body.get("tools")
    assert any(m["role"] == "system" and m["content"].startswith("Result of get_time_and_date")
               for m in answer.body["messages"])


async def test_intent_llm_without_a_tool_just_answers(fake, llm, store, music_dir) -> None:
    fake.chat_script.extend([ChatReply(text='{"function_call": null}'), ChatReply(text="Hello!")])
    items = await run(Responder(llm, toolbox(store, music_dir), mode="intent_llm"))
    assert [i.text for i in items] == ["Hello!"]


def test_parse_intent() -> None:
    call = parse_intent('noise {"function_call": {"name": "x", "arguments": "{\\"a\\": 1}"}} tail')
    assert call is not None and call.name == "x" and call.arguments == '{"a": 1}'
    assert parse_intent('{"function_call": null}') is None
    assert parse_intent("no json at all") is None
    assert parse_intent('{"function_call": {"name": ""}}') is None


async def test_direct_results_say_play_and_end(fake, llm, store, music_dir) -> None:
    box = toolbox(store, music_dir)
    fake.chat_script.append(ChatReply(tool_calls=[ToolCallSpec("set_persona", {"persona": "You are a pirate."})]))
    items = await run(Responder(llm, box), "be a pirate")
    assert [type(i) for i in items] == [Sentence] and items[0].text
    assert await store.get_value("u1", "persona") == "You are a pirate."
    assert len(fake.chat_requests()) == 1, "a spoken result needs no second LLM round"

    fake.chat_script.append(ChatReply(tool_calls=[ToolCallSpec("play_music", {"song": "moon river"})]))
    items = await run(Responder(llm, box), "play moon river")
    audio = [i for i in items if isinstance(i, Audio)]
    assert len(audio) == 1 and audio[0].sample_rate > 0
    pcm = b"".join([chunk async for chunk in audio[0].chunks])
    assert len(pcm) > audio[0].sample_rate  # more than half a second of the song

    fake.chat_script.append(ChatReply(tool_calls=[ToolCallSpec("end_conversation", {})]))
    items = await run(Responder(llm, box), "bye")
    assert isinstance(items[-1], EndSession) and any(isinstance(i, Sentence) and i.text for i in items)
