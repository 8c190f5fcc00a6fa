"""LLM: time to first token, time to first speakable clause, tokens per second, success rate.

Requests are built the way a session builds them (Session.build_messages + Responder): the
configured persona through `system_prompt`, the context from `build_context` (time, and what the
device can do), `Dialogue().messages` with the history token budget, and the tool list offered
in function_call mode to providers that support tools. The tools are those a firmware device
announces over MCP (harness.devsim's default tools); process-wide plugin tools are not included.
The first clause is found by the server's own SentenceSplitter, because that, not the first
token, is when TTS can start.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from bench.components import ComponentOptions, ComponentReport, timed_item
from bench.console import Console
from bench.stats import summarize
from bench.testset import LLM_PROMPTS
from server.config.schema import AppConfig
from server.pipeline.dialogue import Dialogue, build_context, system_prompt
from server.pipeline.splitter import SentenceSplitter
from server.providers.base import LLMRequest
from server.tools.base import ToolSpec


def device_tools() -> list[ToolSpec]:
    """The MCP tools a current firmware announces, as the session's toolbox would list them."""
    from harness.devsim import DeviceStatus, default_tools

    specs = []
    for tool in default_tools(DeviceStatus()):
        schema = json.loads(tool.to_json())
        specs.append(ToolSpec(schema["name"], schema["description"], schema["inputSchema"]))
    return specs


def offered_tools(provider: Any, config: AppConfig) -> list[dict[str, Any]]:
    """What Responder puts in the request: nothing in nointent/intent_llm mode or for a provider
    without tool calling (the embedded llama.cpp model), else every tool's OpenAI schema."""
    if config.intent.mode != "function_call" or not getattr(provider, "supports_tools", False):
        return []
    return [spec.openai_schema() for spec in device_tools()]


def build_request(config: AppConfig, prompt: str, tools: list[dict[str, Any]] | None = None,
                  max_tokens: int | None = None) -> LLMRequest:
    a = config.assistant
    capabilities = [spec.description.split(".")[0] for spec in device_tools()]
    messages = Dialogue(max_turns=a.max_history_turns).messages(
        system_prompt(a.prompt, a.name, a.language), prompt,
        context=build_context(a.language, capabilities=capabilities), token_budget=a.history_token_budget)
    return LLMRequest(messages=messages, tools=list(tools or []), max_tokens=max_tokens)


async def _ask(provider: Any, config: AppConfig, prompt: str, item: dict[str, Any], timeout_s: float,
               tools: list[dict[str, Any]]) -> None:
    request = build_request(config, prompt, tools)
    splitter = SentenceSplitter()
    pieces: list[str] = []
    reply = ""
    chunks = 0
    t0 = time.perf_counter()
    first_token = first_clause = last_token = None
    try:
        async with asyncio.timeout(timeout_s):
            async for delta in provider.stream(request):
                if delta.tool_calls:
                    item["tool_calls"] = item.get("tool_calls", 0) + len(delta.tool_calls)
                if not delta.text:
                    continue
                now = time.perf_counter()
                chunks += 1
                reply += delta.text
                first_token = first_token or now
                last_token = now
                pieces += splitter.feed(delta.text)
                if pieces and first_clause is None:
                    first_clause = now
    except TimeoutError:
        item["error"] = f"timed out after {timeout_s:g} s"
    end = time.perf_counter()
    pieces += splitter.flush()
    if pieces and first_clause is None:
        first_clause = end  # the whole reply was one clause: speakable when the stream ended
    ms = 1000.0
    item.update(
        reply=reply.strip(), chunks=chunks, chars=len(reply.strip()), clauses=len(pieces),
        ttft_ms=round((first_token - t0) * ms, 1) if first_token else None,
        first_clause_ms=round((first_clause - t0) * ms, 1) if first_clause else None,
        total_ms=round((end - t0) * ms, 1),
        # Decode speed after the first token, so it does not include prompt evaluation.
        tokens_per_s=round((chunks - 1) / (last_token - first_token), 1)
        if first_token and last_token and chunks > 1 and last_token > first_token else None,
        chars_per_s=round(len(reply) / (last_token - first_token), 1)
        if first_token and last_token and last_token > first_token else None,
    )
    if "error" not in item and not pieces and not item.get("tool_calls"):
        item["error"] = "nothing speakable in the reply"
    item["ok"] = "error" not in item


async def measure_llm(provider: Any, config: AppConfig, options: ComponentOptions, console: Console,
                      report: ComponentReport) -> None:
    language = config.assistant.language
    prompts = LLM_PROMPTS.get(language, LLM_PROMPTS["en"])
    prompts = prompts[: options.llm_prompts] if options.llm_prompts else prompts

    # The server warms up with a one-token request at startup; do the same, and time it.
    t0 = time.perf_counter()
    async with asyncio.timeout(max(options.llm_timeout_s, 60)):
        async for _ in provider.stream(build_request(config, "Hi", max_tokens=1)):
            pass
    report.warmup_s = round(time.perf_counter() - t0, 2)

    tools = offered_tools(provider, config)
    progress = console.progress(len(prompts), "llm")
    for prompt in prompts:
        item: dict[str, Any] = {"prompt": prompt}
        await timed_item(report, item, _ask(provider, config, prompt, item, options.llm_timeout_s, tools))
        item.setdefault("ok", False)
        detail = (f"ttft {item['ttft_ms']:.0f} ms, clause {item['first_clause_ms']:.0f} ms"
                  if item.get("ok") else f"failed: {item.get('error')}")
        progress.advance(detail=detail)
    progress.close()

    ok = [i for i in report.items if i.get("ok")]
    report.summary = {
        "prompts": len(report.items),
        "success_rate": round(len(ok) / len(report.items), 3) if report.items else None,
        "ttft_ms": summarize(i["ttft_ms"] for i in ok),
        "first_clause_ms": summarize(i["first_clause_ms"] for i in ok),
        "total_ms": summarize(i["total_ms"] for i in ok),
        "tokens_per_s": summarize(i.get("tokens_per_s") for i in ok),
        "chars_per_s": summarize(i.get("chars_per_s") for i in ok),
        "tools_offered": len(tools),
        "tool_calls": sum(i.get("tool_calls", 0) for i in report.items),
    }
    report.notes.append("tokens_per_s counts streamed chunks after the first (one per token for llama.cpp and "
                        "OpenAI-style streams; a stop-sequence look-ahead can merge a few)")
    if not tools:
        why = (f"intent.mode is {config.intent.mode}" if config.intent.mode != "function_call"
               else "the provider does not support tool calling")
        report.notes.append(f"requests carry no tools ({why}), as in the server")
    else:
        report.notes.append(f"{len(tools)} device tools offered; a reply that calls a tool is timed up to the "
                            "call (tool rounds are measured end to end)")
    if config.intent.mode == "intent_llm":
        report.notes.append("intent.mode is intent_llm: the server makes an extra classification call before "
                            "this one when tools exist; only the answering call is timed here")
