"""Make every LLM request fit the model's context window.

A device may announce many MCP tools (py-xiaozhi: 19), the history grows, the persona can be
long; on a small local model (n_ctx 2048) the sum overflowed and llama.cpp failed every turn
("Requested tokens (2940) exceed context window of 2048"). Here each request is cut to fit
before it is sent, in this order, each step only when still needed:

1. tool descriptions shortened to their first sentence, parameter descriptions dropped;
2. tools dropped from the end of the list (plugins come first and devices list their core tools
   first, so the last ones are the least useful);
3. the oldest history exchanges dropped;
4. the changing context (time, memory summary) and finally the persona cut short.

The user's new message and room for the reply are always kept. A cut is logged as a warning
once per session (then at debug level); a turn never fails for lack of room.

Token counts are estimates (no tokenizer needed, and they must not run on the event loop):
deliberately high, because an underestimate fails the turn while an overestimate only drops a
little history. Models whose window is unknown (cloud APIs) are not budgeted.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from server.providers.base import ChatMessage

log = logging.getLogger("server.prompt_budget")

# Per-message overhead of chat templates (role markers, separators) and a flat allowance for what
# a provider adds around the messages (few-shot examples of the completion prompt, BOS, ...).
MESSAGE_OVERHEAD = 8
PROMPT_OVERHEAD = 160
# Shortened tool and parameter descriptions stay within this many characters.
SHORT_DESCRIPTION = 80
# Tools may take at most this share of the room left after the system prompt and the new message,
# so that some history always survives a device that announces a huge tool list.
TOOLS_SHARE = 0.6
_CJK = re.compile(r"[\u3000-\u30ff\u3400-\u9fff\uf900-\ufaff\uff00-\uffef]")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？；;])\s|(?<=[。！？；])")


def estimate_tokens(text: str) -> int:
    """A high estimate: CJK characters ~1.3 tokens each, other text ~3 characters per token
    (JSON schemas and ids tokenise worse than prose)."""
    if not text:
        return 0
    cjk = len(_CJK.findall(text))
    return (cjk * 13 + 9) // 10 + (len(text) - cjk + 2) // 3


def message_tokens(message: ChatMessage) -> int:
    n = estimate_tokens(message.content) + MESSAGE_OVERHEAD
    if message.tool_calls:
        n += estimate_tokens(json.dumps(message.tool_calls, ensure_ascii=False))
    return n


def tool_tokens(tool: dict[str, Any]) -> int:
    return estimate_tokens(json.dumps(tool, ensure_ascii=False, separators=(",", ":"))) + MESSAGE_OVERHEAD


def context_window_of(llm: Any) -> int | None:
    """The smallest context window in a provider (or fallback chain), None when unknown."""
    providers = getattr(llm, "providers", None)
    members = providers if isinstance(providers, list) else [llm]
    windows: list[int] = []
    for provider in members:
        window = getattr(provider, "context_window", None)
        if window is None:
            settings = getattr(provider, "settings", None)
            window = getattr(settings, "n_ctx", None)
        if isinstance(window, int) and window > 0:
            windows.append(window)
    return min(windows) if windows else None


def reply_reserve_of(llm: Any, default: int = 256) -> int:
    providers = getattr(llm, "providers", None)
    members = providers if isinstance(providers, list) else [llm]
    reserves = [getattr(getattr(p, "settings", None), "max_tokens", None) for p in members]
    known = [r for r in reserves if isinstance(r, int) and r > 0]
    return max(known) if known else default


def shorten(text: str, limit: int = SHORT_DESCRIPTION) -> str:
    """First sentence, at most `limit` characters."""
    text = " ".join(text.split())
    first = _SENTENCE_END.split(text, maxsplit=1)[0]
    return first if len(first) <= limit else first[: limit - 1].rstrip() + "…"


def shorten_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """The same tool with a short description and no parameter descriptions (names and types
    stay, so calls remain valid)."""
    out = copy.deepcopy(tool)
    fn = out.get("function", out)
    if isinstance(fn.get("description"), str):
        fn["description"] = shorten(fn["description"])
    params = fn.get("parameters")
    if isinstance(params, dict):
        for prop in (params.get("properties") or {}).values():
            if isinstance(prop, dict):
                prop.pop("description", None)
                prop.pop("examples", None)
    return out


@dataclass(slots=True)
class Fitted:
    messages: list[ChatMessage]
    tools: list[dict[str, Any]]
    cuts: list[str] = field(default_factory=list)  # what was cut, for the log
    estimated_tokens: int = 0


@dataclass
class PromptBudget:
    """One per session: the window, the room kept for the reply, and whether we warned yet."""

    context_window: int | None
    reply_tokens: int = 256
    tag: str = ""
    warned: bool = False

    @classmethod
    def for_llm(cls, llm: Any, tag: str = "") -> PromptBudget:
        return cls(context_window_of(llm), reply_reserve_of(llm), tag)

    @property
    def limit(self) -> int | None:
        """Tokens the prompt (messages + tools) may use, or None when unbounded."""
        return self.limit_for(self.reply_tokens)

    def limit_for(self, reply_tokens: int | None) -> int | None:
        if self.context_window is None:
            return None
        reply = self.reply_tokens if reply_tokens is None else reply_tokens
        return max(64, self.context_window - reply - PROMPT_OVERHEAD)

    def fit(self, messages: list[ChatMessage], tools: list[dict[str, Any]] | None = None,
            reply_tokens: int | None = None) -> Fitted:
        """`messages` (system..., history..., new user message) and `tools`, cut to the budget
        (leaving `reply_tokens` for the answer; default: the model's max_tokens). The inputs are
        not modified."""
        tools = list(tools or [])
        limit = self.limit_for(reply_tokens)
        if limit is None:
            return Fitted(list(messages), tools)
        cuts: list[str] = []
        head, history, last = _split(messages)
        fixed = sum(message_tokens(m) for m in [*head, *last])
        tool_cost = sum(tool_tokens(t) for t in tools)
        history_cost = sum(message_tokens(m) for m in history)
        if fixed + tool_cost + history_cost <= limit:
            return Fitted(list(messages), tools, [], fixed + tool_cost + history_cost)

        # 1-2. Tools: within their share of the room (or of what history leaves over).
        room = max(0, limit - fixed)
        tool_room = max(int(room * TOOLS_SHARE), room - history_cost)
        if tool_cost > tool_room:
            tools = [shorten_tool(t) for t in tools]
            cuts.append("tool descriptions shortened")
            tool_cost = sum(tool_tokens(t) for t in tools)
        dropped = 0
        while tools and tool_cost > tool_room:
            tool_cost -= tool_tokens(tools.pop())
            dropped += 1
        if dropped:
            cuts.append(f"{dropped} tool(s) left out")

        # 3. History, oldest first, keeping user/assistant pairs together.
        left = max(0, limit - fixed - tool_cost)
        kept: list[ChatMessage] = []
        used = 0
        for group in reversed(_exchanges(history)):
            cost = sum(message_tokens(m) for m in group)
            if used + cost > left:
                break
            kept[:0] = group
            used += cost
        if len(kept) < len(history):
            cuts.append(f"{len(_exchanges(history)) - len(_exchanges(kept))} old exchange(s) left out")
        history = kept

        # 4. Still too long: the system messages themselves (context first, then the persona).
        over = fixed + tool_cost + used - limit
        if over > 0:
            head = _cut_system(head, over)
            cuts.append("system prompt shortened")
        # The new user message is kept, but a pasted novel is cut to what fits.
        fixed = sum(message_tokens(m) for m in [*head, *last])
        if fixed + tool_cost + used > limit and last:
            spare = limit - (fixed - message_tokens(last[-1])) - tool_cost - used
            last = [*last[:-1], _cut_message(last[-1], max(16, spare - MESSAGE_OVERHEAD))]
            cuts.append("user message shortened")
        out = [*head, *history, *last]
        total = sum(message_tokens(m) for m in out) + tool_cost
        self._report(cuts, total)
        return Fitted(out, tools, cuts, total)

    def fit_lines(self, lines: list[str], room: int) -> list[str]:
        """A listing (one tool per line, for prompts of models without tool calling) cut to
        `room` tokens: lines shortened first, then dropped from the end."""
        if sum(estimate_tokens(line) + 1 for line in lines) <= room:
            return lines
        short = [shorten(line, SHORT_DESCRIPTION + 40) for line in lines]
        out: list[str] = []
        used = 0
        for line in short:
            cost = estimate_tokens(line) + 1
            if used + cost > room:
                break
            out.append(line)
            used += cost
        self._report([f"tool list shortened, {len(lines) - len(out)} tool(s) left out"], used)
        return out

    def _report(self, cuts: list[str], total: int) -> None:
        if not cuts:
            return
        text = "prompt cut to fit the model's context window (%d tokens, ~%d used): %s"
        if not self.warned:
            self.warned = True
            log.warning("[%s] " + text + " (logged once per session)", self.tag, self.context_window, total,
                        "; ".join(cuts))
        else:
            log.debug("[%s] " + text, self.tag, self.context_window, total, "; ".join(cuts))


def _split(messages: list[ChatMessage]) -> tuple[list[ChatMessage], list[ChatMessage], list[ChatMessage]]:
    """(leading system messages, history, the tail that must stay: the last user message and
    anything after it, e.g. tool calls and results of this turn)."""
    head_end = 0
    while head_end < len(messages) and messages[head_end].role == "system":
        head_end += 1
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=len(messages))
    last_user = max(last_user, head_end)
    return messages[:head_end], messages[head_end:last_user], messages[last_user:]


def _exchanges(history: list[ChatMessage]) -> list[list[ChatMessage]]:
    """History grouped so each group starts at a user message (a pair and its tool messages)."""
    groups: list[list[ChatMessage]] = []
    for m in history:
        if m.role == "user" or not groups:
            groups.append([m])
        else:
            groups[-1].append(m)
    return groups


def _cut_message(message: ChatMessage, tokens: int) -> ChatMessage:
    text = message.content
    if estimate_tokens(text) <= tokens:
        return message
    lo, hi = 0, len(text)
    while lo < hi:  # longest prefix within `tokens`
        mid = (lo + hi + 1) // 2
        if estimate_tokens(text[:mid] + "…") <= tokens:
            lo = mid
        else:
            hi = mid - 1
    return ChatMessage(message.role, text[:lo].rstrip() + "…", message.tool_calls, message.tool_call_id, message.name)


def _cut_system(head: list[ChatMessage], over: int) -> list[ChatMessage]:
    """Remove about `over` tokens from the system messages, the last (changing context) first."""
    out = list(head)
    for i in range(len(out) - 1, -1, -1):
        if over <= 0:
            break
        cost = estimate_tokens(out[i].content)
        keep = max(16, cost - over)
        if keep < cost:
            out[i] = _cut_message(out[i], keep)
            over -= cost - estimate_tokens(out[i].content)
    return out
