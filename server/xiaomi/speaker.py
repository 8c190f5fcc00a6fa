"""Everything the bridge does to one speaker: mute XiaoAi's own answer, speak a sentence (its own
voice, or our audio by URL), wait for the playback to end, wake it for a follow-up, volume, stop.
The per-model table decides which API does each."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable

from server.xiaomi.audio_store import AudioStore
from server.xiaomi.devices import Speaker
from server.xiaomi.errors import XiaomiError
from server.xiaomi.mina import MinaService
from server.xiaomi.miot import MiotService
from server.xiaomi.models import ModelProfile
from server.xiaomi.playback import PlaybackTiming, speech_seconds, wait_playback

log = logging.getLogger("server.xiaomi")

# When XiaoAi's own answer is paused again after the trigger matched (seconds, scaled): its TTS can
# start a moment after the record shows up, so one pause is not always enough.
MUTE_REPEATS_S = (0.0, 0.35, 0.8, 1.4, 2.2)


class SpeakerControl:
    def __init__(self, speaker: Speaker, profile: ModelProfile, mina: MinaService, miot: MiotService, *,
                 timing: PlaybackTiming | None = None, audio_store: AudioStore | None = None,
                 audio_base_url: str = "", tag: str = "",
                 fence: Callable[[bool], Awaitable[None]] | None = None) -> None:
        self.speaker = speaker
        self.profile = profile
        self.mina = mina
        self.miot = miot
        # The model's speaking rate scales every estimate (and the status polling with it).
        base = timing or PlaybackTiming()
        self.timing = dataclasses.replace(base, scale=base.scale / profile.speech_rate)
        self.audio_store = audio_store
        self.audio_base_url = audio_base_url.rstrip("/")
        self.tag = tag or speaker.label
        self.device_id = speaker.mina.device_id
        self.did = speaker.miot_did
        self._mute_stop: asyncio.Event | None = None
        self._mute_task: asyncio.Task[None] | None = None
        self.first_speak_at: float | None = None  # monotonic time of the latest reply's first speak command
        # Raises NotOurSpeaker once another process of the fleet owns the speaker (fence.py);
        # awaited right before every request to it. True: a command; False: a status read.
        self._fence = fence

    async def _ours(self, write: bool = True) -> None:
        if self._fence is not None:
            await self._fence(write)

    # -- muting XiaoAi ---------------------------------------------------------------------------

    def start_muting(self) -> None:
        """Pause the player now and a few more times shortly after, until `stop_muting`."""
        if self._mute_task is not None and not self._mute_task.done():
            return
        self._mute_stop = asyncio.Event()
        self._mute_task = asyncio.create_task(self._mute_loop(self._mute_stop), name=f"{self.tag}-mute")

    async def _mute_loop(self, stop: asyncio.Event) -> None:
        t0 = time.monotonic()
        for offset in MUTE_REPEATS_S:
            delay = t0 + offset - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set() and offset > 0:
                return  # the first pause always goes out: it is the one that matters
            try:
                await self._ours()
                await self.mina.pause(self.device_id)
            except XiaomiError as exc:
                log.info("[%s] muting XiaoAi failed: %s", self.tag, exc)
                return

    async def stop_muting(self) -> None:
        """Stop the repeats; returns after any pause already on its way has been answered, so it
        cannot land on top of our own first sentence."""
        if self._mute_stop is not None:
            self._mute_stop.set()
        if self._mute_task is not None:
            with contextlib.suppress(Exception):
                await self._mute_task
            self._mute_task = None

    # -- speaking --------------------------------------------------------------------------------

    async def say_text(self, text: str) -> float:
        """Speak with XiaoAi's voice; returns the estimated duration in seconds."""
        self._mark_speak()
        if self.profile.mina_tts:
            await self._ours()
            await self.mina.text_to_speech(self.device_id, text)
        else:
            await self._miot_action(self.profile.tts_action, [text])
        return speech_seconds(text, self.timing)

    async def play_audio(self, mp3: bytes, duration_s: float) -> float:
        """Serve `mp3` under a fresh URL and have the speaker play it; returns the expected duration."""
        if self.audio_store is None or not self.audio_base_url:
            raise XiaomiError("server_audio needs xiaomi.audio_base_url and the HTTP port")
        url = self.audio_base_url + self.audio_store.add(mp3)
        await self._ours()
        self._mark_speak()
        if self.profile.play_api == "play_music":
            await self.mina.play_music(self.device_id, url)
        else:
            await self.mina.play_url(self.device_id, url)
        return (duration_s + self.timing.tail_s) * self.timing.scale + self.timing.fetch_allowance_s

    def _mark_speak(self) -> None:
        if self.first_speak_at is None:
            self.first_speak_at = time.monotonic()

    def probe(self) -> Callable[[], Awaitable[bool]] | None:
        """How to ask "still playing?" on this model, or None to go by the estimate."""
        prop = self.profile.playing_prop
        if prop is not None and self.did:
            siid, piid, value = prop

            async def by_prop() -> bool:
                await self._ours(False)
                return await self.miot.get_prop(self.did, siid, piid) == value

            return by_prop
        if self.profile.play_status:
            async def by_status() -> bool:
                await self._ours(False)
                return (await self.mina.play_status(self.device_id)).playing

            return by_status
        return None

    async def wait_done(self, expected_s: float, started: float) -> str:
        return await wait_playback(expected_s, self.probe(), self.timing, started=started)

    # -- other actions ---------------------------------------------------------------------------

    async def wake(self) -> None:
        """Make the speaker listen again (continuous conversation), with the model's wake action."""
        await self._miot_action(self.profile.wake_action, list(self.profile.wake_args))

    async def stop(self) -> None:
        await self._ours()
        await self.mina.stop(self.device_id)

    async def set_volume(self, volume: int) -> None:
        await self._ours()
        await self.mina.set_volume(self.device_id, volume)

    async def volume(self) -> int | None:
        await self._ours(False)
        return (await self.mina.play_status(self.device_id)).volume

    async def _miot_action(self, action: tuple[int, int], args: list[str | int]) -> None:
        if not self.did:
            raise XiaomiError(f"[{self.tag}] no MIoT did known for this speaker; MIoT actions are unavailable")
        await self._ours()
        await self.miot.action(self.did, action[0], action[1], args)
