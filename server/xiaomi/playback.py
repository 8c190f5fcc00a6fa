"""Waiting for the speaker to finish what it is saying or playing, before the next sentence.

Three ways, by model (models.yaml): an MIoT "playing-state" property, MiNA's player status, or,
where neither is reliable, an estimate from the text or audio length. A probe that says "not
playing" before playback has even started is not believed until the estimate has passed; a
status stuck at "playing" (reported by mi-gpt users) is cut off at twice the estimate."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("server.xiaomi")

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"[A-Za-z0-9']+")
_PAUSE = re.compile(r"[，。！？；、,.!?;:：]")


@dataclass(frozen=True)
class PlaybackTiming:
    """Speaking rates and polling periods. Tests pass faster ones; the defaults fit real speakers."""

    cjk_chars_per_s: float = 4.5     # XiaoAi's Mandarin TTS (the rate xiaogpt assumes)
    words_per_s: float = 2.6         # English words
    pause_s: float = 0.25            # per punctuation mark (the TTS pauses at each)
    tail_s: float = 0.3              # margin: a short gap is better than cutting the sentence off
    min_s: float = 0.6
    # A played URL starts only once the speaker has fetched and buffered it (not scaled: network).
    fetch_allowance_s: float = 0.8
    poll_s: float = 0.4              # between status probes
    scale: float = 1.0               # 1 / the model's speech_rate: applied to estimates and polling
    stuck_factor: float = 2.0        # "playing" longer than this times the estimate: stop waiting
    stuck_extra_s: float = 3.0


def speech_seconds(text: str, timing: PlaybackTiming) -> float:
    cjk = len(_CJK.findall(text))
    words = len(_WORD.findall(text))
    pauses = len(_PAUSE.findall(text))
    seconds = cjk / timing.cjk_chars_per_s + words / timing.words_per_s + pauses * timing.pause_s + timing.tail_s
    return max(timing.min_s, seconds) * timing.scale


async def wait_playback(expected_s: float, probe: Callable[[], Awaitable[bool]] | None, timing: PlaybackTiming,
                        *, started: float | None = None,
                        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                        clock: Callable[[], float] = time.monotonic) -> str:
    """Return once playback of something expected to last `expected_s` has ended. `probe`
    answers "is it still playing?" (None: no usable status; wait the estimate). Returns how it
    ended: "estimate", "status" or "stuck"."""
    t0 = clock() if started is None else started
    if probe is None:
        remaining = expected_s - (clock() - t0)
        if remaining > 0:
            await sleep(remaining)
        return "estimate"
    seen_playing = False
    # The extra time is not scaled by the speaking rate: it covers fetching and buffering.
    deadline = t0 + expected_s * timing.stuck_factor + timing.stuck_extra_s
    while True:
        try:
            playing = await probe()
        except Exception as exc:  # noqa: BLE001 - a failed probe falls back to the estimate
            log.debug("play status probe failed (%s); waiting the estimate", exc)
            return await wait_playback(expected_s, None, timing, started=t0, sleep=sleep, clock=clock)
        now = clock()
        if playing:
            seen_playing = True
        elif seen_playing or now - t0 >= expected_s:
            return "status"
        if now >= deadline:
            log.info("the speaker still reports playing after %.1f s (expected %.1f s); going on",
                     now - t0, expected_s)
            return "stuck"
        await sleep(max(0.05, timing.poll_s * timing.scale))
