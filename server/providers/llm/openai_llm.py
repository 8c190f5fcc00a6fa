"""Any OpenAI-compatible chat endpoint (OpenAI, DeepSeek, Qwen/DashScope, GLM, Moonshot, Doubao,
Ollama, LM Studio, vLLM...), streamed over plain aiohttp (see `_attempt` for why not the SDK).

What it fixes compared with the reference server's provider (sync client on a thread, default
300 s timeout, think tags and text-printed tool calls read aloud):
- one connection pool shared by all sessions; this provider retries, and only before anything
  was yielded (a restarted answer would be heard twice);
- every call bounded: `timeout_s` for connect and for each read, `first_token_timeout_s` for the
  wait until the model produces anything at all;
- `<think>` blocks and `reasoning_content` never reach the speaker, also when a tag is split
  across stream chunks; thinking is switched off where the vendor has a switch;
- tool calls streamed in fragments are merged by index and yielded once, complete, at the end;
  tool calls printed as text (`<tool_call>{...}</tool_call>`, Doubao's `<|FunctionCallBegin|>`,
  a bare JSON object when tools were offered) become ToolCalls instead of speech;
- closing the generator (the user interrupted) closes the HTTP stream at once, so the vendor
  stops generating (and billing) too.

The parsing of what the model says (think blocks, tool calls, vendor thinking switches) is in
openai_text.py; the client, error mapping and retries shared with the OpenAI-compatible ASR and
TTS providers are in server/providers/openai_common.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import Field

from server.providers.base import LLMDelta, LLMRequest, ProviderSettings
from server.providers.llm.openai_text import SpeechFilter, ToolCallAccumulator, thinking_params, thinking_vendor
from server.providers.openai_common import (
    OpenAIClientProvider,
    OpenAIProviderError,
    error_body_message,
    network_error,
    retry_after_header,
    sse_data,
    status_error,
)
from server.providers.retry import exponential, stream_with_retries

log = logging.getLogger("server.providers")


class OpenAILLMSettings(ProviderSettings):
    type: str = "openai"
    # Including the version path: https://api.deepseek.com/v1, https://dashscope.aliyuncs.com/
    # compatible-mode/v1, https://open.bigmodel.cn/api/paas/v4, http://127.0.0.1:11434/v1 ...
    base_url: str = "https://api.openai.com/v1"
    api_key: str = ""  # empty for local servers that need none
    model: str = "gpt-4o-mini"
    # None: the vendor's default (some reasoning models reject anything else).
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=65536)
    # OpenAI's newest models only accept max_completion_tokens; most other servers max_tokens.
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    # Connect timeout, and the longest silence between two streamed chunks.
    timeout_s: float = Field(default=10.0, gt=0, le=600)
    # Give up (and maybe retry) when the model has produced nothing for this long.
    first_token_timeout_s: float = Field(default=8.0, gt=0, le=600)
    # Extra attempts on 429/5xx/connection errors/timeouts, only before any output was yielded.
    retries: int = Field(default=1, ge=0, le=5)
    retry_backoff_s: float = Field(default=0.5, ge=0, le=30)  # doubled per attempt, with jitter
    # auto: the vendor's switch when base_url's host is a known vendor, nothing otherwise;
    # true: always (unknown hosts get every common spelling); false: never.
    disable_thinking: Literal["auto"] | bool = "auto"
    # false for models/servers that reject `tools` (the responder then uses no tools).
    supports_tools: bool = True
    # Merged into the request body last (wins over disable_thinking's parameters).
    extra_body: dict[str, Any] = Field(default_factory=dict)
    extra_headers: dict[str, str] = Field(default_factory=dict)


class OpenAILLM(OpenAIClientProvider):
    kind = "llm"
    local = False
    Settings = OpenAILLMSettings
    settings: OpenAILLMSettings

    @property
    def supports_tools(self) -> bool:
        return self.settings.supports_tools

    async def load(self) -> None:
        await super().load()
        s = self.settings
        vendor = thinking_vendor(s.base_url)
        if not s.api_key and vendor is not None:
            log.warning("%s: no api_key for %s; requests will fail with 401", self.name, s.base_url)
        thinking = thinking_params(s.disable_thinking, s.base_url)
        log.info("%s: %s at %s%s", self.name, s.model, s.base_url,
                 f" (thinking off via {', '.join(thinking)})" if thinking else "")

    def request_params(self, request: LLMRequest) -> dict[str, Any]:
        """The JSON body of one `/chat/completions` request."""
        s = self.settings
        params: dict[str, Any] = {
            "model": s.model,
            "messages": [m.to_openai() for m in request.messages],
            "stream": True,
        }
        temperature = request.temperature if request.temperature is not None else s.temperature
        if temperature is not None:
            params["temperature"] = temperature
        max_tokens = request.max_tokens or s.max_tokens
        if max_tokens:
            params[s.max_tokens_param] = max_tokens
        if s.top_p is not None:
            params["top_p"] = s.top_p
        if request.tools and s.supports_tools:
            params["tools"] = request.tools
            params["tool_choice"] = "auto"
        # extra_body is merged last: it wins over disable_thinking's parameters.
        params.update(thinking_params(s.disable_thinking, s.base_url))
        params.update(s.extra_body)
        return params

    async def stream(self, request: LLMRequest) -> AsyncIterator[LLMDelta]:
        self._check_loaded()
        s = self.settings
        params = self.request_params(request)
        # aclosing: when the user interrupts, closing this generator closes the HTTP stream now.
        async with contextlib.aclosing(stream_with_retries(
                self.name, s.retries, exponential(s.retry_backoff_s), lambda: self._attempt(params))) as deltas:
            async for delta in deltas:
                yield delta

    async def _attempt(self, params: dict[str, Any]) -> AsyncIterator[LLMDelta]:
        """One HTTP call, streamed. Raises OpenAIProviderError.

        Plain aiohttp and our own reading of the event stream rather than the SDK: the SDK
        spent about 8 ms of event-loop CPU per request and builds a pydantic object per
        streamed token, which with many devices answering at once held the loop shared by
        every device long enough to break their audio pacing (see plain_session)."""
        import aiohttp

        s = self.settings
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.first_token_timeout_s
        speech = SpeechFilter(detect_json_calls="tools" in params)
        calls = ToolCallAccumulator()
        started = False  # the model produced something (text, reasoning or a tool call)
        spoken = False
        finish = None
        url = s.base_url.rstrip("/") + "/chat/completions"
        headers = self.plain_headers({"Accept": "text/event-stream", **s.extra_headers})
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=s.timeout_s, sock_read=s.timeout_s)
        response: Any = None
        events: Any = None
        try:
            # No yield happens inside a timeout block: the deadline only covers our own awaits.
            async with asyncio.timeout_at(deadline):
                response = await self.post(url, json=params, headers=headers, timeout=timeout)
                if response.status >= 400:
                    body = await response.content.read(4096)
                    raise status_error(self.name, response.status, error_body_message(body), s.base_url,
                                       retry_after_header(response.headers.get("retry-after")))
            content_type = response.headers.get("content-type", "").lower()
            if "json" in content_type and "event-stream" not in content_type:
                # A server that ignores `stream` answers one JSON completion: read as one chunk.
                body = (await response.read()).decode("utf-8", "replace")
                source = _one_chunk(parse_chunk(body, self.name, s.base_url))
            else:
                source = sse_data(response.content)
            events = aiter(source)
            while True:
                try:
                    if started:
                        data = await anext(events)
                    else:
                        async with asyncio.timeout_at(deadline):
                            data = await anext(events)
                except StopAsyncIteration:
                    break
                if data == "[DONE]":
                    break
                chunk = parse_chunk(data, self.name, s.base_url)
                choices = chunk.get("choices")
                if not choices or not isinstance(choices[0], dict):
                    continue  # a usage-only chunk
                choice = choices[0]
                finish = choice.get("finish_reason") or finish
                delta = choice.get("delta")
                if not isinstance(delta, dict):
                    continue
                # DeepSeek/Qwen/vLLM send thoughts as `reasoning_content` (or `reasoning`): it
                # proves the model is alive, and is never spoken.
                if delta.get("reasoning_content") or delta.get("reasoning"):
                    started = True
                for frag in delta.get("tool_calls") or ():
                    started = True
                    fn = frag.get("function") or {}
                    calls.add(frag.get("index"), frag.get("id"), fn.get("name"), fn.get("arguments"))
                content = delta.get("content")
                if content:
                    started = True
                    text = speech.feed(content)
                    if not spoken:
                        text = text.lstrip()
                    if text:
                        spoken = True
                        yield LLMDelta(text=text)
            text = speech.flush()
            if not spoken:
                text = text.lstrip()
            if text.strip():
                yield LLMDelta(text=text)
            tool_calls = calls.complete() + speech.calls
            if tool_calls:
                yield LLMDelta(tool_calls=tool_calls)
            if finish == "length":
                log.info("%s: answer cut at max_tokens", self.name)
        except TimeoutError:
            if started:
                raise OpenAIProviderError(self.name, f"timed out after {s.timeout_s:g} s (timeout_s) talking to "
                                                     f"{s.base_url}", retryable=True) from None
            raise OpenAIProviderError(
                self.name, f"no output from {s.base_url} within {s.first_token_timeout_s:g} s "
                           "(first_token_timeout_s)", retryable=True) from None
        except OpenAIProviderError:
            raise
        except aiohttp.ClientError as exc:
            raise network_error(self.name, s.base_url, exc) from exc
        finally:
            if events is not None:
                await events.aclose()
            if response is not None:
                # Closing an unfinished response drops the connection: the server stops generating.
                response.close()


def parse_chunk(data: str, name: str, base_url: str) -> dict[str, Any]:
    """One streamed chunk; an error event (`{"error": ...}`) or garbage is a ProviderError."""
    try:
        chunk = json.loads(data)
    except ValueError:
        raise OpenAIProviderError(name, f"{base_url} sent a chunk that is not JSON: {data[:120]!r}",
                                  retryable=True) from None
    if not isinstance(chunk, dict):
        raise OpenAIProviderError(name, f"{base_url} sent an unexpected chunk: {data[:120]!r}", retryable=True)
    error = chunk.get("error")
    if error:
        message = error.get("message") if isinstance(error, dict) else error
        raise OpenAIProviderError(name, f"{base_url} reported an error mid-stream: {message}", retryable=True)
    return chunk


async def _one_chunk(completion: dict[str, Any]) -> AsyncIterator[str]:
    """A whole (non-streamed) completion as the one streamed chunk it amounts to: the message
    becomes the delta, its tool calls numbered as stream fragments are."""
    choices = []
    for choice in completion.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        message = dict(choice.get("message") or {})
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            message["tool_calls"] = [{**call, "index": i} for i, call in enumerate(calls) if isinstance(call, dict)]
        choices.append({"index": choice.get("index", 0), "delta": message,
                        "finish_reason": choice.get("finish_reason")})
    yield json.dumps({"choices": choices})
