"""The seam between a conversation and the endpoint that carries it.

A conversation (server/conversation/conversation.py) thinks and speaks; its endpoint moves the
result to a user: a xiaozhi board over WebSocket (server/session/), a Xiaomi speaker through the
Xiaomi cloud, an in-memory test double. The endpoint implements `ConversationHost`; the
conversation calls it and knows nothing else about it: no socket, no Opus, no pacing, no
xiaozhi messages.

Call order within one turn (every call is awaited before the next; all come from the turn's
own task):

    deliver_stt?                 the user's words (spoken turns: the transcript; typed: the text)
    reply_started                once, before anything of the reply (xiaozhi: `tts start`)
    deliver_emotion?             once, with the first sentence
    ( deliver_sentence  deliver_audio* )*   each sentence as soon as it is ready, then its audio
    reply_finished | reply_interrupted      iff reply_started was called; reply_interrupted may
                                 also come while reply_finished is still waiting for playback
    turn_ended                   always, last, with `turn.outcome` set

`reply_interrupted` is the one exception to "from the turn's own task": the conversation calls
it from whoever interrupted the turn (an abort, a barge-in, the turn that replaced it), right
away, before it waits for the old turn's task to unwind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from server.audio.voice import Voice
from server.tools.base import ToolSource

if TYPE_CHECKING:
    from server.conversation.turn import Turn


class ConversationHost(Protocol):
    """What a conversation needs from its endpoint. Implement every method; none may raise
    (an endpoint that cannot deliver any more ends its session and returns quietly)."""

    @property
    def voice(self) -> Voice | None:
        """Our TTS in the endpoint's audio format (Opus packets for a board, PCM for a bridge),
        or None for a text-only endpoint that speaks sentences itself: then the conversation
        runs no TTS and `deliver_audio` is never called."""
        ...

    async def deliver_stt(self, turn: Turn, text: str) -> None:
        """What the user said (or typed), once per turn that has user text."""
        ...

    async def reply_started(self, turn: Turn) -> None:
        """The reply begins (before thinking: the user learns we heard them)."""
        ...

    async def deliver_emotion(self, turn: Turn, emotion: str) -> None:
        """The reply's mood, one of server.pipeline.emotion's names, before its first sentence."""
        ...

    async def deliver_sentence(self, turn: Turn, text: str) -> None:
        """One sentence of the reply, just before its audio (if any). Only sentences delivered
        here count as said: they are what the dialogue history records for this turn."""
        ...

    async def deliver_audio(self, turn: Turn, packet: bytes) -> bool:
        """One packet of the current sentence's audio, in `voice`'s format. May wait (pacing).
        Return False when this turn's audio is no longer wanted: the turn then stops."""
        ...

    async def reply_finished(self, turn: Turn) -> None:
        """Everything was delivered: wait until it has been played, then close the reply
        (xiaozhi: `tts stop`)."""
        ...

    async def reply_interrupted(self, turn: Turn, why: str) -> None:
        """The reply was cut off (`why`: "abort", "barge-in", "replaced", "floor", "closing"):
        stop playing it now and drop what is still buffered."""
        ...

    async def turn_ended(self, turn: Turn) -> None:
        """The turn is over: `turn.outcome` is "done", "failed" (`turn.error` says why; an
        apology was already delivered as a sentence) or "interrupted"."""
        ...

    async def end_session(self, reason: str) -> None:
        """The conversation wants to end (exit phrase, a tool, idle goodbye) after its last turn
        played: close the connection."""
        ...


class DeviceToolSource(ToolSource, Protocol):
    """The endpoint's own device tools (a board's MCP tools; a speaker's volume and stop).
    They are listed in the system prompt as "what this device can do"."""

    @property
    def ready(self) -> bool:
        """False while the tool list is still being fetched from the device."""
        ...

    async def wait_ready(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the tool list; True if it is there."""
        ...
