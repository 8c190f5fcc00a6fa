"""The real server with an OpenAI-compatible LLM (a fake OpenAI server on 127.0.0.1, scripted),
real plugins, a real MCP server, the simulated device's own MCP tools and a fake Home Assistant:
tool calls go out over the real wire formats and their results come back into the answer."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from harness.devsim import SimDevice
from harness.devsim.identity import DeviceIdentity
from harness.devsim.server_process import ServerProcess, start_server
from harness.fakes.hass_server import FakeHomeAssistant
from harness.fakes.openai_server import ChatReply, FakeOpenAIServer, SpeechReply, ToolCallSpec
from tests.conftest import similarity, speech, transcribe, words

pytestmark = pytest.mark.e2e

KITCHEN = {"entity_id": "light.kitchen", "name": ["kitchen light", "厨房灯"], "area": "kitchen"}


@pytest.fixture(scope="module")
async def fakes() -> AsyncIterator[tuple[FakeOpenAIServer, FakeHomeAssistant]]:
    hass = FakeHomeAssistant(token="ha-token")
    hass.add("light.kitchen", "off", friendly_name="Kitchen", supported_color_modes=["brightness"])
    async with FakeOpenAIServer(require_key="test-key") as llm, hass:
        yield llm, hass


def llm_section(fake: FakeOpenAIServer, **extra: Any) -> dict[str, Any]:
    return {"type": "openai", "base_url": fake.base_url, "api_key": "test-key", "model": "fake-model",
            "timeout_s": 3, "first_token_timeout_s": 3, "retries": 1, "retry_backoff_s": 0.05, **extra}


@pytest.fixture(scope="module")
def music_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("music")
    text = "la la la la, this is the song about the moon river, " * 6
    subprocess.run(["espeak-ng", "-w", str(folder / "Moon River.wav"), text], check=True)
    return folder


@pytest.fixture(scope="module")
async def tool_server(fakes, music_dir: Path) -> AsyncIterator[ServerProcess]:
    llm, hass = fakes
    overrides = {
        "llm": llm_section(llm),
        "intent": {"mode": "function_call", "tool_timeout_s": 3},
        "memory": {"mode": "local_short", "history_turns": 4},
        "plugins": {"home_assistant": {"enabled": True, "base_url": hass.url, "token": "ha-token",
                                       "entities": [KITCHEN], "timeout_s": 2},
                    "music": {"enabled": True, "music_dir": str(music_dir)}},
        "mcp_servers": {"demo": {"command": sys.executable, "args": ["-m", "harness.fakes.mcp_server"],
                                 "timeout_s": 3}},
    }
    async with start_server(overrides) as proc:
        yield proc


async def connected(server: ServerProcess, identity: DeviceIdentity | None = None) -> SimDevice:
    dev = SimDevice(identity=identity) if identity else SimDevice()
    await dev.ota(server.http_url)
    await dev.connect()
    return dev


def speech_calls(fake: FakeOpenAIServer) -> list[Any]:
    return [r for r in fake.requests if r.path.endswith("/audio/speech")]


def tool_names(request_body: dict[str, Any]) -> set[str]:
    return {t["function"]["name"] for t in request_body.get("tools") or []}


def tool_messages(request_body: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in request_body["messages"] if m.get("role") == "tool"]


async def wait_device_tools(dev: SimDevice) -> None:
    await dev.wait_for(lambda e: e.is_msg("mcp") and e.get("payload", {}).get("method") == "tools/list", timeout=10)
    await asyncio.sleep(0.2)


async def test_spoken_request_calls_a_device_mcp_tool(tool_server: ServerProcess, fakes, whisper) -> None:
    llm, _ = fakes
    dev = await connected(tool_server)
    try:
        await wait_device_tools(dev)
        llm.chat_script.extend([
            ChatReply(tool_calls=[ToolCallSpec("self_audio_speaker_set_volume", {"volume": 30})]),
            ChatReply(text="Done, the volume is now thirty."),
        ])
        n_before = len(llm.chat_requests())
        result = await dev.ask_audio(await speech("Please set the volume to thirty."))
        assert result.completed, result.error
        assert similarity(result.stt_text, "Please set the volume to thirty.") >= 0.6, result.stt_text
        # The device received the JSON-RPC call, with the original (dotted) tool name.
        calls = [c for c in dev.mcp_calls if c.method == "tools/call"]
        params = calls[-1].payload["params"] if calls else {}
        assert params.get("name") == "self.audio_speaker.set_volume"
        assert params.get("arguments") == {"volume": 30}
        assert dev.mcp.status.volume == 30
        requests = llm.chat_requests()[n_before:]
        assert "self_audio_speaker_set_volume" in tool_names(requests[0].body)
        assert "demo_add" in tool_names(requests[0].body)  # the external MCP server's tools too
        assert tool_messages(requests[1].body), "the tool result went back to the model"
        assert result.sentences == ["Done, the volume is now thirty."]
        heard = transcribe(whisper, result.reply_pcm, result.reply_sample_rate)
        assert "volume" in heard.lower() or "thirty" in heard.lower(), heard
    finally:
        await dev.close()


async def llm_quiet(llm: Any, window_s: float = 0.7, limit_s: float = 10.0) -> None:
    """Wait until no new chat request has arrived for `window_s` (at most `limit_s`)."""
    deadline = asyncio.get_running_loop().time() + limit_s
    seen = -1
    while seen != len(llm.chat_requests()) and asyncio.get_running_loop().time() < deadline:
        seen = len(llm.chat_requests())
        await asyncio.sleep(window_s)


async def test_home_assistant_light_switched_on(tool_server: ServerProcess, fakes) -> None:
    llm, hass = fakes
    dev = await connected(tool_server)
    try:
        # The previous test's session may still be summarised by the LLM as it closes: that
        # request would take the scripted tool call. Start once the LLM has gone quiet.
        await llm_quiet(llm)
        llm.chat_script.extend([
            ChatReply(tool_calls=[ToolCallSpec("hass_set_state", {"entity": "kitchen light", "state": "on"})]),
            ChatReply(text="The kitchen light is on."),
        ])
        result = await dev.ask_text("Turn on the kitchen light.")
        assert result.completed and result.sentences == ["The kitchen light is on."]
        assert hass.states["light.kitchen"]["state"] == "on"
        assert [(c.domain, c.service) for c in hass.calls][-1] == ("light", "turn_on")
    finally:
        await dev.close()


async def test_external_mcp_server_tool_is_called(tool_server: ServerProcess, fakes) -> None:
    llm, _ = fakes
    dev = await connected(tool_server)
    try:
        n_before = len(llm.chat_requests())
        llm.chat_script.extend([
            ChatReply(tool_calls=[ToolCallSpec("demo_add", {"a": 20, "b": 22})]),
            ChatReply(text="It is forty two."),
        ])
        result = await dev.ask_text("What is twenty plus twenty two?")
        assert result.completed and result.sentences == ["It is forty two."]
        second = llm.chat_requests()[n_before + 1].body
        assert "42" in tool_messages(second)[-1]["content"]
    finally:
        await dev.close()


async def test_several_tools_in_one_turn_and_a_failing_one(tool_server: ServerProcess, fakes) -> None:
    llm, _ = fakes
    dev = await connected(tool_server)
    try:
        n_before = len(llm.chat_requests())
        llm.chat_script.extend([
            ChatReply(tool_calls=[ToolCallSpec("demo_add", {"a": 1, "b": 2}),
                                  ToolCallSpec("demo_fail", {"reason": "disk on fire"}),
                                  ToolCallSpec("demo_slow", {"seconds": 30}),
                                  ToolCallSpec("demo_add", "{not json")]),
            ChatReply(text="Some of that worked."),
        ])
        result = await dev.ask_text("Do several things.")
        assert result.completed and result.sentences == ["Some of that worked."]
        results = [m["content"] for m in tool_messages(llm.chat_requests()[n_before + 1].body)]
        assert len(results) == 4
        assert "3" in results[0]
        assert "disk on fire" in results[1]
        assert "did not answer within" in results[2]  # the tool timeout, not a hang
        assert "not a valid JSON" in results[3] or "JSON" in results[3]
    finally:
        await dev.close()


async def test_tool_rounds_are_limited(tool_server: ServerProcess, fakes) -> None:
    llm, _ = fakes
    dev = await connected(tool_server)
    try:
        n_before = len(llm.chat_requests())
        loop_call = ChatReply(tool_calls=[ToolCallSpec("demo_add", {"a": 1, "b": 1})])
        llm.chat_script.extend([loop_call, loop_call, loop_call, ChatReply(text="Finally an answer.")])
        result = await dev.ask_text("Keep calling tools.")
        assert result.completed and result.sentences == ["Finally an answer."]
        requests = llm.chat_requests()[n_before:]
        assert len(requests) == 4
        assert not requests[-1].body.get("tools"), "the last round offers no tools, so the model must answer"
    finally:
        await dev.close()


async def test_two_devices_keep_separate_memories_while_talking_at_once(tool_server: ServerProcess, fakes) -> None:
    llm, _ = fakes
    alice, bob = DeviceIdentity(), DeviceIdentity()
    devs = [await connected(tool_server, alice), await connected(tool_server, bob)]
    try:
        await asyncio.gather(devs[0].ask_text("My name is Alice and I love tea."),
                             devs[1].ask_text("My name is Bob and I love coffee."))
    finally:
        for d in devs:
            await d.close()
    await asyncio.sleep(1.0)  # the local_short summaries are written in the background
    devs = [await connected(tool_server, alice), await connected(tool_server, bob)]
    try:
        n_before = len(llm.chat_requests())
        await asyncio.gather(devs[0].ask_text("What do I like, Alice here?"),
                             devs[1].ask_text("What do I like, Bob here?"))
    finally:
        for d in devs:
            await d.close()
    asked = {}
    for req in llm.chat_requests()[n_before:]:
        last = req.body["messages"][-1]["content"]
        if "here?" in last:
            asked[last] = json.dumps(req.body["messages"], ensure_ascii=False)
    alice_prompt = asked["What do I like, Alice here?"]
    bob_prompt = asked["What do I like, Bob here?"]
    assert "tea" in alice_prompt and "coffee" not in alice_prompt and "Bob" not in alice_prompt
    assert "coffee" in bob_prompt and "tea" not in bob_prompt and "Alice" not in bob_prompt
    # local_short: a summary request was made for each user after their first session.
    summaries = [r for r in llm.chat_requests() if "memory" in r.body["messages"][0]["content"].lower()]
    assert len(summaries) >= 2


@pytest.mark.parametrize("reply,attempts", [
    (ChatReply(status=401, error_message="Incorrect API key"), 1),  # not retryable
    (ChatReply(status=500, error_message="boom"), 2),  # retried once, fails again
    (ChatReply(mode="hang"), 2),
    (ChatReply(mode="drop", fail_after=1), 2),
], ids=["401", "500", "hang", "dropped"])
async def test_llm_failures_get_a_spoken_apology(tool_server: ServerProcess, fakes, whisper, reply,
                                                 attempts: int) -> None:
    llm, _ = fakes
    what = repr(reply)[:60]
    dev = await connected(tool_server)
    try:
        llm.chat_script.extend([reply] * attempts)
        result = await dev.ask_text("Hello there.")
        assert result.completed, (what, result.error)
        assert result.sentences and "sorry" in result.sentences[0].lower(), (what, result.sentences)
        heard = transcribe(whisper, result.reply_pcm, result.reply_sample_rate)
        assert "sorry" in heard.lower(), (what, heard)
        # ... and the session keeps working.
        again = await dev.ask_text("Are you back?")
        assert again.completed and again.sentences and "sorry" not in again.sentences[0].lower()
    finally:
        await dev.close()
    assert "Traceback" not in tool_server.log_text()


async def test_a_429_is_retried(tool_server: ServerProcess, fakes) -> None:
    llm, _ = fakes
    dev = await connected(tool_server)
    try:
        llm.chat_script.extend([ChatReply(status=429, error_message="slow down", retry_after=0.1),
                                ChatReply(text="Now I can answer.")])
        result = await dev.ask_text("Hello?")
        assert result.sentences == ["Now I can answer."]
    finally:
        await dev.close()


async def test_think_blocks_are_never_spoken(tool_server: ServerProcess, fakes) -> None:
    llm, _ = fakes
    dev = await connected(tool_server)
    try:
        llm.chat_script.append(ChatReply(chunks=["<thi", "nk>secret plan</th", "ink>The answer is yes."]))
        result = await dev.ask_text("Is it?")
        assert result.sentences == ["The answer is yes."]
    finally:
        await dev.close()


async def test_fallback_tts_takes_over_within_the_turn(fakes, whisper) -> None:
    llm, _ = fakes
    overrides = {
        "llm": llm_section(llm),
        "tts": [{"type": "openai", "base_url": llm.base_url, "api_key": "test-key", "model": "tts-1",
                 "voice": "alloy", "timeout_s": 2, "retries": 0},
                {"type": "piper"}],
    }
    async with start_server(overrides) as server:
        dev = await connected(server)
        try:
            llm.speech_script.append(SpeechReply(status=500, error_message="speech backend down"))
            llm.chat_script.append(ChatReply(text="The cloud voice is down, but you can still hear me."))
            result = await dev.ask_text("Can you hear me?")
            assert result.completed and result.frames_played > 10
            heard = transcribe(whisper, result.reply_pcm, result.reply_sample_rate)
            assert similarity(heard, result.sentences[0]) > 0.5, heard
            # The next turn goes straight to the working voice (the broken one cools down).
            speech_requests = len(speech_calls(llm))
            llm.chat_script.append(ChatReply(text="Still here."))
            again = await dev.ask_text("Again?")
            assert again.completed and again.frames_played > 0
            assert len(speech_calls(llm)) == speech_requests
            assert "falling back" in server.log_text()
        finally:
            await dev.close()


async def test_missing_funasr_model_stops_startup_with_advice(tmp_path) -> None:
    with pytest.raises(RuntimeError) as err:
        async with start_server({"asr": {"type": "funasr", "model_dir": str(tmp_path / "SenseVoiceSmall")}}):
            pass
    text = str(err.value)
    assert "SenseVoiceSmall" in text and "download_models.sh" in text


async def test_text_only_answers_without_tools_for_the_embedded_llm(server: ServerProcess) -> None:
    """The bundled base model has no tool calling: the plugins are simply not offered."""
    async with SimDevice() as dev:
        await dev.ota(server.http_url)
        await dev.connect()
        result = await dev.ask_text("What time is it?")
        assert result.completed and words(" ".join(result.sentences))


async def test_music_streams_as_paced_opus_and_stops_on_abort(tool_server: ServerProcess, fakes) -> None:
    llm, _ = fakes
    dev = await connected(tool_server)
    try:
        llm.chat_script.append(ChatReply(tool_calls=[ToolCallSpec("play_music", {"song": "moon river"})]))
        await dev.listen_start("manual")
        await dev.listen_detect("Play moon river.")
        await dev.wait_for(lambda e: e.is_msg("tts", "start"), timeout=10)
        t0 = time.monotonic()
        await asyncio.sleep(3)
        frames = [e for e in dev.events if e.kind == "binary" and e.t >= t0]
        # Paced: about one 60 ms frame per 60 ms of wall clock, never a burst beyond the device queue.
        assert 30 <= len(frames) <= 3 / 0.06 + 10, len(frames)
        assert dev.max_queue_depth <= 40 and dev.overflow_drops == 0
        sent = await dev.abort()
        stop = await dev.wait_for(lambda e: e.is_msg("tts", "stop") and e.t >= sent, timeout=5)
        assert stop.t - sent < 0.1
        await asyncio.sleep(0.5)
        assert not [e for e in dev.events if e.kind == "binary" and e.t > stop.t]
    finally:
        await dev.close()


async def test_a_dying_mcp_server_gives_an_error_result_and_the_user_an_answer(tool_server: ServerProcess,
                                                                            fakes) -> None:
    llm, _ = fakes
    dev = await connected(tool_server)
    try:
        n_before = len(llm.chat_requests())
        llm.chat_script.extend([ChatReply(tool_calls=[ToolCallSpec("demo_crash", {})]),
                                ChatReply(text="That tool just broke, sorry.")])
        result = await dev.ask_text("Use the crash tool.")
        assert result.completed and " ".join(result.sentences) == "That tool just broke, sorry."
        error = tool_messages(llm.chat_requests()[n_before + 1].body)[-1]["content"]
        assert "demo" in error.lower() or "error" in error.lower(), error
        # The manager restarts it in the background; the session keeps working meanwhile.
        again = await dev.ask_text("Hello?")
        assert again.completed
    finally:
        await dev.close()


async def test_legacy_iot_device_methods_become_tools(tool_server: ServerProcess, fakes) -> None:
    """A firmware <= 1.7 device announces IoT descriptors; the model's call becomes an iot command."""
    llm, _ = fakes
    dev = await connected(tool_server)
    try:
        descriptor = {"name": "Speaker", "description": "The speaker", "properties": {
            "volume": {"description": "current volume", "type": "number"}}, "methods": {
            "SetVolume": {"description": "Set the volume", "parameters": {
                "volume": {"description": "0-100", "type": "number"}}}}}
        await dev.send_text_raw(json.dumps({"session_id": dev.session_id, "type": "iot", "update": True,
                                            "descriptors": [descriptor]}))
        await dev.send_text_raw(json.dumps({"session_id": dev.session_id, "type": "iot", "update": True,
                                            "states": [{"name": "Speaker", "state": {"volume": 80}}]}))
        n_before = len(llm.chat_requests())
        llm.chat_script.extend([ChatReply(tool_calls=[ToolCallSpec("iot_Speaker_SetVolume", {"volume": 20})]),
                                ChatReply(text="Volume twenty.")])
        result = await dev.ask_text("Make it quieter.")
        assert result.completed and result.sentences == ["Volume twenty."]
        assert "iot_Speaker_SetVolume" in tool_names(llm.chat_requests()[n_before].body)
        commands = [m for m in dev.messages("iot") if m.get("commands")]
        assert commands and commands[-1]["commands"][0]["method"] == "SetVolume"
        assert commands[-1]["commands"][0]["parameters"] == {"volume": 20}
    finally:
        await dev.close()
