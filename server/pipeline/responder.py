"""Think: turn the dialogue into things to say, calling tools on the way.

`Responder.run()` yields, in order, what the turn should do: speakable sentences (released as
the LLM streams), audio to play (music from a tool), and whether to end the session. It never
touches the socket, so the tool loop is tested with a fake LLM and fake tools alone.

Intent modes:
- function_call: tools go into the one streaming LLM call; if the model calls some, they run
  (concurrently), their results go back to the model, and it streams on (up to max rounds).
- intent_llm: for models without tool calling, one short JSON classification call picks a
  tool first; its result is handed to the answering call as context.
- nointent: no tools.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from server.pipeline.splitter import SentenceSplitter
from server.providers.base import ChatMessage, LLMProvider, LLMRequest, ToolCall
from server.tools.base import ToolAction, ToolResult
from server.tools.results import EndSession  # also the item that ends the session after the reply
from server.tools.toolbox import Toolbox, ToolRun

log = logging.getLogger("server.responder")

# Tool calls that must finish even if the user interrupts (cancel_on_interruption=False) keep
# running here, referenced so they are not garbage-collected mid-flight.
_DETACHED: set[asyncio.Task[Any]] = set()


@dataclass(slots=True)
class Sentence:
    text: str
    raw: str = ""  # everything the model wrote so far (for the emotion emoji)


@dataclass(slots=True)
class Audio:
    chunks: AsyncIterator[bytes]
    sample_rate: int


Item = Sentence | Audio | EndSession

INTENT_PROMPT = {
    "en": ("Decide whether the user's last message needs one of these functions.\n{tools}\n"
           'Reply with JSON only: {{"function_call": {{"name": "<function>", "arguments": {{...}}}}}} '
           'or {{"function_call": null}} when no function is needed.'),
    "zh": ("判断用户的最后一句话是否需要调用下面的某个函数。\n{tools}\n"
           '只回复JSON：{{"function_call": {{"name": "<函数名>", "arguments": {{...}}}}}}，'
           '不需要函数时回复 {{"function_call": null}}。'),
}


@dataclass
class ResponderStats:
    llm_first_token: float | None = None
    tool_rounds: int = 0
    tool_seconds: float = 0.0
    tool_calls: int = 0
    text_chunks: int = 0  # streamed text pieces (one per token for OpenAI-style streams)


class Responder:
    def __init__(self, llm: LLMProvider, toolbox: Toolbox | None, *, mode: str = "function_call", max_rounds: int = 3,
                 language: str = "en", on_first_token: Callable[[], None] | None = None) -> None:
        self.llm = llm
        self.toolbox = toolbox
        self.mode = mode
        self.max_rounds = max_rounds
        self.language = language
        self.on_first_token = on_first_token
        self.stats = ResponderStats()
        # Awaited before any tool runs: a speculative reply holds its tool calls (which may have
        # side effects) until the end of the user's turn is confirmed.
        self.hold_tools: Callable[[], Awaitable[None]] | None = None

    def _tools(self) -> list[dict[str, Any]]:
        if self.toolbox is None or self.mode == "nointent":
            return []
        return self.toolbox.openai_tools()

    async def run(self, messages: list[ChatMessage]) -> AsyncIterator[Item]:
        tools = self._tools()
        if tools and self.mode == "intent_llm":
            async for item in self._intent_llm(messages):
                yield item
            return
        if not self.llm.supports_tools:
            tools = []
        for round_no in range(self.max_rounds + 1):
            # The last round offers no tools, so a model stuck calling tools must answer.
            offer = tools if round_no < self.max_rounds else []
            calls: list[ToolCall] = []
            text = ""
            async for item in self._stream(messages, offer, calls):
                text = item.raw
                yield item
            if not calls:
                return
            self.stats.tool_rounds += 1
            messages.append(ChatMessage("assistant", text, tool_calls=[
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in calls]))
            direct = False
            for run in await self._run_tools(calls):
                async for item in self._apply(run, messages):
                    direct = True
                    yield item
            if direct:
                return

    async def _stream(self, messages: list[ChatMessage], tools: list[dict[str, Any]],
                      calls: list[ToolCall]) -> AsyncIterator[Sentence]:
        splitter = SentenceSplitter()
        raw = ""
        async for delta in self.llm.stream(LLMRequest(messages=list(messages), tools=tools)):
            if delta.text:
                self.stats.text_chunks += 1
                if self.stats.llm_first_token is None:
                    self.stats.llm_first_token = time.monotonic()
                    if self.on_first_token:
                        self.on_first_token()
                raw += delta.text
                for sentence in splitter.feed(delta.text):
                    yield Sentence(sentence, raw)
            calls.extend(delta.tool_calls)
        for sentence in splitter.flush():
            yield Sentence(sentence, raw)

    async def _run_tools(self, calls: list[ToolCall]) -> list[ToolRun]:
        assert self.toolbox is not None
        if self.hold_tools is not None:
            await self.hold_tools()
        t0 = time.monotonic()
        tasks = []
        for call in calls:
            task = asyncio.ensure_future(self.toolbox.run(call))
            if not self.toolbox.cancel_on_interruption(call.name):
                _DETACHED.add(task)
                task.add_done_callback(_DETACHED.discard)
                task = asyncio.shield(task)
            tasks.append(task)
        runs = list(await asyncio.gather(*tasks))
        self.stats.tool_calls += len(runs)
        self.stats.tool_seconds += time.monotonic() - t0
        return runs

    async def _apply(self, run: ToolRun, messages: list[ChatMessage]) -> AsyncIterator[Item]:
        """Feed a tool result back to the model, or act on it directly."""
        r: ToolResult = run.result
        if r.action is ToolAction.REPLY_LLM:
            messages.append(ChatMessage("tool", r.text or "(no result)", tool_call_id=run.call.id, name=run.call.name))
            return
        messages.append(ChatMessage("tool", f"[{r.action.value}] {r.text}".strip(), tool_call_id=run.call.id,
                                    name=run.call.name))
        splitter = SentenceSplitter()
        for sentence in splitter.feed(r.text) + splitter.flush():
            yield Sentence(sentence, r.text)
        if r.action is ToolAction.PLAY_AUDIO and r.audio is not None:
            yield Audio(r.audio, r.audio_rate)
        elif r.action is ToolAction.END_SESSION:
            yield EndSession()
        elif not r.text:
            yield Sentence("", "")  # marks "handled directly" even with nothing to say

    async def _intent_llm(self, messages: list[ChatMessage]) -> AsyncIterator[Item]:
        assert self.toolbox is not None
        listing = "\n".join(f"- {name}: {desc}" for name, desc in self.toolbox.describe())
        prompt = INTENT_PROMPT.get(self.language, INTENT_PROMPT["en"]).format(tools=listing)
        recent = [m for m in messages if m.role in ("user", "assistant")][-5:]
        request = LLMRequest(messages=[ChatMessage("system", prompt), *recent], max_tokens=200, temperature=0.0)
        raw = "".join([d.text async for d in self.llm.stream(request)])
        call = parse_intent(raw)
        if call is not None:
            self.stats.tool_rounds += 1
            (run,) = await self._run_tools([call])
            if run.result.action is not ToolAction.REPLY_LLM:
                async for item in self._apply(run, []):
                    yield item
                return
            messages.append(ChatMessage("system", f"Result of {call.name}: {run.result.text}\n"
                                                  "Use it to answer the user."))
        async for item in self._stream(messages, [], []):
            yield item


_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def parse_intent(raw: str) -> ToolCall | None:
    """The classifier's answer -> a tool call, or None (no tool, or unreadable answer)."""
    match = _JSON_OBJECT.search(raw)
    if not match:
        return None
    try:
        data = json.loads(match.group(0))
    except ValueError:
        return None
    fc = data.get("function_call") if isinstance(data, dict) else None
    if not isinstance(fc, dict) or not isinstance(fc.get("name"), str) or not fc["name"]:
        return None
    args = fc.get("arguments") or {}
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            args = {}
    return ToolCall(id="intent-1", name=fc["name"], arguments=json.dumps(args if isinstance(args, dict) else {}))
