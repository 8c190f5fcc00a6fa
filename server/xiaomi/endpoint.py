"""One XiaoAi speaker as an endpoint of the conversation core.

`SpeakerEndpoint.run()` is the whole life of one configured speaker: find it on the account,
then poll its conversation records; a query our trigger takes mutes XiaoAi's own answer and
becomes a turn of a `Conversation` (same LLM, tools, plugins and memory as a board). The
conversation calls back here (`ConversationHost`): each sentence is queued the moment it is ready
and spoken by a playback task, in XiaoAi's voice or as our own audio by URL, waiting for the
speaker to finish each one before the next. A failure of this speaker is logged and retried
with a growing delay; it never reaches another speaker or a board.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from server.xiaomi.audio_store import AudioStore, encode_mp3
from server.xiaomi.config import SpeakerConfig
from server.xiaomi.conversation import ConversationApi, ConversationRecord
from server.xiaomi.devices import Speaker, find_speaker
from server.xiaomi.errors import LoginError, NotOurSpeaker, XiaomiError
from server.xiaomi.fence import SpeakerFence, Unfenced
from server.xiaomi.mina import MinaService
from server.xiaomi.miot import MiotService
from server.xiaomi.models import model_table
from server.xiaomi.playback import PlaybackTiming
from server.xiaomi.records import RecordFilter
from server.xiaomi.speaker import SpeakerControl
from server.xiaomi.tools import SpeakerTools
from server.xiaomi.trigger import TriggerPolicy
from server.xiaomi.voice import CLIP_END, TTS_FAILED, ClipVoice

if TYPE_CHECKING:
    from server.conversation import Conversation, Turn

log = logging.getLogger("server.xiaomi")

APOLOGY_TTS = {"zh": "抱歉，我的声音出了点问题，先用小爱的声音回答你。",
               "en": "Sorry, my own voice is not working; here is the answer in the speaker's voice."}
GOODBYE = {"zh": "好的，再见。", "en": "Okay, goodbye."}
# Records fetched per poll: more than one query can arrive between two polls.
POLL_LIMIT = 5
# The conversation API's `timestamp` is an upper bound on record times; asking a little into the
# future keeps a speaker whose clock runs ahead of ours from hiding its newest records.
CURSOR_AHEAD_MS = 10 * 60 * 1000
MAX_POLL_BACKOFF_S = 300.0
# A process taking a speaker over from another answers queries newer than the cursor the old
# holder left if they are at most this old (one said during the hand-over, while XiaoAi's own
# answer can still be cut); older ones XiaoAi has answered itself by now.
TAKEOVER_CATCH_UP_MS = 5000


@dataclass
class _Clip:
    text: str
    pcm: bytearray


class SpeakerEndpoint:
    """The bridge for one configured speaker (see module docstring)."""

    def __init__(self, *, cfg: SpeakerConfig, account_label: str, mina: MinaService, miot: MiotService,
                 conversations: ConversationApi, speakers: Callable[[], Awaitable[list[Speaker]]],
                 new_conversation: Callable[[SpeakerEndpoint], Conversation], pcm_voice: Any,
                 audio_store: AudioStore | None, audio_base_url: str, language: str,
                 poll_interval_s: float, fast_poll_interval_s: float, fast_poll_window_s: float,
                 session_idle_s: float, timing: PlaybackTiming | None = None,
                 fence: SpeakerFence | None = None) -> None:
        self.cfg = cfg
        self.account_label = account_label
        self.mina = mina
        self.miot = miot
        self.conversations = conversations
        self._speakers = speakers
        self._new_conversation = new_conversation
        self._pcm_voice = pcm_voice
        self.audio_store = audio_store
        self.audio_base_url = audio_base_url
        self.language = language
        self.poll_interval_s = poll_interval_s
        self.fast_poll_interval_s = fast_poll_interval_s
        self.fast_poll_window_s = fast_poll_window_s
        self.session_idle_s = session_idle_s
        self.timing = timing or PlaybackTiming()
        # Who may act on the speaker: always us with one process; a fleet lease's term otherwise
        # (the bridge sets a new one for every term).
        self.fence: SpeakerFence = fence or Unfenced()
        self.policy = TriggerPolicy(mode=cfg.mode, keywords=tuple(cfg.keywords), continuous=cfg.continuous,
                                    followup_timeout_s=cfg.followup_timeout_s, exit_phrases=tuple(cfg.exit_phrases))
        self.tag = f"xiaomi:{cfg.match}"
        self.speaker: Speaker | None = None
        self.control: SpeakerControl | None = None
        self.conversation: Conversation | None = None
        self.identity = ""
        self.state = "starting"  # starting | polling | failing | not_found | stopped
        self.polls = 0
        self.queries = 0
        self._last_activity = 0.0
        self._fast_until = 0.0
        self._voice = ClipVoice(pcm_voice) if cfg.reply_via == "server_audio" and pcm_voice is not None else None
        # the reply being played
        self._queue: asyncio.Queue[tuple[str, Any] | None] | None = None
        self._player: asyncio.Task[None] | None = None
        self._clip: _Clip | None = None
        self._apologized = False
        self._spoke = False

    # ------------------------------------------------------------------ life

    async def run(self) -> None:
        """Find the speaker, then poll until cancelled. Never raises (except cancellation)."""
        try:
            if not await self._resolve():
                return
            await self._poll_forever()
        finally:
            self.state = "stopped" if self.state != "not_found" else self.state
            await self._shutdown()

    async def _resolve(self) -> bool:
        failures = 0
        while True:
            try:
                speakers = await self._speakers()
                break
            except XiaomiError as exc:
                failures += 1
                delay = min(MAX_POLL_BACKOFF_S, exc.retry_after_s * 2 ** min(failures - 1, 5))
                self.state = "failing"
                log.error("[%s] cannot list the speakers of account %s: %s (retrying in %.0f s)", self.tag,
                          self.account_label, exc, delay)
                await asyncio.sleep(delay)
        found = find_speaker(speakers, self.cfg.match)
        if found is None:
            have = "; ".join(s.describe() for s in speakers) or "no speakers at all"
            log.error("[%s] no speaker on Xiaomi account %s matches %r; the account has: %s. Bridge for this "
                      "entry stopped.", self.tag, self.account_label, self.cfg.match, have)
            self.state = "not_found"
            return False
        profile, known = model_table().profile(found.mina.hardware, self.cfg.model)
        if not profile.supported:
            log.warning("[%s] model %s is known not to work through the cloud; trying anyway", self.tag,
                        found.mina.hardware)
        if not known:
            log.info("[%s] model %s is not in server/xiaomi/models.yaml; using the defaults", self.tag,
                     found.mina.hardware)
        self.speaker = found
        self.tag = f"xiaomi:{found.label}"
        self.identity = self.cfg.identity or f"xiaomi-{found.mina.device_id}"
        self.control = SpeakerControl(found, profile, self.mina, self.miot, timing=self.timing,
                                      audio_store=self.audio_store, audio_base_url=self.audio_base_url, tag=self.tag,
                                      fence=self._check_fence)
        log.info("[%s] bridging %s, mode %s%s, reply via %s, memory identity %s", self.tag, found.describe(),
                 self.cfg.mode, " + continuous" if self.cfg.continuous else "", self.cfg.reply_via, self.identity)
        return True

    async def _check_fence(self, write: bool = True) -> None:
        await self.fence.check(write)

    async def _shutdown(self) -> None:
        await self._stop_player()
        if self.control is not None:
            await self.control.stop_muting()
        if self.conversation is not None:
            with contextlib.suppress(Exception):
                await self.conversation.close()
            self.conversation = None

    # ------------------------------------------------------------------ polling

    def interval(self, now: float) -> float:
        fast = now < self._fast_until or self.policy.following(now)
        return self.fast_poll_interval_s if fast else self.poll_interval_s

    async def _fetch(self) -> list[ConversationRecord]:
        assert self.speaker is not None
        self.polls += 1
        return await self.conversations.latest(self.speaker.mina.device_id, self.speaker.mina.hardware,
                                               limit=POLL_LIMIT, before_ms=int(time.time() * 1000) + CURSOR_AHEAD_MS)

    async def _poll_forever(self) -> None:
        records_filter: RecordFilter | None = None
        failures = 0
        while True:
            t0 = time.monotonic()
            try:
                records = await self._fetch()
            except XiaomiError as exc:
                failures += 1
                base = exc.retry_after_s if isinstance(exc, LoginError) else min(exc.retry_after_s, 5.0)
                delay = min(MAX_POLL_BACKOFF_S, base * 2 ** min(failures - 1, 6))
                if failures == 1 or failures % 10 == 0:
                    log.warning("[%s] polling failed (%s); retrying in %.0f s", self.tag, exc, delay)
                self.state = "failing"
                await asyncio.sleep(delay)
                continue
            if failures:
                log.info("[%s] polling works again after %d failures", self.tag, failures)
                failures = 0
            self.state = "polling"
            if records_filter is None:
                try:
                    records_filter = await self._first_filter(records)
                except NotOurSpeaker:
                    raise
                except Exception as exc:  # noqa: BLE001 - the lease store hiccuped: try again next poll
                    log.warning("[%s] cannot read or record the conversation cursor (%s); retrying", self.tag, exc)
                    await asyncio.sleep(self.interval(time.monotonic()))
                    continue
            for record in records_filter.new(records):
                try:
                    await self.on_query(record)
                except NotOurSpeaker:
                    raise  # another process has the speaker now: this term is over
                except XiaomiError as exc:
                    log.warning("[%s] handling %r failed: %s", self.tag, record.query, exc)
                except Exception:  # noqa: BLE001 - one bad query must not end this speaker's bridge
                    log.exception("[%s] handling %r failed", self.tag, record.query)
            now = time.monotonic()
            await self._close_if_idle(now)
            await asyncio.sleep(max(0.0, self.interval(now) - (now - t0)))

    async def _first_filter(self, records: list[ConversationRecord]) -> RecordFilter:
        """The first poll of a term. Everything already there is history, not a question for
        us; except, when another process held the speaker before, what came after the cursor it
        left within the catch-up window (a query said during the hand-over)."""
        now_ms = int(time.time() * 1000)
        cursor = await self.fence.cursor()
        if cursor is None:
            primed = RecordFilter.primed(records, started_ms=now_ms - 5000)
            # Leave the mark for the next term (this process's, after a pause, or another's): a
            # query said while the lease changes hands is then caught up, not taken for history.
            newest = max(records, key=lambda r: r.time_ms, default=None)
            await self.fence.claim(ConversationRecord(newest.key if newest else "", primed.started_ms, ""))
            return primed
        log.info("[%s] new lease term: resuming after the last query claimed (at %d)", self.tag, cursor.time_ms)
        return RecordFilter.after(records, cursor.time_ms, cursor.key, not_before_ms=now_ms - TAKEOVER_CATCH_UP_MS)

    async def on_query(self, record: ConversationRecord) -> None:
        """A new record: decide, claim it (fleet), mute XiaoAi, and start (or end) a turn."""
        assert self.control is not None
        now = time.monotonic()
        decision = self.policy.decide(record.query, now, record.xiaoai_acted)
        log.info("[%s] heard %r -> %s", self.tag, record.query, decision.action)
        # Claimed before anything is done about it, ours or XiaoAi's: a process that took the
        # speaker over (or wakes up stale) never handles it a second time.
        await self.fence.claim(record)
        if decision.action == "ignore":
            # XiaoAi answers this one; if we were still talking, the user moved on.
            if self.conversation is not None and self.conversation.busy:
                await self.conversation.interrupt("xiaoai")
            return
        self.queries += 1
        self.control.start_muting()
        self._fast_until = now + self.fast_poll_window_s
        conversation = await self._conversation_for(now)
        if decision.action == "exit":
            conversation.say(GOODBYE.get(self.language, GOODBYE["en"]))
            return
        conversation.ask(decision.text)

    async def _close_if_idle(self, now: float) -> None:
        """End a conversation nobody used for a while, as a board's session ends: its memory
        is summarized now rather than whenever the next query comes."""
        c = self.conversation
        if c is not None and not c.busy and now - self._last_activity > self.session_idle_s:
            self.conversation = None
            await c.close()

    async def _conversation_for(self, now: float) -> Conversation:
        """The current conversation, or a new one after a long pause (it then loads the memory
        again: what a board with the same identity said meanwhile is included)."""
        if self.conversation is not None and now - self._last_activity > self.session_idle_s:
            old, self.conversation = self.conversation, None
            await old.close()
        if self.conversation is None:
            self.conversation = self._new_conversation(self)
            self.conversation.open()
        self._last_activity = now
        return self.conversation

    # ------------------------------------------------------------------ ConversationHost

    @property
    def voice(self) -> Any:
        return self._voice

    async def deliver_stt(self, turn: Turn, text: str) -> None:
        pass  # the speaker already showed/heard what the user said

    async def reply_started(self, turn: Turn) -> None:
        await self._stop_player()
        self._queue = asyncio.Queue()
        self._apologized = False
        self._spoke = False
        self._clip = None
        self._player = asyncio.create_task(self._play(self._queue), name=f"{self.tag}-play")

    async def deliver_emotion(self, turn: Turn, emotion: str) -> None:
        pass

    async def deliver_sentence(self, turn: Turn, text: str) -> None:
        if self._queue is None:
            return
        if self._voice is None:
            self._queue.put_nowait(("text", text))
        else:
            self._close_clip()
            self._clip = _Clip(text, bytearray())

    async def deliver_audio(self, turn: Turn, packet: bytes) -> bool:
        if self._queue is None:
            return False
        if packet is CLIP_END:
            self._close_clip()
        elif packet is TTS_FAILED:
            text = self._clip.text if self._clip is not None else ""
            self._clip = None
            if not self._apologized:
                self._apologized = True
                self._queue.put_nowait(("text", APOLOGY_TTS.get(self.language, APOLOGY_TTS["en"])))
            if text:
                self._queue.put_nowait(("text", text))
        elif self._clip is not None:
            self._clip.pcm += packet
        return self._player is not None and not self._player.done()

    def _close_clip(self) -> None:
        clip, self._clip = self._clip, None
        if clip is not None and clip.pcm and self._queue is not None:
            self._queue.put_nowait(("pcm", (clip.text, bytes(clip.pcm))))

    async def reply_finished(self, turn: Turn) -> None:
        self._close_clip()
        if self._queue is not None:
            self._queue.put_nowait(None)
        if self._player is not None:
            with contextlib.suppress(Exception):
                await self._player
        self._player = None
        self._queue = None

    async def reply_interrupted(self, turn: Turn, why: str) -> None:
        spoke = self._spoke
        await self._stop_player()
        if spoke and why not in ("replaced", "xiaoai") and self.control is not None:
            # Our voice would go on talking over whatever comes next. (Not when XiaoAi took the
            # turn: its own answer is what plays now.)
            with contextlib.suppress(XiaomiError):
                await self.control.stop()

    async def turn_ended(self, turn: Turn) -> None:
        if self.control is None:
            return
        await self.control.stop_muting()  # nothing stays muted, whatever happened
        self._last_activity = time.monotonic()
        if turn.outcome == "done" and turn.kind != "phrase" and self.policy.answered(time.monotonic()):
            try:
                await self.control.wake()
            except XiaomiError as exc:
                log.warning("[%s] waking the speaker for a follow-up failed: %s", self.tag, exc)

    async def end_session(self, reason: str) -> None:
        # A speaker has no connection to close: ending means leaving continuous conversation.
        self.policy.in_followup_until = 0.0
        log.info("[%s] conversation ended (%s)", self.tag, reason)

    # ------------------------------------------------------------------ playback

    async def _stop_player(self) -> None:
        player, self._player, self._queue, self._clip = self._player, None, None, None
        if player is not None and not player.done():
            player.cancel()
            with contextlib.suppress(BaseException):
                await player

    async def _play(self, queue: asyncio.Queue[tuple[str, Any] | None]) -> None:
        """Speak the queued sentences one by one, each after the previous one has played."""
        ctl = self.control
        assert ctl is not None
        first = True
        loop = asyncio.get_running_loop()
        while (item := await queue.get()) is not None:
            kind, value = item
            if first:
                await ctl.stop_muting()  # no pause may land on our first sentence
                first = False
            try:
                if kind == "text":
                    expected = await ctl.say_text(value)
                else:
                    text, pcm = value
                    rate = self._voice.sample_rate if self._voice is not None else 24000
                    mp3 = await loop.run_in_executor(None, encode_mp3, pcm, rate)
                    expected = await ctl.play_audio(mp3, len(pcm) / 2 / rate)
                # Counted from when the command is through: the speaker starts about then.
                started = time.monotonic()
                self._spoke = True
                await ctl.wait_done(expected, started)
            except XiaomiError as exc:
                log.warning("[%s] speaking failed: %s; dropping the rest of this reply", self.tag, exc)
                return

    # ------------------------------------------------------------------ tools

    def tools(self) -> SpeakerTools | None:
        return SpeakerTools(self.control, self.language) if self.control is not None else None
