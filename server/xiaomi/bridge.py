"""The Xiaomi bridge of one server process: every configured account and speaker.

One `XiaomiAccount` (login, tokens) per account, shared by its speakers; one task per speaker
(`start_speaker`), so many speakers and accounts run side by side in one event loop and one
failing speaker never touches another, nor any board. `start_speaker` is the single place where
polling of a speaker begins. In a fleet (shared state.url) it runs under a lease named after the
account and the speaker entry, so exactly one process polls and answers each speaker; another
process takes over within about `state.lease_ttl_s` when the holder dies, and a holder that froze
and woke up is refused by the fence (fence.py). With one process the speaker is simply ours.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from server.xiaomi.account import Endpoints, XiaomiAccount
from server.xiaomi.audio_store import AudioStore
from server.xiaomi.config import AccountConfig, SpeakerConfig, XiaomiConfig
from server.xiaomi.conversation import ConversationApi
from server.xiaomi.devices import Speaker, list_speakers
from server.xiaomi.endpoint import SpeakerEndpoint
from server.xiaomi.errors import NotOurSpeaker, XiaomiError
from server.xiaomi.fence import LeaseFence, RefusalCounter, Unfenced
from server.xiaomi.http import new_http_session
from server.xiaomi.mina import MinaService
from server.xiaomi.miot import MiotService
from server.xiaomi.playback import PlaybackTiming
from server.xiaomi.store import AccountStore

log = logging.getLogger("server.xiaomi")


@dataclass
class AccountRuntime:
    """One account's client objects and its speaker list (fetched once, shared by its speakers)."""

    cfg: AccountConfig
    account: XiaomiAccount
    mina: MinaService
    miot: MiotService
    conversations: ConversationApi
    _speakers: list[Speaker] | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def speakers(self) -> list[Speaker]:
        async with self._lock:
            if self._speakers is None:
                self._speakers = await list_speakers(self.mina, self.miot)
            return self._speakers


