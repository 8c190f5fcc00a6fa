"""The OpenAI-compatible LLM, ASR and TTS providers against a real local HTTP server
(harness/fakes/openai_server.py on 127.0.0.1) speaking the OpenAI wire format."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.audio.pcm import read_wav
from server.providers.asr.openai_asr import OpenAIASR, parse_tags
from server.providers.base import ChatMessage, LLMDelta, LLMRequest, ProviderContext, ProviderError, ToolCall
from server.providers.llm.openai_llm import OpenAILLM
from server.providers.llm.openai_text import (
    SpeechFilter,
    ToolCallAccumulator,
    parse_text_tool_calls,
    thinking_params,
    thinking_vendor,
)
from server.providers.tts.openai_tts import Mp3Stream, OpenAITTS, WavStream

try:
    from harness.fakes.openai_server import (
        ChatReply,
        FakeOpenAIServer,
        SpeechReply,
        ToolCallSpec,
        TranscriptionReply,
        wav_header,
    )
except ModuleNotFoundError:  # plain `pytest` (not `python -m pytest`) puts only tests/ on sys.path
    from fakes.openai_server import (  # type: ignore[no-redef]
        ChatReply,
        FakeOpenAIServer,
        SpeechReply,
        ToolCallSpec,
        TranscriptionReply,
        wav_header,
    )

ROOT = Path(__file__).resolve().parents[1]
CTX = ProviderContext(root_dir=ROOT, data_dir=ROOT / "data", models_dir=ROOT / "models")
KEY = "sk-test-123"
FAST = {"retry_backoff_s": 0.01}

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
VOLUME_TOOL = {"type": "function", "function": {
    "name": "set_volume", "description": "Set the speaker volume.",
    "parameters": {"type": "object", "properties": {"level": {"type": "integer"}}, "required": ["level"]}}}


@pytest.fixture(scope="module")
async def fake() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh(fake: FakeOpenAIServer) -> None:
    fake.reset()


Factory = Callable[..., Awaitable[Any]]


@pytest.fixture
async def make(fake: FakeOpenAIServer) -> AsyncIterator[Factory]:
    """Build and load a provider pointed at the fake server; closed after the test."""
    made: list[Any] = []

    async def factory(cls: type, **settings: Any) -> Any:
        settings = {"base_url": fake.base_url, "api_key": KEY, **settings}
        provider = cls(cls.Settings(**settings), CTX)
        await provider.load()
        made.append(provider)
        return provider

    yield factory
    for provider in made:
        await provider.close()


def ask(text: str, tools: list[dict[str, Any]] | None = None) -> LLMRequest:
    return LLMRequest(messages=[ChatMessage("system", "You are a test."), ChatMessage("user", text)],
                      tools=tools or [])


async def collect(llm: OpenAILLM, request: LLMRequest) -> tuple[str, list[ToolCall], list[LLMDelta]]:
    deltas = [d async for d in llm.stream(request)]
    text = "".join(d.text for d in deltas)
    calls = [c for d in deltas for c in d.tool_calls]
    return text, calls, deltas


# --------------------------------------------------------------------------- LLM: streaming


async def test_streams_default_answer_with_key_and_body(fake: FakeOpenAIServer, make: Factory) -> None:
    llm = await make(OpenAILLM, model="my-model", temperature=0.3, max_tokens=50)
    text, calls, deltas = await collect(llm, ask("how are you"))
    assert text == "You said: how are you. That is a fine thing to say."
    assert len(deltas) > 3 and not calls  # streamed token by token, not in one piece
    rec = fake.last("/chat/completions")
    assert rec.authorization == f"Bearer {KEY}"
    assert rec.body["model"] == "my-model" and rec.body["stream"] is True
    assert rec.body["temperature"] == 0.3 and rec.body["max_tokens"] == 50
    assert rec.body["messages"][-1] == {"role": "user", "content": "how are you"}
    assert "tools" not in rec.body and "tool_choice" not in rec.body
    assert llm.supports_tools


async def test_first_token_delay_within_timeout(fake: FakeOpenAIServer, make: Factory) -> None:
    llm = await make(OpenAILLM, first_token_timeout_s=5, retries=0)
    fake.chat_script.append(ChatReply(text="Slow but fine.", ttft_s=0.3, chunk_delay_s=0.02))
    text, _, _ = await collect(llm, ask("hi"))
    assert text == "Slow but fine."
    assert len(fake.chat_requests()) == 1


async def test_extra_headers_are_sent_and_win(fake: FakeOpenAIServer, make: Factory) -> None:
    llm = await make(OpenAILLM, extra_headers={"X-Tenant": "home", "Authorization": "Token abc"})
    await collect(llm, ask("hi"))
    rec = fake.last("/chat/completions")
    assert rec.headers["X-Tenant"] == "home" and rec.authorization == "Token abc"


async def test_no_api_key_sends_no_authorization(fake: FakeOpenAIServer, make: Factory) -> None:
    llm = await make(OpenAILLM, api_key="")
    text, _, _ = await collect(llm, ask("local server"))
    assert text.startswith("You said: local server")
    assert "Authorization" not in fake.last("/chat/completions").headers


async def test_think_blocks_are_never_spoken_across_chunk_borders(fake: FakeOpenAIServer, make: Factory) -> None:
    llm = await make(OpenAILLM)
    fake.chat_script.append(ChatReply(chunks=[
        "<thi", "nk>The user greets me.", " I should be", " brief.</th", "ink>\n\nHel", "lo! 1 <", " 2 and <b>",
        " ok. <think>again</think>Bye."]))
    text, _, deltas = await collect(llm, ask("hi"))
    assert text == "Hello! 1 < 2 and <b> ok. Bye."
    assert all("think" not in d.text and "brief" not in d.text for d in deltas)


async def test_reasoning_content_is_ignored(fake: FakeOpenAIServer, make: Factory) -> None:
    llm = await make(OpenAILLM, first_token_timeout_s=1, retries=0)
    # Reasoning streams for longer than the first-token timeout: it counts as output (the model
    # is alive) but is never spoken.
    fake.chat_script.append(ChatReply(reasoning="Let me think about the capital of France carefully now.",
                                      text="Paris.", ttft_s=0.2, chunk_delay_s=0.1))
    text, calls, _ = await collect(llm, ask("capital of France?"))
    assert text == "Paris." and not calls


async def test_tool_calls_merged_from_interleaved_fragments(fake: FakeOpenAIServer, make: Factory) -> None:
    llm = await make(OpenAILLM)
    fake.chat_script.append(ChatReply(text="Let me check.", fragment_chars=3, tool_calls=[
        ToolCallSpec("get_weather", {"city": "北京", "days": 2}, id="call_weather"),
        ToolCallSpec("set_volume", {"level": 40}, id="call_volume")]))
    text, calls, deltas = await collect(llm, ask("weather and volume", [WEATHER_TOOL, VOLUME_TOOL]))
    assert text == "Let me check."
    assert [d for d in deltas if d.tool_calls] == [deltas[-1]]  # one delta, at the end
    assert [(c.id, c.name) for c in calls] == [("call_weather", "get_weather"), ("call_volume", "set_volume")]
    assert json.loads(calls[0].arguments) == {"city": "北京", "days": 2}
    assert json.loads(calls[1].arguments) == {"level": 40}
    body = fake.last("/chat/completions").body
    assert body["tools"] == [WEATHER_TOOL, VOLUME_TOOL] and body["tool_choice"] == "auto"


async def test_tools_not_sent_when_unsupported(fake: FakeOpenAIServer, make: Factory) -> None:
    llm = await make(OpenAILLM, supports_tools=False)
    await collect(llm, ask("hi", [WEATHER_TOOL]))
    assert "tools" not in fake.last("/chat/completions").body
    assert not llm.supports_tools


async def test_malformed_tool_arguments_are_passed_raw(fake: FakeOpenAIServer, make: Factory) -> None:
    llm = await make(OpenAILLM)
    fake.chat_script.append(ChatReply(tool_calls=[ToolCallSpec("set_volume", '{"level": 40,,')]))
    text, calls, _ = await collect(llm, ask("louder", [VOLUME_TOOL]))
    assert text == ""
    assert len(calls) == 1 and calls[0].name == "set_volume" and calls[0].arguments == '{"level": 40,,'


@pytest.mark.parametrize("chunks", [
    ["Sure. <tool_", 'call>{"name": "get_weather", "argu', 'ments": {"city": "Paris"}}</tool_call>'],
    ['<|FunctionCallBegin|>[{"name": "get_weather", "parameters": {"city": "Paris"}}]<|FunctionCallEnd|>'],
    ['  {"name": "get_weather",', ' "arguments": {"city": "Paris"}}'],
    ['```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```'],
], ids=["tool_call_tag", "doubao", "bare_json", "fenced_json"])
async def test_tool_call_printed_as_text_is_parsed(fake: FakeOpenAIServer, make: Factory, chunks: list[str]) -> None:
    llm = await make(OpenAILLM)
    fake.chat_script.append(ChatReply(chunks=chunks))
    text, calls, _ = await collect(llm, ask("weather in Paris", [WEATHER_TOOL]))
    assert "{" not in text and "tool" not in text.lower()
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "Paris"}


async def test_json_answer_without_tools_is_spoken(fake: FakeOpenAIServer, make: Factory) -> None:
    llm = await make(OpenAILLM)
    fake.chat_script.append(ChatReply(chunks=['{"mood": ', '"happy"}']))
    text, calls, _ = await collect(llm, ask("answer in json"))
    assert text == '{"mood": "happy"}' and not calls


# --------------------------------------------------------------------------- LLM: failures


async def test_401_is_not_retried_and_says_check_api_key(fake: FakeOpenAIServer, make: Factory) -> None:
    llm = await make(OpenAILLM, retries=2, **FAST)
    fake.chat_script.append(ChatReply(status=401))
    with pytest.raises(ProviderError) as err:
        await collect(llm, ask("hi"))
    assert not err.value.retryable
    assert "401" in str(err.value) and "check api_key" in str(err.value) and "llm.openai" in str(err.value)
    assert len(fake.chat_requests()) == 1


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_retryable_status_is_retried_then_succeeds(fake: FakeOpenAIServer, make: Factory, status: int) -> None:
    llm = await make(OpenAILLM, retries=2, **FAST)
    fake.chat_script += [ChatReply(status=status, retry_after=0.01), ChatReply(status=500), ChatReply(text="Back.")]
    text, _, _ = await collect(llm, ask("hi"))
    assert text == "Back."
    assert len(fake.chat_requests()) == 3


async def test_retries_exhausted_raise_retryable_error(fake: FakeOpenAIServer, make: Factory) -> None:
    llm = await make(OpenAILLM, retries=1, **FAST)
    fake.chat_script += [ChatReply(status=500), ChatReply(status=429, error_message="Slow down please")]
    with pytest.raises(ProviderError) as err:
        await collect(llm, ask("hi"))
    assert err.value.retryable and "429" in str(err.value) and "Slow down please" in str(err.value)
    assert len(fake.chat_requests()) == 2


async def test_hang_gives_up_after_first_token_timeout(fake: FakeOpenAIServer, make: Factory) -> None:
    llm = await make(OpenAILLM, first_token_timeout_s=0.3, retries=0)
    fake.chat_script.append(ChatReply(mode="hang"))
    with pytest.raises(ProviderError) as err:
        await collect(llm, ask("hi"))
    assert err.value.retryable and "first_token_timeout_s" in str(err.value)
    rec = fake.last("/chat/completions")
    await asyncio.wait_for(rec.done.wait(), 5)
    assert rec.client_disconnected


async def test_hang_after_headers_then_retry_succeeds(fake: FakeOpenAIServer, make: Factory) -> None:
    llm = await make(OpenAILLM, first_token_timeout_s=0.3, retries=1, **FAST)
    fake.chat_script += [ChatReply(mode="stall", fail_after=1), ChatReply(text="Second try.")]
    text, _, _ = await collect(llm, ask("hi"))
    assert text == "Second try."


async def test_stall_after_output_raises_without_retry(fake: FakeOpenAIServer, make: Factory) -> None:
    llm = await make(OpenAILLM, timeout_s=0.3, retries=2, **FAST)
    fake.chat_script += [ChatReply(text="One two three four", mode="stall", fail_after=3), ChatReply(text="No.")]
    got: list[str] = []
    with pytest.raises(ProviderError) as err:
        async for delta in llm.stream(ask("hi")):
            got.append(delta.text)
    assert "".join(got) == "One two " and "timed out" in str(err.value)
    assert len(fake.chat_requests()) == 1


async def test_dropped_connection_mid_stream_is_not_retried(fake: FakeOpenAIServer, make: Factory) -> None:
    llm = await make(OpenAILLM, retries=2, **FAST)
    fake.chat_script += [ChatReply(text="One two three four", mode="drop", fail_after=3), ChatReply(text="No.")]
    got: list[str] = []
    with pytest.raises(ProviderError) as err:
        async for delta in llm.stream(ask("hi")):
            got.append(delta.text)
    assert "".join(got) == "One two "
    assert err.value.retryable and "connection" in str(err.value)
    assert len(fake.chat_requests()) == 1  # the user already heard "One two": no second answer


async def test_dropped_connection_before_output_is_retried(fake: FakeOpenAIServer, make: Factory) -> None:
    llm = await make(OpenAILLM, retries=1, **FAST)
    fake.chat_script += [ChatReply(text="lost", mode="drop", fail_after=1), ChatReply(text="Recovered.")]
    text, _, _ = await collect(llm, ask("hi"))
    assert text == "Recovered." and len(fake.chat_requests()) == 2


async def test_error_event_in_stream_is_a_provider_error(fake: FakeOpenAIServer, make: Factory) -> None:
    llm = await make(OpenAILLM, retries=0)
    fake.chat_script.append(ChatReply(text="a b c", mode="error_event", fail_after=2,
                                      error_message="Model overloaded"))
    with pytest.raises(ProviderError, match="Model overloaded"):
        await collect(llm, ask("hi"))


async def test_closing_the_generator_closes_the_connection(fake: FakeOpenAIServer, make: Factory) -> None:
    llm = await make(OpenAILLM)
    fake.chat_script.append(ChatReply(text=" ".join(f"word{i}" for i in range(200)), chunk_delay_s=0.02))
    stream = llm.stream(ask("talk a lot"))
    first = await anext(stream)
    await anext(stream)
    await stream.aclose()  # the user interrupted
    assert first.text == "word0 "
    rec = fake.last("/chat/completions")
    await asyncio.wait_for(rec.done.wait(), 2)
    assert rec.client_disconnected and not rec.completed and rec.chunks_sent < 20


async def test_unreachable_server_is_a_retryable_error(make: Factory) -> None:
    llm = await make(OpenAILLM, base_url="http://127.0.0.1:9/v1", retries=0)
    with pytest.raises(ProviderError) as err:
        await collect(llm, ask("hi"))
    assert err.value.retryable and "connection" in str(err.value)


# --------------------------------------------------------------------------- LLM: thinking switch


@pytest.mark.parametrize(("base_url", "vendor"), [
    ("https://dashscope.aliyuncs.com/compatible-mode/v1", "dashscope"),
    ("https://dashscope-intl.aliyuncs.com/compatible-mode/v1", "dashscope"),
    ("https://api.deepseek.com", "deepseek"),
    ("https://api.deepseek.com/v1", "deepseek"),
    ("https://open.bigmodel.cn/api/paas/v4", "zhipu"),
    ("https://api.z.ai/api/paas/v4", "zhipu"),
    ("https://api.moonshot.cn/v1", "moonshot"),
    ("https://api.moonshot.ai/v1", "moonshot"),
    ("https://ark.cn-beijing.volces.com/api/v3", "volcengine"),
    ("https://api.openai.com/v1", None),
    ("http://127.0.0.1:11434/v1", None),
    ("https://my-eas.pai-eas.aliyuncs.com/v1", None),  # arbitrary servers on Alibaba Cloud
    ("https://notdeepseek.com/v1", None),
    ("https://api.siliconflow.cn/v1", None),
])
def test_thinking_vendor_from_host(base_url: str, vendor: str | None) -> None:
    assert thinking_vendor(base_url) == vendor


def test_thinking_params_per_mode() -> None:
    assert thinking_params("auto", "https://dashscope.aliyuncs.com/compatible-mode/v1") == {"enable_thinking": False}
    assert thinking_params("auto", "https://api.deepseek.com") == {"thinking": {"type": "disabled"}}
    assert thinking_params(True, "https://api.moonshot.cn/v1") == {"thinking": {"type": "disabled"}}
    assert thinking_params("auto", "https://api.openai.com/v1") == {}  # never unknown params to unknown hosts
    assert thinking_params(False, "https://api.deepseek.com") == {}
    generic = thinking_params(True, "http://127.0.0.1:8000/v1")
    assert generic["chat_template_kwargs"] == {"enable_thinking": False} and generic["enable_thinking"] is False


def test_request_params_carry_the_vendor_switch() -> None:
    llm = OpenAILLM(OpenAILLM.Settings(base_url="https://open.bigmodel.cn/api/paas/v4", api_key="k",
                                       model="glm-4.5-flash"), CTX)
    assert llm.request_params(ask("hi"))["thinking"] == {"type": "disabled"}


async def test_disable_thinking_true_and_extra_body_reach_the_server(fake: FakeOpenAIServer, make: Factory) -> None:
    llm = await make(OpenAILLM, disable_thinking=True, extra_body={"enable_thinking": True, "seed": 7},
                     max_tokens=20, max_tokens_param="max_completion_tokens")
    await collect(llm, ask("hi"))
    body = fake.last("/chat/completions").body
    assert body["thinking"] == {"type": "disabled"}
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["enable_thinking"] is True and body["seed"] == 7  # extra_body wins
    assert body["max_completion_tokens"] == 20 and "max_tokens" not in body


async def test_auto_thinking_sends_nothing_to_an_unknown_host(fake: FakeOpenAIServer, make: Factory) -> None:
    llm = await make(OpenAILLM)
    await collect(llm, ask("hi"))
    body = fake.last("/chat/completions").body
    assert not {"thinking", "enable_thinking", "chat_template_kwargs", "temperature", "top_p"} & set(body)


# --------------------------------------------------------------------------- LLM: pure parsing


def test_speech_filter_fed_one_character_at_a_time() -> None:
    answer = "<think>hidden</think>Hi <b>there</b>! <tool_call>{\"name\": \"x\", \"arguments\": {}}</tool_call>Done"
    f = SpeechFilter()
    spoken = "".join(f.feed(ch) for ch in answer) + f.flush()
    assert spoken == "Hi <b>there</b>! Done"
    assert [(c.name, c.arguments) for c in f.calls] == [("x", "{}")]


def test_json_gate_only_holds_what_looks_like_json() -> None:
    f = SpeechFilter(detect_json_calls=True)
    assert f.feed("  ") == "" and f.feed("[") == ""
    assert f.feed("laughs] Sure!") == "  [laughs] Sure!"  # released at once, not at the end
    f = SpeechFilter(detect_json_calls=True)
    assert f.feed('[ {"name": "a", "arguments": {}}]') == ""
    assert f.flush() == "" and f.calls[0].name == "a"


def test_unterminated_blocks_at_end_of_stream() -> None:
    f = SpeechFilter()
    assert f.feed("Okay <think>never closed") == "Okay "
    assert f.flush() == ""
    f = SpeechFilter()
    f.feed('<tool_call>{"name": "lights_on", "arguments": {"room": "kitchen"}')
    f.flush()
    assert f.calls[0].name == "lights_on" and f.calls[0].arguments == '{"room": "kitchen"}'


def test_accumulator_without_indices_and_with_repeated_names() -> None:
    acc = ToolCallAccumulator()
    acc.add(None, "id1", "get_weather", '{"ci')
    acc.add(None, None, None, 'ty": "Oslo"}')
    acc.add(None, "id2", "set_volume", "")
    acc.add(None, "id2", "set_volume", '{"level": 3}')
    acc.add(5, "id3", "no_args", None)
    calls = acc.complete()
    assert [(c.id, c.name, c.arguments) for c in calls] == [
        ("id1", "get_weather", '{"city": "Oslo"}'), ("id2", "set_volume", '{"level": 3}'), ("id3", "no_args", "{}")]


def test_text_tool_call_salvaged_when_json_is_broken() -> None:
    (call,) = parse_text_tool_calls('{"name": "set_volume", "arguments": {"level": 4,}}')
    assert call.name == "set_volume" and call.arguments == '{"level": 4,}'
    assert parse_text_tool_calls("no call here") == []


# --------------------------------------------------------------------------- ASR


async def test_asr_uploads_a_valid_wav_and_returns_text(fake: FakeOpenAIServer, make: Factory) -> None:
    from harness.devsim import synthesize_speech

    asr = await make(OpenAIASR, model="FunAudioLLM/SenseVoiceSmall", language="zh", prompt="小智")
    pcm = await synthesize_speech("hello world")
    fake.transcription_script.append(TranscriptionReply(text="<|zh|><|HAPPY|><|Speech|><|withitn|>你好世界。"))
    result = await asr.transcribe(pcm, 16000)
    assert (result.text, result.language, result.emotion) == ("你好世界。", "zh", "happy")
    rec = fake.last("/audio/transcriptions")
    assert rec.authorization == f"Bearer {KEY}"
    assert rec.body == {"model": "FunAudioLLM/SenseVoiceSmall", "language": "zh", "prompt": "小智"}
    assert rec.audio_filename.endswith(".wav")
    received, rate = read_wav(rec.audio)
    assert rate == 16000 and received == pcm  # the exact utterance, duration included


async def test_asr_default_text_and_tiny_clips(fake: FakeOpenAIServer, make: Factory) -> None:
    asr = await make(OpenAIASR)
    assert (await asr.transcribe(b"\x00\x10" * 8000)).text == "hello world"
    assert "language" not in fake.last("/audio/transcriptions").body
    assert (await asr.transcribe(b"\x00\x00" * 100)).text == ""  # 6 ms: not sent at all
    assert len(fake.requests) == 1


async def test_asr_errors(fake: FakeOpenAIServer, make: Factory) -> None:
    asr = await make(OpenAIASR, retries=1, timeout_s=0.5, **FAST)
    pcm = b"\x00\x10" * 8000
    fake.transcription_script += [TranscriptionReply(status=503), TranscriptionReply(text="after retry")]
    assert (await asr.transcribe(pcm)).text == "after retry"
    fake.transcription_script.append(TranscriptionReply(status=401))
    with pytest.raises(ProviderError) as err:
        await asr.transcribe(pcm)
    assert not err.value.retryable and "check api_key" in str(err.value)
    fake.transcription_script += [TranscriptionReply(hang=True), TranscriptionReply(hang=True)]
    with pytest.raises(ProviderError) as err:
        await asr.transcribe(pcm)
    assert err.value.retryable and "timeout_s" in str(err.value)


def test_parse_tags_plain_text() -> None:
    assert parse_tags(" plain text ") == ("plain text", None, None)


# --------------------------------------------------------------------------- TTS


def _rms(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float64)
    return float(np.sqrt(np.mean(samples ** 2))) if samples.size else 0.0


async def _speak(tts: OpenAITTS, text: str) -> tuple[bytes, list[int], set[int]]:
    chunks = [c async for c in tts.synthesize(text)]
    return b"".join(c.pcm for c in chunks), [len(c.pcm) for c in chunks], {c.sample_rate for c in chunks}


async def test_tts_pcm_is_real_chunked_speech(fake: FakeOpenAIServer, make: Factory) -> None:
    tts = await make(OpenAITTS, voice="nova", speed=1.25, model="gpt-4o-mini-tts")
    fake.speech_script.append(SpeechReply(chunk_delay_s=0.005))
    pcm, sizes, rates = await _speak(tts, "Hello from the fake speech server.")
    assert rates == {24000}
    assert len(sizes) > 3 and all(n % 2 == 0 for n in sizes)  # streamed, samples never split
    assert 1.0 < len(pcm) / 2 / 24000 < 6.0 and _rms(pcm) > 300  # about 2 s of audible speech
    body = fake.last("/audio/speech").body
    assert body == {"model": "gpt-4o-mini-tts", "voice": "nova", "input": "Hello from the fake speech server.",
                    "response_format": "pcm", "speed": 1.25}


@pytest.mark.parametrize("wav_size", ["exact", "zero", "ffff"])
async def test_tts_wav_stream_with_any_size_fields(fake: FakeOpenAIServer, make: Factory, wav_size: str) -> None:
    pcm_tts = await make(OpenAITTS)
    wav_tts = await make(OpenAITTS, response_format="wav")
    reference, _, _ = await _speak(pcm_tts, "Testing the wave format.")
    fake.speech_script.append(SpeechReply(wav_size=wav_size, chunk_bytes=1001))
    pcm, sizes, rates = await _speak(wav_tts, "Testing the wave format.")
    assert rates == {24000} and len(sizes) > 3
    assert pcm == reference  # the header was taken off, nothing else
    assert fake.last("/audio/speech").body["response_format"] == "wav"


async def test_tts_mp3_is_decoded_on_the_provider_thread(fake: FakeOpenAIServer, make: Factory,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from server.audio.mp3 import Mp3StreamDecoder

    threads: set[str] = set()
    feed = Mp3StreamDecoder.feed

    def recording_feed(self: Mp3StreamDecoder, data: bytes) -> bytes:
        threads.add(threading.current_thread().name)
        return feed(self, data)

    monkeypatch.setattr(Mp3StreamDecoder, "feed", recording_feed)
    pcm_tts = await make(OpenAITTS)
    mp3_tts = await make(OpenAITTS, response_format="mp3")
    reference, _, _ = await _speak(pcm_tts, "Testing the MP3 format.")
    fake.speech_script.append(SpeechReply(chunk_bytes=1001))
    pcm, sizes, rates = await _speak(mp3_tts, "Testing the MP3 format.")
    assert fake.last("/audio/speech").body["response_format"] == "mp3"
    assert rates == {24000} and len(sizes) > 3 and all(n % 2 == 0 for n in sizes)  # streamed, whole samples
    # The same speech: MP3 only adds encoder delay and padding (a few frames of 1152 samples).
    assert abs(len(pcm) - len(reference)) / 2 / 24000 < 0.2
    assert _rms(pcm) > 0.5 * _rms(reference)
    assert threads and all(name.startswith("tts-openai") for name in threads)  # never on the loop


def test_mp3_stream_rejects_a_body_that_is_not_mp3() -> None:
    stream = Mp3Stream()
    assert stream.feed(b"this is not audio at all " * 40) == b""
    with pytest.raises(ValueError, match="could not be decoded as MP3"):
        stream.finish()


async def test_tts_errors(fake: FakeOpenAIServer, make: Factory) -> None:
    tts = await make(OpenAITTS, retries=1, **FAST)
    fake.speech_script.append(SpeechReply(status=401))
    with pytest.raises(ProviderError) as err:
        await _speak(tts, "Hi.")
    assert not err.value.retryable and "check api_key" in str(err.value) and "tts.openai" in str(err.value)
    fake.speech_script += [SpeechReply(status=500), SpeechReply(status=500)]
    with pytest.raises(ProviderError) as err:
        await _speak(tts, "Hi.")
    assert err.value.retryable and "500" in str(err.value)
    fake.speech_script += [SpeechReply(status=503)]
    pcm, _, _ = await _speak(tts, "Hi.")  # retried once, then fine
    assert _rms(pcm) > 300
    fake.speech_script += [SpeechReply(content_type="application/json")]
    with pytest.raises(ProviderError, match="instead of audio"):
        await _speak(tts, "Hi.")  # never played as noise


async def test_tts_hang_times_out(fake: FakeOpenAIServer, make: Factory) -> None:
    tts = await make(OpenAITTS, timeout_s=0.3, retries=0)
    fake.speech_script.append(SpeechReply(hang=True))
    with pytest.raises(ProviderError) as err:
        await _speak(tts, "Hi.")
    assert err.value.retryable and "timed out" in str(err.value)


async def test_tts_dropped_mid_stream_raises_without_retry(fake: FakeOpenAIServer, make: Factory) -> None:
    tts = await make(OpenAITTS, retries=2, **FAST)
    fake.speech_script.append(SpeechReply(drop_after=2, chunk_bytes=2000))
    got = 0
    with pytest.raises(ProviderError) as err:
        async for chunk in tts.synthesize("This will break off."):
            got += len(chunk.pcm)
    assert got == 4000 and err.value.retryable
    assert len([r for r in fake.requests if r.path.endswith("/speech")]) == 1


async def test_tts_closed_early_closes_the_connection(fake: FakeOpenAIServer, make: Factory) -> None:
    tts = await make(OpenAITTS)
    fake.speech_script.append(SpeechReply(chunk_bytes=1000, chunk_delay_s=0.02))
    stream = tts.synthesize("A long sentence that the user interrupts right away.")
    await anext(stream)
    await stream.aclose()
    rec = fake.last("/audio/speech")
    await asyncio.wait_for(rec.done.wait(), 2)
    assert rec.client_disconnected and not rec.completed


def test_wav_stream_stereo_extra_chunks_byte_by_byte() -> None:
    import struct

    stereo = np.array([[100, 300], [-200, -400], [1000, 3000]], dtype=np.int16).tobytes()
    wav = (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE"
           + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 2, 16000, 64000, 4, 16)
           + b"LIST" + struct.pack("<I", 3) + b"abc\x00"  # odd-sized chunk, padded
           + b"data" + struct.pack("<I", len(stereo)) + stereo + b"trailing junk")
    parser = WavStream()
    mono = b"".join(parser.feed(wav[i:i + 1]) for i in range(len(wav)))
    parser.finish()
    assert parser.sample_rate == 16000
    assert np.frombuffer(mono, dtype=np.int16).tolist() == [200, -300, 2000]
    assert len(wav_header(10, 24000)) == 44


# --------------------------------------------------------------------------- the fake itself


async def test_fake_non_stream_completion_and_models(fake: FakeOpenAIServer) -> None:
    import openai

    client = openai.AsyncOpenAI(base_url=fake.base_url, api_key=KEY, max_retries=0)
    try:
        fake.chat_script.append(ChatReply(text="Plain answer.",
                                          tool_calls=[ToolCallSpec("get_weather", {"city": "Rome"})]))
        completion = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        message = completion.choices[0].message
        assert message.content == "Plain answer." and completion.choices[0].finish_reason == "tool_calls"
        assert message.tool_calls[0].function.name == "get_weather"
        models = await client.models.list()
        assert [m.id for m in models.data] == ["fake-model"]
    finally:
        await client.close()


async def test_sse_reader_splits_lines_itself() -> None:
    """Events cut anywhere across reads, CRLF, comments, multi-line data and a 200 KB line."""
    from server.providers.openai_common import sse_data

    big = "x" * 200_000
    wire = (b": keep-alive\r\n\r\ndata: {\"a\": 1}\r\n\r\nevent: message\ndata: line one\ndata: line two\n\n"
            b"data:" + big.encode() + b"\n\ndata: \xe4\xbd\xa0\xe5\xa5\xbd\n\ndata: [DONE]\n\n")

    class Body:
        def __init__(self, cut: int) -> None:
            self.cut = cut

        async def iter_any(self):  # noqa: ANN202 - aiohttp's StreamReader interface
            for i in range(0, len(wire), self.cut):
                yield wire[i:i + self.cut]

    for cut in (1, 2, 7, 4096, len(wire)):
        events = [e async for e in sse_data(Body(cut))]
        assert events == ['{"a": 1}', "line one\nline two", big, "你好", "[DONE]"], cut


def test_chunk_that_is_not_json_or_an_error_is_a_provider_error() -> None:
    from server.providers.llm.openai_llm import parse_chunk

    with pytest.raises(ProviderError, match="not JSON"):
        parse_chunk("{oops", "llm.openai", "http://x")
    with pytest.raises(ProviderError, match="overloaded"):
        parse_chunk('{"error": {"message": "overloaded"}}', "llm.openai", "http://x")
    assert parse_chunk('{"choices": []}', "llm.openai", "http://x") == {"choices": []}


def test_proxy_from_the_environment_looked_up_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The proxy aiohttp's trust_env would use, found once at load instead of per request."""
    from server.providers.openai_common import env_proxy

    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
                 "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert env_proxy("https://api.deepseek.com/v1") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://user:pw@10.0.0.2:7890")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,.lan")
    assert env_proxy("https://api.deepseek.com/v1") == "http://user:pw@10.0.0.2:7890"
    assert env_proxy("http://127.0.0.1:11434/v1") is None  # plain http has no proxy set, and NO_PROXY
    assert env_proxy("https://llm.lan/v1") is None


async def test_server_that_ignores_stream_answers_whole(fake: FakeOpenAIServer, make: Factory) -> None:
    """Some OpenAI-compatible servers answer one JSON completion whatever `stream` says: its text
    is spoken and its tool calls are made, as from a stream."""
    llm = await make(OpenAILLM, retries=0)
    fake.chat_script.append(ChatReply(text="A whole answer.", mode="whole"))
    text, calls, _ = await collect(llm, ask("hi"))
    assert text == "A whole answer." and calls == []
    fake.chat_script.append(ChatReply(mode="whole", tool_calls=[ToolCallSpec("get_weather", {"city": "Paris"})]))
    text, calls, _ = await collect(llm, ask("weather?", [WEATHER_TOOL]))
    assert text == "" and [c.name for c in calls] == ["get_weather"]
    assert json.loads(calls[0].arguments) == {"city": "Paris"}
