"""Speculative turns: the reply starts on the transcript of the speech so far, the moment the
early transcription (at silence start, `vad.early_asr_ms`) is back, while the silence that ends
the utterance is still being confirmed.

The speculative turn runs the LLM and synthesizes its first sentence, and then waits: nothing
reaches the device, no tool runs (a tool-calling round is held) and nothing is remembered. When
the endpoint confirms the utterance the listener transcribed (the same early transcription is
handed over with it), the turn becomes the current one and its first frame can leave at once:
the LLM's time to first token and the first sentence's TTS were spent inside the silence
window. When the user goes on speaking (the listener throws the early transcription away) or
the utterance turns out different, the turn is discarded: its counters (`speculation_*` in
/metrics, with the streamed LLM pieces it wasted) are all that remains.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from server.conversation.metrics import TurnMetrics

if TYPE_CHECKING:
    from server.conversation.conversation import Conversation
    from server.conversation.turn import Turn
    from server.session.listener import Utterance, UtteranceListener

log = logging.getLogger("server.turn")


class Speculator:
    def __init__(self, conversation: Conversation, listener: UtteranceListener, *, enabled: bool) -> None:
        self.conversation = conversation
        self.enabled = enabled
        self.turn: Turn | None = None
        # Since the last utterance ended: speculations started, thrown away, LLM pieces wasted
        # (reported on the turn that answers the utterance).
        self._started = self._discarded = self._wasted = 0
        if enabled:
            listener.on_early_ready = self._on_early_ready
            listener.on_early_dropped = self._on_early_dropped

    def _on_early_ready(self, task: asyncio.Task[Any]) -> None:
        c = self.conversation
        if c.busy:
            return  # a turn is still under way: do not start a second reply next to it
        text = str(getattr(task.result(), "text", "") or "").strip()
        if not text or c.is_exit_phrase(text):
            return
        self.drop()
        self.turn = c.speculate(b"", task)
        self._started += 1
        log.debug("[%s] speculating on %r", c.tag, text[:60])

    def _on_early_dropped(self, task: asyncio.Task[Any]) -> None:
        if self.turn is not None and self.turn.asr_task is task:
            self.drop()

    def take(self, utterance: Utterance, metrics: TurnMetrics) -> bool:
        """The utterance ended. True if the speculative turn was for exactly this utterance and
        now answers it; False: the caller starts a normal turn."""
        turn, self.turn = self.turn, None
        used = False
        if turn is not None:
            if utterance.asr_task is turn.asr_task and self.conversation.confirm(turn, metrics):
                turn.audio = utterance.audio
                used = True
            else:
                self._discard(turn)
        target = turn.metrics if used and turn is not None else metrics
        target.speculations_started, target.speculations_discarded = self._started, self._discarded
        target.speculation_wasted_llm_chunks = self._wasted
        self._started = self._discarded = self._wasted = 0
        return used

    def drop(self) -> None:
        turn, self.turn = self.turn, None
        if turn is not None:
            self._discard(turn)

    def _discard(self, turn: Turn) -> None:
        self._discarded += 1
        self._wasted += turn.llm_chunks
        self.conversation.discard(turn)
