"""One user's conversation, whatever carries it: dialogue, memory, persona, tools, turns.

An endpoint (a xiaozhi board's WebSocket session, a Xiaomi speaker bridge, a test) creates one
`Conversation` per connected user, implements `ConversationHost` for it, and drives it with
`ask` (typed text), `hear` (an utterance of PCM16 16 kHz), `say` (a fixed phrase) and
`interrupt`. The conversation answers through the host only; it never sees a socket or a codec.

Turns: at most one is current. Starting a turn cancels the current one, and the new turn's
task first settles the old one (tells the host the old reply was interrupted, then waits until
the old task has unwound and recorded what was actually said), so the dialogue history is in
the order the user heard it, whatever the scheduling.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from server.conversation.host import ConversationHost, DeviceToolSource
from server.conversation.metrics import TurnMetrics
from server.conversation.turn import Turn, TurnKind
from server.memory.manager import SessionMemory
from server.pipeline.dialogue import Dialogue, build_context, system_prompt
from server.pipeline.prompt_budget import PromptBudget
from server.pipeline.responder import Responder
from server.pipeline.tool_access import no_tools_rule
from server.pipeline.wake_words import WakeWords
from server.providers.base import ChatMessage
from server.tools.base import ToolContext, ToolSource
from server.tools.toolbox import Toolbox

if TYPE_CHECKING:
    from server.runtime import Services

log = logging.getLogger("server.conversation")

_PUNCT = re.compile(r"[\s\W_]+", re.UNICODE)
# How long an interruption waits for the interrupted turn to unwind before going on regardless
# (it normally takes a few ms; a turn stuck in a non-cancellable call must not block the next).
INTERRUPT_TIMEOUT_S = 2.0


def normalize(text: str) -> str:
    """Lower case without spaces or punctuation: how exit phrases and wake words are compared."""
    return _PUNCT.sub("", text).lower()


class Conversation:
    """One conversation of one user (identity = the device id; memory maps it to a user)."""

    def __init__(self, runtime: Services, host: ConversationHost, identity: str, *,
                 session_id: str | None = None, tag: str = "", language: str | None = None,
                 memory_identity: str = "") -> None:
        cfg = runtime.config
        self.runtime = runtime
        self.host = host
        self.identity = identity
        self.session_id = session_id or str(uuid.uuid4())
        self.tag = tag or identity or self.session_id[:8]
        self.language = language or cfg.assistant.language
        self.dialogue = Dialogue(max_turns=cfg.assistant.max_history_turns)
        self.current_turn: Turn | None = None
        self.closed = False
        self._turn_seq = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._exit_phrases = {normalize(p) for p in cfg.session.exit_phrases}
        # A wake word alone is never a question (server/pipeline/wake_words.py).
        self.wake_words = WakeWords(cfg.session.wake_words)
        # Every LLM request fits the model's context window; one budget per conversation, so a
        # cut is logged once per session (server/pipeline/prompt_budget.py).
        self.prompt_budget = PromptBudget.for_llm(runtime.llm, self.tag)

        memory = runtime.memory
        # memory_identity: set when the connection did not prove its device id (then it is never
        # mapped through memory.identities, which names device ids).
        if memory_identity and memory_identity != identity:
            self.user_id = memory_identity
        else:
            self.user_id = memory.user_for(identity) if memory is not None else identity
        self.memory: SessionMemory | None = None
        self._memory_loaded = asyncio.Event()
        self.last_memory_ms = 0.0  # memory time on the latest turn's path (for its metrics)
        self.toolbox = Toolbox(self._tool_context, default_timeout_s=cfg.intent.tool_timeout_s)
        for source in runtime.tool_sources:
            self.toolbox.add(source)
        self.device_tools: DeviceToolSource | None = None

    # ------------------------------------------------------------------ life cycle

    def open(self) -> None:
        """Start loading the user's memory (history, summary) in the background; the first
        turn waits for it."""
        self._spawn(self._load_memory(), "memory")

    async def close(self) -> None:
        """End the conversation: cancel the current turn without telling the host (the endpoint
        is going away), wait for it to record, and let memory summarize the session."""
        if self.closed:
            return
        self.closed = True
        turn = self.cancel_current("closing")
        if turn is not None:
            turn.reply_closed = True
            await turn.wait_stopped(INTERRUPT_TIMEOUT_S)
        # The memory load and the records waiting for it finish (bounded), so nothing said is lost.
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=INTERRUPT_TIMEOUT_S)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._memory_loaded.set()
        if self.runtime.memory is not None:
            self.runtime.memory.close_session(self.user_id, self.session_id)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"{self.tag}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ tools

    def add_tools(self, source: ToolSource) -> None:
        """Offer a tool source to this conversation's model (on top of the process-wide ones)."""
        self.toolbox.add(source)

    def set_device_tools(self, source: DeviceToolSource) -> None:
        """The endpoint's own device tools: offered to the model and described in the prompt;
        a turn waits briefly (`intent.device_tools_wait_s`) while they are not `ready`."""
        self.device_tools = source
        self.toolbox.add(source)

    # ------------------------------------------------------------------ turns

    @property
    def busy(self) -> bool:
        """A turn is under way (recognising, thinking or speaking)."""
        return self.current_turn is not None and not self.current_turn.finished

    def ask(self, text: str) -> Turn:
        """A typed question: delivered back as stt text, then answered."""
        return self.start_turn("text", text=text)

    def hear(self, audio: bytes, *, asr_task: asyncio.Task[Any] | None = None,
             metrics: TurnMetrics | None = None) -> Turn:
        """A spoken utterance (PCM16 mono 16 kHz): transcribed (or `asr_task`'s transcript of
        exactly this audio, started early), delivered as stt text, then answered."""
        return self.start_turn("voice", audio=audio, asr_task=asr_task, metrics=metrics)

    def say(self, text: str, *, close_after: bool = False, kind: TurnKind = "phrase") -> Turn:
        """Say a fixed phrase (no LLM; its audio is cached per process). `close_after`: end
        the session once it has played."""
        return self.start_turn(kind, text=text, close_after=close_after)

    def start_turn(self, kind: TurnKind, *, audio: bytes = b"", text: str = "", metrics: TurnMetrics | None = None,
                   close_after: bool = False, asr_task: asyncio.Task[Any] | None = None) -> Turn:
        """Make a new turn current and start its task. The turn it replaces is cancelled now;
        the new task settles it (host.reply_interrupted(old, "replaced"), then waits for it)
        before doing anything else."""
        previous = self.cancel_current("new turn")
        self._turn_seq += 1
        turn = Turn(conversation=self, id=self._turn_seq, kind=kind, audio=audio, text=text,
                    close_after=close_after, metrics=metrics or TurnMetrics(), asr_task=asr_task,
                    previous=previous)
        turn.metrics.session_id = self.session_id
        turn.metrics.device_id = self.identity
        turn.metrics.turn_id = turn.id
        turn.metrics.kind = kind
        self.current_turn = turn
        turn.task = asyncio.create_task(self._run_turn(turn), name=f"{self.tag}-turn{turn.id}")
        return turn

    async def _run_turn(self, turn: Turn) -> None:
        try:
            await turn.run()
        finally:
            if not turn.discarded:  # a discarded speculation never was a turn for the host
                await self.host.turn_ended(turn)
            if turn.close_after and not turn.cancelled:
                await self.host.end_session("conversation ended")

    def speculate(self, audio: bytes, asr_task: asyncio.Task[Any]) -> Turn:
        """Start a reply on an early transcript (`asr_task`, done) while the end of the
        utterance is not confirmed yet: it thinks and synthesizes its first sentence but stays
        silent, and is not the current turn, until `confirm`; `discard` drops it without trace."""
        self._turn_seq += 1
        turn = Turn(conversation=self, id=self._turn_seq, kind="voice", audio=audio, asr_task=asr_task,
                    hold=asyncio.get_running_loop().create_future())
        turn.metrics.session_id = self.session_id
        turn.metrics.device_id = self.identity
        turn.metrics.turn_id = turn.id
        turn.metrics.kind = "voice"
        turn.task = asyncio.create_task(self._run_turn(turn), name=f"{self.tag}-turn{turn.id}-speculative")
        self.runtime.metrics.count("speculation_started")
        return turn

    def confirm(self, turn: Turn, metrics: TurnMetrics) -> bool:
        """The utterance ended as speculated: `turn` becomes the current turn and may speak.
        False if it is already over (failed or discarded): start a normal turn instead."""
        if turn.hold is None or turn.hold.done() or turn.finished or turn.cancelled:
            return False
        previous = self.cancel_current("new turn")
        m = turn.metrics
        m.speech_end_arrival, m.endpoint = metrics.speech_end_arrival, metrics.endpoint
        m.speculative = True
        turn.previous = previous
        self.current_turn = turn
        turn.hold.set_result(None)
        return True

    def discard(self, turn: Turn) -> None:
        """The user went on speaking, or the utterance is not the one speculated on."""
        if turn.hold is not None and not turn.hold.done():
            turn.discarded = True
            turn.cancel()

    def cancel_current(self, why: str) -> Turn | None:
        """Cancel the current turn now (synchronously) and return it, or None if no turn was
        under way. Follow with `settle(turn, why)`; `interrupt` does both."""
        turn = self.current_turn
        if turn is None or turn.finished or turn.cancelled:
            return None
        log.info("[%s] turn %d interrupted: %s", self.tag, turn.id, why)
        turn.cancel()
        return turn

    async def settle(self, turn: Turn, why: str) -> None:
        """After `cancel_current`: tell the host the reply was cut off (if one had started and
        was not closed yet), then wait until the turn's task has unwound and recorded."""
        if turn.reply_started and not turn.reply_closed:
            turn.reply_closed = True
            await self.host.reply_interrupted(turn, why)
        if not await turn.wait_stopped(INTERRUPT_TIMEOUT_S):
            log.warning("[%s] turn %d still unwinding after %.0f s; going on", self.tag, turn.id,
                        INTERRUPT_TIMEOUT_S)

    async def interrupt(self, why: str) -> bool:
        """Stop the current turn (abort, barge-in, the user taking the floor) and wait until it
        recorded what was said. True if a reply had started and the host was told to stop it."""
        turn = self.cancel_current(why)
        if turn is None:
            return False
        told = turn.reply_started and not turn.reply_closed
        await self.settle(turn, why)
        return told

    def is_exit_phrase(self, text: str) -> bool:
        return normalize(text) in self._exit_phrases

    # ------------------------------------------------------------------ memory, prompt, tools

    async def _load_memory(self) -> None:
        try:
            if self.runtime.memory is not None:
                self.memory = await self.runtime.memory.open_session(self.user_id)
                # Earlier sessions go before anything this one already said (a turn cancelled
                # before it needed the history records without waiting for the load).
                current, self.dialogue.exchanges = self.dialogue.exchanges, []
                for ex in [*self.memory.history, *current]:
                    self.dialogue.add(ex.user, ex.assistant, ex.interrupted)
        finally:
            self._memory_loaded.set()

    def _tool_context(self) -> ToolContext:
        memory = self.runtime.memory
        return ToolContext(device_id=self.identity, user_id=self.user_id, session_id=self.session_id,
                           language=self.language, storage=memory.store if memory is not None else None,
                           http=self.runtime.http())

    def responder(self, on_first_token: Callable[[], None] | None = None) -> Responder:
        cfg = self.runtime.config.intent
        return Responder(self.runtime.llm, self.toolbox, mode=cfg.mode, max_rounds=cfg.max_tool_rounds,
                         language=self.language, on_first_token=on_first_token, budget=self.prompt_budget)

    async def build_messages(self, user_text: str) -> list[ChatMessage]:
        """System prompt (persona), context (time, memory, device), history and the new text."""
        cfg = self.runtime.config
        t0 = time.monotonic()
        await self._memory_loaded.wait()
        waited = time.monotonic() - t0
        if self.device_tools is not None and not self.device_tools.ready:
            # A device that just connected may still be listing its tools; a short wait lets
            # the first question use them.
            await self.device_tools.wait_ready(cfg.intent.device_tools_wait_s)
        persona = ""
        memory = self.runtime.memory
        t1 = time.monotonic()
        if memory is not None and memory.store is not None:
            try:
                persona = await memory.store.get_value(self.user_id, "persona") or ""
            except Exception:  # noqa: BLE001 - a broken store must not stop the answer
                log.exception("[%s] reading the persona failed", self.tag)
        # Memory time on this turn's path: waiting for the memory load plus the persona lookup
        # (not the wait for the device's tool list).
        self.last_memory_ms = round((waited + time.monotonic() - t1) * 1000, 2)
        summary = self.memory.summary if self.memory is not None else ""
        # What the device itself can do (its own tools), in one line each.
        capabilities = ([spec.description.split(".")[0] for spec in self.device_tools.specs()]
                        if self.device_tools is not None else [])
        system = system_prompt(persona or cfg.assistant.prompt, cfg.assistant.name, self.language)
        if not self.responder().can_act():
            # No tool can run this turn: say so, and do not list what the device could do (the
            # model read that list as things it had done). server/pipeline/tool_access.py
            system = f"{system} {no_tools_rule(self.language)}"
            capabilities = []
        context = build_context(self.language, summary=summary, capabilities=capabilities[:12])
        return self.dialogue.messages(system, user_text, context=context,
                                      token_budget=cfg.assistant.history_token_budget)

    def remember(self, user: str, assistant: str, interrupted: bool) -> None:
        """Add one exchange to the dialogue and to the user's memory."""
        self.dialogue.add(user, assistant, interrupted)
        if self.runtime.memory is None:
            return
        if self._memory_loaded.is_set():
            self.runtime.memory.record(self.user_id, self.session_id, user, assistant, interrupted)
        else:
            # Stored only after the load has read the earlier sessions, so the load cannot
            # read this exchange back as an old one.
            self._spawn(self._record_after_load(user, assistant, interrupted), "record")

    async def _record_after_load(self, user: str, assistant: str, interrupted: bool) -> None:
        await self._memory_loaded.wait()
        if self.runtime.memory is not None:
            self.runtime.memory.record(self.user_id, self.session_id, user, assistant, interrupted)
