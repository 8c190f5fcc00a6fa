"""Prompt budget: tool lists, history and the system prompt fit the model's context window in
every intent mode; a cut is logged once per session; a turn never fails for lack of room.

The regression is py-xiaozhi's: a device announcing 19 MCP tools with `intent.mode: intent_llm`
on the embedded llama.cpp model (n_ctx 2048) failed every turn with "Requested tokens (2940)
exceed context window of 2048". The last test runs exactly that on the real model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from server.pipeline.prompt_budget import (
    PromptBudget,
    context_window_of,
    estimate_tokens,
    message_tokens,
    tool_tokens,
)
from server.pipeline.responder import Responder, Sentence
from server.providers.base import ChatMessage, ProviderContext
from server.tools.base import ToolContext, ToolResult, ToolSpec
from server.tools.toolbox import Toolbox

ROOT = Path(__file__).resolve().parents[1]

# Descriptions the length py-xiaozhi's are (its tools explain when and how to use them at length).
LONG = ("Use this tool when the user asks about it. It reads or changes the state of the computer the client runs "
        "on. Arguments are validated; on error the tool returns a message explaining what went wrong. " * 3)


def py_xiaozhi_like_specs(count: int = 19) -> list[ToolSpec]:
    return [ToolSpec(f"self.pc.tool_{i:02d}", f"Tool number {i}. {LONG}",
                     {"type": "object", "properties": {
                         "value": {"type": "integer", "description": "The value to use, between 0 and 100. " * 3},
                         "target": {"type": "string", "description": "Which thing to act on, by its name. " * 3}},
                      "required": ["value"]})
            for i in range(count)]


class Device:
    name = "device"

    def __init__(self, specs: list[ToolSpec]) -> None:
        self._specs = specs
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def specs(self) -> list[ToolSpec]:
        return self._specs

    async def call(self, ctx: ToolContext, name: str, arguments: dict[str, Any]) -> ToolResult:
        self.calls.append((name, arguments))
        return ToolResult.reply(f"{name} done")


def long_history(pairs: int = 8) -> list[ChatMessage]:
    out = [ChatMessage("system", "You are Xiaozhi, a friendly voice assistant. " * 5),
           ChatMessage("system", "It is Tuesday, December 1, 2026, 15:40. What you remember: likes jazz. " * 3)]
    for i in range(pairs):
        out += [ChatMessage("user", f"Question number {i}: tell me something about the number {i}, please. " * 2),
                ChatMessage("assistant", f"The number {i} is a fine number with many properties worth knowing. " * 2)]
    return [*out, ChatMessage("user", "And what is the capital of France?")]


def tokens(fitted_messages: list[ChatMessage], tools: list[dict[str, Any]]) -> int:
    return sum(message_tokens(m) for m in fitted_messages) + sum(tool_tokens(t) for t in tools)


def test_estimate_is_high_for_json_and_cjk() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcdef") == 2
    assert estimate_tokens("你好世界") >= 5


def test_everything_fits_when_it_already_does() -> None:
    budget = PromptBudget(context_window=32768, reply_tokens=256)
    messages = long_history(2)
    tools = [s.openai_schema() for s in py_xiaozhi_like_specs(3)]
    fitted = budget.fit(messages, tools)
    assert fitted.messages == messages and fitted.tools == tools and fitted.cuts == []
    assert not budget.warned


def test_unknown_window_is_not_budgeted() -> None:
    class Cloud:
        supports_tools = True

    budget = PromptBudget.for_llm(Cloud())
    assert budget.limit is None
    messages = long_history(8)
    assert budget.fit(messages, []).messages == messages


def test_19_tools_and_long_history_fit_2048(caplog: pytest.LogCaptureFixture) -> None:
    budget = PromptBudget(context_window=2048, reply_tokens=96, tag="dev")
    messages = long_history(8)
    tools = [s.openai_schema(s.name.replace(".", "_")) for s in py_xiaozhi_like_specs(19)]
    assert tokens(messages, tools) > 2048  # the overflow of the bug report
    with caplog.at_level(logging.DEBUG, logger="server.prompt_budget"):
        for _ in range(3):  # three turns of one session
            fitted = budget.fit(messages, tools)
    assert fitted.estimated_tokens <= budget.limit
    assert tokens(fitted.messages, fitted.tools) <= budget.limit
    # What must survive: the persona, the new question, some tools (shortened, still valid schemas).
    assert fitted.messages[0].content == messages[0].content
    assert fitted.messages[-1].content == "And what is the capital of France?"
    assert 0 < len(fitted.tools) <= 19
    first = fitted.tools[0]["function"]
    assert first["name"] == "self_pc_tool_00" and len(first["description"]) <= 80
    params = first["parameters"]
    assert params["required"] == ["value"] and "description" not in params["properties"]["value"]
    # History is dropped oldest first, whole exchanges only.
    roles = [m.role for m in fitted.messages]
    assert roles[:2] == ["system", "system"] and roles[-1] == "user"
    body = roles[2:-1]
    assert body == ["user", "assistant"] * (len(body) // 2)
    # Inputs untouched; one warning for the session, the rest at debug level.
    assert len(tools[0]["function"]["description"]) > 80 and len(messages) == 19
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "context window" in warnings[0].getMessage()


def test_a_huge_persona_and_question_still_fit() -> None:
    budget = PromptBudget(context_window=512, reply_tokens=96)
    messages = [ChatMessage("system", "persona " * 2000), ChatMessage("system", "context " * 500),
                ChatMessage("user", "question " * 1000)]
    fitted = budget.fit(messages, [])
    assert tokens(fitted.messages, []) <= budget.limit
    assert [m.role for m in fitted.messages] == ["system", "system", "user"]
    assert fitted.messages[-1].content.startswith("question")


def test_tool_round_messages_of_this_turn_are_kept() -> None:
    budget = PromptBudget(context_window=1024, reply_tokens=96)
    messages = [*long_history(8),
                ChatMessage("assistant", "", tool_calls=[{"id": "1", "type": "function",
                                                          "function": {"name": "t", "arguments": "{}"}}]),
                ChatMessage("tool", "t done", tool_call_id="1", name="t")]
    fitted = budget.fit(messages, [])
    assert [m.role for m in fitted.messages[-3:]] == ["user", "assistant", "tool"]


def test_fit_lines_for_intent_listing() -> None:
    budget = PromptBudget(context_window=2048, reply_tokens=96)
    lines = [f"- self_pc_tool_{i:02d}: {LONG}" for i in range(19)]
    out = budget.fit_lines(lines, 300)
    assert 0 < len(out) < 19 and sum(estimate_tokens(x) + 1 for x in out) <= 300
    assert out[0].startswith("- self_pc_tool_00:")


# ------------------------------------------------------------------ the real model, every mode

@pytest.fixture(scope="module")
async def gemma() -> Any:
    from server.providers.registry import build_provider, settings_model

    # A 512-token window (the bug report had 2048) overflows the same way with less prompt to
    # evaluate, which keeps this test quick on a loaded 2-core machine.
    settings = settings_model("llm", "llama_cpp").model_validate({"type": "llama_cpp", "n_ctx": 512,
                                                                  "max_tokens": 16, "temperature": 0.0})
    provider = build_provider("llm", settings, ProviderContext(ROOT, ROOT / "models", ROOT / "data"))
    await provider.load()
    yield provider
    await provider.close()


@pytest.mark.parametrize("mode", ["intent_llm", "function_call", "nointent"])
async def test_19_device_tools_on_the_embedded_model_never_fail_a_turn(gemma: Any, mode: str,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    assert context_window_of(gemma) == 512
    device = Device(py_xiaozhi_like_specs(19))
    box = Toolbox(lambda: ToolContext(device_id="d", user_id="u", session_id="s", language="en"))
    box.add(device)
    budget = PromptBudget.for_llm(gemma, tag="pyx")
    messages = long_history(2)
    listing = sum(estimate_tokens(f"- {n}: {d}") for n, d in box.describe())
    assert listing + tokens(messages, []) > 512  # unbudgeted, this request could not run
    with caplog.at_level(logging.WARNING):
        responder = Responder(gemma, box, mode=mode, language="en", budget=budget)
        items = [i async for i in responder.run(messages)]
    said = " ".join(i.text for i in items if isinstance(i, Sentence))
    assert said.strip(), f"{mode}: nothing said"
    assert "exceed context window" not in caplog.text and "generation failed" not in caplog.text
    if mode == "intent_llm":  # the others offer this model no tools: nothing to cut here
        assert budget.warned and caplog.text.count("context window") == 1  # cut, and said so once