class XiaomiBridge:
    def __init__(self, config: XiaomiConfig, runtime: Any, data_dir: Path, *,
                 new_conversation: Callable[[SpeakerEndpoint], Any], pcm_voice: Any = None,
                 language: str = "zh", session_idle_s: float = 120.0,
                 timing: PlaybackTiming | None = None, fleet: Any = None) -> None:
        self.config = config
        self.runtime = runtime
        self.data_dir = data_dir
        self.new_conversation = new_conversation
        self.pcm_voice = pcm_voice
        self.language = language
        self.session_idle_s = session_idle_s
        self.timing = timing
        self.audio_store = AudioStore(ttl_s=config.audio_url_ttl_s)
        self.audio_base_url = config.audio_base_url
        self.accounts: dict[str, AccountRuntime] = {}
        self.endpoints: list[SpeakerEndpoint] = []
        self.tasks: dict[SpeakerEndpoint, asyncio.Task[None]] = {}
        # A FleetNode when the state is shared: each speaker then runs under its fleet lease.
        self.fleet = fleet
        self.leased: dict[SpeakerEndpoint, Any] = {}  # endpoint -> LeasedJob (fleet only)
        self.refusals = RefusalCounter()
        self._warmups: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None

    def _account(self, cfg: AccountConfig) -> AccountRuntime:
        if cfg.user_id not in self.accounts:
            if self._http is None:
                self._http = new_http_session()
            e = self.config.endpoints
            account = XiaomiAccount(self._http, AccountStore(self.data_dir, cfg.user_id),
                                    Endpoints(account=e.account, mina=e.mina, userprofile=e.userprofile, miot=e.miot),
                                    password=cfg.password, pass_token=cfg.pass_token)
            self.accounts[cfg.user_id] = AccountRuntime(cfg, account, MinaService(account), MiotService(account),
                                                        ConversationApi(account))
        return self.accounts[cfg.user_id]

    def start(self, http_port: int | None = None) -> None:
        """Start every configured speaker (returns at once; the work runs in tasks).
        `http_port` fills `{http_port}` in audio_base_url (the port the server really bound)."""
        if http_port is not None:
            self.audio_base_url = self.audio_base_url.replace("{http_port}", str(http_port))
        for account_cfg in self.config.accounts:
            for speaker_cfg in account_cfg.speakers:
                self.start_speaker(account_cfg, speaker_cfg)
        if self.fleet is not None:
            # A process waiting for leases logs in and lists the speakers now: a takeover then
            # only starts polling, and a login problem shows in every process's log at start,
            # not on the day it has to take over.
            for acc in self.accounts.values():
                self._warmups.append(asyncio.create_task(self._warm(acc), name=f"xiaomi-login-{acc.cfg.user_id}"))
        log.info("Xiaomi bridge: %d speaker(s) on %d account(s)", len(self.endpoints), len(self.accounts))

    def start_speaker(self, account_cfg: AccountConfig, speaker_cfg: SpeakerConfig) -> SpeakerEndpoint:
        """Begin polling and answering one speaker; returns its endpoint (its task is in
        `self.tasks`). The one entry point a lease can wrap."""
        acc = self._account(account_cfg)
        cfg = self.config
        endpoint = SpeakerEndpoint(
            cfg=speaker_cfg, account_label=account_cfg.user_id, mina=acc.mina, miot=acc.miot,
            conversations=acc.conversations, speakers=acc.speakers, new_conversation=self.new_conversation,
            pcm_voice=self.pcm_voice, audio_store=self.audio_store, audio_base_url=self.audio_base_url,
            language=self.language, poll_interval_s=cfg.poll_interval_s,
            fast_poll_interval_s=cfg.fast_poll_interval_s, fast_poll_window_s=cfg.fast_poll_window_s,
            session_idle_s=self.session_idle_s, timing=self.timing)
        self.endpoints.append(endpoint)
        if self.fleet is None:
            self.tasks[endpoint] = asyncio.create_task(self._guard(endpoint), name=f"xiaomi-{speaker_cfg.match}")
            return endpoint
        name = lease_name(account_cfg.user_id, speaker_cfg.match)

        async def term(handle: Any) -> None:
            # One term of the lease: poll and answer until the lease is lost (the job is then
            # cancelled) or the fence refuses something (NotOurSpeaker ends the term).
            endpoint.fence = LeaseFence(handle, f"{name}/cursor", endpoint.tag, self.refusals)
            try:
                if await self._guard(endpoint):
                    # Stopped for good (no such speaker, or a bug, both logged): keep the lease,
                    # as one process would stay stopped, rather than passing the failure around.
                    await asyncio.Event().wait()
            finally:
                endpoint.fence = _REFUSE_ALL

        self.leased[endpoint] = self.fleet.run_exclusive(name, term)
        return endpoint

    @staticmethod
    async def _warm(acc: AccountRuntime) -> None:
        try:
            await acc.speakers()
        except XiaomiError as exc:
            log.error("Xiaomi account %s: cannot log in or list its speakers (%s); this process could not take "
                      "a speaker over from another", acc.cfg.user_id, exc)

    async def _guard(self, endpoint: SpeakerEndpoint) -> bool:
        """Run the endpoint; True when it stopped for good, False when its lease term ended."""
        try:
            await endpoint.run()
        except asyncio.CancelledError:
            raise
        except NotOurSpeaker:
            log.info("[%s] another process of the fleet answers this speaker now", endpoint.tag)
            return False
        except Exception:  # noqa: BLE001 - a bug in one speaker's loop must not reach the others
            log.exception("[%s] the bridge for this speaker stopped on an unexpected error", endpoint.tag)
        return True

    async def stop_speaker(self, endpoint: SpeakerEndpoint) -> None:
        leased = self.leased.pop(endpoint, None)
        if leased is not None:
            await leased.release()  # hand the speaker to another process now, not after the TTL
        task = self.tasks.pop(endpoint, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if endpoint in self.endpoints:
            self.endpoints.remove(endpoint)

    async def close(self) -> None:
        for task in self._warmups:
            task.cancel()
        await asyncio.gather(*self._warmups, return_exceptions=True)
        for endpoint in list(self.endpoints):
            await self.stop_speaker(endpoint)
        if self._http is not None:
            await self._http.close()
            self._http = None


def lease_name(user_id: str, match: str) -> str:
    """The fleet lease of one configured speaker: the same on every process with the same config."""
    return f"xiaomi/{user_id}/{match}"


class _RefuseAll(Unfenced):
    """Between lease terms nothing may be sent to the speaker."""

    async def check(self, write: bool = True) -> None:
        raise NotOurSpeaker("between lease terms")

    async def claim(self, record: Any) -> None:
        raise NotOurSpeaker("between lease terms")


_REFUSE_ALL = _RefuseAll()


# Our own audio for reply_via: server_audio is encoded to MP3 at this rate (speech; small files).
SERVER_AUDIO_RATE = 24000


def create_bridge(runtime: Any, *, timing: PlaybackTiming | None = None, fleet: Any = None) -> XiaomiBridge | None:
    """The bridge for a server's runtime, not started yet (None when `xiaomi.enabled` is off):
    its audio route must be added to the HTTP app before that starts, and `start` needs the
    HTTP port. Each speaker's conversations run on the shared runtime: same LLM, tools, plugins
    and memory as a board. `fleet` (a FleetNode, only with a shared state.url) puts each speaker
    under its fleet lease."""
    config = runtime.config
    xcfg: XiaomiConfig = config.xiaomi
    if not xcfg.enabled:
        return None
    from server.audio.voice import PcmVoice
    from server.conversation import Conversation

    uses_audio = any(s.reply_via == "server_audio" for a in xcfg.accounts for s in a.speakers)
    pcm_voice = PcmVoice(runtime.tts, SERVER_AUDIO_RATE, runtime.codec_pool) if uses_audio else None

    def new_conversation(endpoint: SpeakerEndpoint) -> Any:
        conversation = Conversation(runtime, endpoint, endpoint.identity, tag=endpoint.tag, language=endpoint.language)
        tools = endpoint.tools()
        if tools is not None:
            conversation.set_device_tools(tools)
        return conversation

    if not xcfg.accounts:
        log.warning("xiaomi.enabled is on but no accounts are configured; nothing to bridge")
    return XiaomiBridge(xcfg, runtime, runtime.data_dir, new_conversation=new_conversation, pcm_voice=pcm_voice,
                        language=config.assistant.language, session_idle_s=config.session.idle_timeout_s,
                        timing=timing, fleet=fleet)
