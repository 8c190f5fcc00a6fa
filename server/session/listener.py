"""Decoded microphone audio of one device -> utterances, endpointed in audio time.

Auto and realtime modes: the segmenter ends an utterance after enough silence. While that
silence is still being confirmed, ASR already starts on the audio so far (`early_asr_ms`); if
the user stays quiet that transcript is handed to the turn, if they go on talking it is dropped.
With adaptive end of turn (`windows`), that early transcript also decides how much silence ends
this utterance (server.pipeline.turn_end): a finished-sounding request ends after the short
window, one that trails off ("and then...") waits for the long one, and while the transcript
is not known yet the default window applies.
Partial transcripts (`partial_asr_ms`, on ASR providers that declare `cheap_partials`): every
that-many ms of new speech, the growing utterance is transcribed in the background, at most one
at a time per session; a result for an utterance that has since ended is dropped. Once the
speech pauses for the tail the utterance would carry (`TAIL_SAMPLES`), a closing partial is taken
of exactly the audio the early transcription would send: its text tells the end of turn whether
the request reads finished (it covers every voiced sample), and the early transcription / the
final transcript reuse it instead of sending the same audio again.
Manual mode: everything between listen start and listen stop is the utterance (if VAD heard any
speech in it).

No socket, no turns: the session feeds PCM and VAD probabilities in and starts a turn for each
`Utterance` that comes out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from server.audio.opus import OpusDecoder, dtx_samples
from server.pipeline.segmenter import Segment, Segmenter, SegmenterConfig, SegmentEvent
from server.pipeline.turn_end import TurnEnd, TurnEndWindows, classify
from server.providers.base import PCM_RATE
from server.providers.vad.batch import batcher_for

log = logging.getLogger("server.session")

# Audio kept after the last voiced window: Whisper transcribes better with a short trailing pause.
TAIL_SAMPLES = PCM_RATE // 10


def end_windows(vad_settings: Any) -> TurnEndWindows | None:
    """The adaptive end-of-turn windows a VAD config asks for (None: a fixed window)."""
    if not getattr(vad_settings, "adaptive_end", False):
        return None
    default = vad_settings.min_silence_ms
    return TurnEndWindows(short_ms=min(vad_settings.short_silence_ms, default), default_ms=default,
                          long_ms=max(vad_settings.long_silence_ms, default))


FrameResult = tuple[bytes | None, list[float], str | None]  # (PCM or None, VAD probabilities, error)


class UplinkAudio:
    """One session's microphone packets -> PCM and VAD probabilities.

    A DTX packet (1-2 bytes: the encoder had nothing to send) is silence of the packet's
    duration: it is answered here, on the event loop, without decoding or running the model;
    the VAD stream and the segmenter still advance by its length in audio time. Everything else
    goes to the process-wide batcher (decode + VAD on one thread, batched across sessions)."""

    def __init__(self, vad: Any, count: Callable[[str, int], None] | None = None) -> None:
        self._vad = vad
        self._stream = vad.new_stream()
        self._skip = getattr(self._stream, "skip_silence", None)
        self._decoder = OpusDecoder(PCM_RATE)
        self._batcher = batcher_for(vad)
        if count is not None and self._batcher.count is None:
            self._batcher.count = count
        self._count = count

    def _counted(self, name: str) -> None:
        if self._count is not None:
            self._count(name, 1)

    def reset(self) -> None:
        self._stream.reset()

    def silent(self, packet: bytes) -> tuple[int, int] | None:
        """For a DTX packet: (samples of silence, VAD windows it completes), the VAD stream
        advanced past it; None for a packet that needs decoding."""
        samples = dtx_samples(packet) if self._skip is not None else None
        if samples is None:
            return None
        self._counted("uplink_dtx_frames")
        return samples, self._skip(samples)

    def needs_decoding(self, packet: bytes) -> bool:
        return self._skip is None or dtx_samples(packet) is None

    async def process(self, packets: list[bytes]) -> list[FrameResult]:
        if self._count is not None:
            self._count("uplink_decoded_frames", len(packets))
        return await self._batcher.submit(self._decoder.decode, self._stream, packets)


@dataclass(slots=True)
class Partial:
    """One partial transcription of the utterance so far."""

    speech_start: int  # sample position where the utterance's speech began
    voiced_end: int  # the last voiced sample it covers
    bounds: tuple[int, int]  # the audio sent (sample positions, pre-roll and tail included)
    task: asyncio.Task[Any]
    text: str | None = None  # once done

    def usable(self) -> bool:
        t = self.task
        return not t.cancelled() and (not t.done() or t.exception() is None)


@dataclass(slots=True)
class Utterance:
    audio: bytes  # PCM16 mono 16 kHz
    speech_end_arrival: float | None  # when the frame holding the last speech sample arrived
    endpoint: float  # when the end of the utterance was decided
    asr_task: asyncio.Task[Any] | None = None  # an early transcription of exactly this audio


class UtteranceListener:
    def __init__(self, segmenter: SegmenterConfig, *, pre_roll_ms: int, early_asr_ms: int, max_utterance_s: float,
                 transcribe: Callable[[bytes], Awaitable[Any]] | None = None, tag: str = "",
                 windows: TurnEndWindows | None = None, partial_asr_ms: int = 0,
                 transcribe_partial: Callable[[bytes], Awaitable[Any] | None] | None = None,
                 count: Callable[[str], None] | None = None) -> None:
        self._windows = windows if transcribe is not None and early_asr_ms else None
        if self._windows is not None:
            # The segmenter itself only ends at the longest window; shorter ends are decided here.
            segmenter = dataclasses.replace(segmenter, min_silence_ms=max(self._windows.long_ms,
                                                                          self._windows.default_ms))
        self._segmenter = Segmenter(segmenter)
        self._pre_roll = pre_roll_ms * PCM_RATE // 1000
        self._early_after = early_asr_ms * PCM_RATE // 1000 if transcribe is not None else 0
        self._max_samples = int(max_utterance_s * PCM_RATE)
        self._transcribe = transcribe
        self._partial_every = partial_asr_ms * PCM_RATE // 1000 if transcribe_partial is not None else 0
        self._transcribe_partial = transcribe_partial
        self._partial: Partial | None = None  # in flight (at most one)
        self._latest: Partial | None = None  # the newest finished partial of the current utterance
        self._closing: tuple[int, int] | None = None  # audio bounds of the last closing partial taken
        self._count = count
        # Partial text of the current utterance, as it grows (tests, logs; not sent to the device).
        self.on_partial: Callable[[str], None] | None = None
        self.tag = tag
        self.mode = "auto"
        self.early_used = 0  # early transcripts that were handed to a turn (for metrics)
        self.last_decision: TurnEnd | None = None  # adaptive end: the decision for the last utterance
        self._audio = bytearray()  # audio since the last reset, trimmed while nobody speaks
        self._audio_start = 0  # sample position of _audio[0]
        self._audio_pos = 0  # samples received since the last reset
        self._sound_end = 0  # where the last PCM that was not DTX silence ends (skip_quiet)
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=400)  # (end sample, arrival time)
        self.speech_seen = False
        self._early: tuple[tuple[int, int], asyncio.Task[Any]] | None = None
        # Speculation hooks: an early transcript finished while the silence is still being
        # confirmed (the reply can start on it), or one was thrown away (the user went on, or
        # the utterance turned out different): whatever was started on it must stop.
        self.on_early_ready: Callable[[asyncio.Task[Any]], None] | None = None
        self.on_early_dropped: Callable[[asyncio.Task[Any]], None] | None = None

    @property
    def in_speech(self) -> bool:
        return self._segmenter.in_speech

    @property
    def speech_ms(self) -> float:
        return self._segmenter.speech_ms

    def reset(self, mode: str | None = None) -> None:
        if mode is not None:
            self.mode = mode
        self._drop_early()
        self._drop_partials()
        self._segmenter.reset()
        self._audio.clear()
        self._audio_start = self._audio_pos = self._sound_end = 0
        self._arrivals.clear()
        self.speech_seen = False

    def close(self) -> None:
        self._drop_early()
        self._drop_partials()

    @property
    def partial_text(self) -> str | None:
        """The newest partial transcript of the utterance in progress (None: none yet)."""
        latest = self._latest
        if latest is None or not self._segmenter.in_speech or latest.speech_start != self._segmenter.speech_start:
            return None
        return latest.text

    # ------------------------------------------------------------------ feeding

    def skip_quiet(self, samples: int, windows: int, arrival: float) -> bool:
        """`samples` of digital silence (a DTX packet) with `windows` VAD windows of probability 0,
        taken without building PCM when that changes nothing: no speech in progress, not manual
        mode, and the kept audio is all silence already (then it only moves along in time; it is
        dropped, since a missing pre-roll is filled with the same silence). False: use `feed`."""
        if self._segmenter.in_speech or self.mode == "manual" or self._sound_end > self._audio_start:
            return False
        self._segmenter.skip_quiet(windows)
        self._audio.clear()
        self._audio_pos += samples
        self._audio_start = self._audio_pos
        self._arrivals.append((self._audio_pos, arrival))
        return True

    def feed(self, pcm: bytes, probs: list[float], arrival: float, *, quiet: bool = False) -> list[Utterance]:
        """PCM and its VAD probabilities; `quiet`: the PCM is digital silence (a DTX packet)."""
        self._audio.extend(pcm)
        if not quiet:
            self._sound_end = self._audio_pos + len(pcm) // 2
        self._audio_pos += len(pcm) // 2
        self._arrivals.append((self._audio_pos, arrival))
        out: list[Utterance] = []
        seg = self._segmenter
        adaptive = self._windows is not None and self.mode != "manual"
        for prob in probs:
            segment = seg.feed(prob)
            if segment is None and adaptive and seg.in_speech and seg.silence_ms >= self._windows.short_ms \
                    and seg.silence_ms >= self._window_ms():
                segment = seg.end()
            utterance = self._on_segment(segment)
            if utterance is not None:
                out.append(utterance)
        if self.mode == "manual":
            if len(self._audio) > self._max_samples * 2:
                # Kept until listen stop, up to the utterance limit (the newest audio wins).
                del self._audio[: len(self._audio) - self._max_samples * 2]
                self._audio_start = self._audio_pos - len(self._audio) // 2
        elif seg.in_speech:
            self._maybe_start_partial()
            self._maybe_start_early_asr()
            if seg.position - seg.speech_start > self._max_samples:
                log.info("[%s] utterance reached %.0f s: cutting it here", self.tag, self._max_samples / PCM_RATE)
                utterance = self._on_segment(seg.end())
                if utterance is not None:
                    out.append(utterance)
        else:
            self._trim_idle()
        return out

    def finish(self) -> Utterance | None:
        """listen stop. Manual mode: the utterance is everything since listen start. Other modes:
        speech in progress is finished now rather than thrown away."""
        try:
            if self.mode == "manual":
                if self.speech_seen and self._audio:
                    last = self._arrivals[-1][1] if self._arrivals else None
                    return Utterance(bytes(self._audio), last, time.monotonic())
                if self._audio:
                    log.info("[%s] listen stop: no speech in %.1f s of audio", self.tag,
                             len(self._audio) / 2 / PCM_RATE)
                return None
            return self._on_segment(self._segmenter.end()) if self._segmenter.in_speech else None
        finally:
            self.reset()

    # ------------------------------------------------------------------ internals

    def _on_segment(self, seg: Segment | None) -> Utterance | None:
        if seg is None:
            return None
        if seg.event is SegmentEvent.SPEECH_START:
            self.speech_seen = True
            return None
        if seg.event is SegmentEvent.DISCARD:
            self._drop_partials()
            log.debug("[%s] discarded %.0f ms blip", self.tag, (seg.end - seg.start) / 16)
            return None
        if self.mode == "manual":
            return None  # manual mode ends on listen stop, not on silence
        start, end = self._bounds(seg.start, seg.end)
        utterance = Utterance(self._utterance_audio(seg.start, start, end), self._arrival_of(seg.end),
                              time.monotonic(), self._take_early(seg.start, seg.end))
        self._drop_partials(keep=utterance.asr_task)
        # Drop what was consumed; keep the tail so speech right after still has its pre-roll.
        del self._audio[: (end - self._audio_start) * 2]
        self._audio_start = end
        return utterance

    def _bounds(self, start: int, end: int) -> tuple[int, int]:
        return max(self._audio_start, start - self._pre_roll), min(self._audio_pos, end + TAIL_SAMPLES)

    def _slice(self, start: int, end: int) -> bytes:
        return bytes(self._audio[(start - self._audio_start) * 2:(end - self._audio_start) * 2])

    def _utterance_audio(self, speech_start: int, start: int, end: int) -> bytes:
        """The utterance with its full pre-roll: when speech began right at listen start there is
        no audio before it, and Whisper-class models mistranscribe a first word with no lead-in,
        so the missing part of the pre-roll is filled with silence."""
        missing = max(0, self._pre_roll - (speech_start - start))
        return b"\x00\x00" * missing + self._slice(start, end)

    def _trim_idle(self) -> None:
        keep = (self._pre_roll + self._segmenter.config.window_samples * 8) * 2
        if len(self._audio) > keep * 2:
            drop = len(self._audio) - keep
            del self._audio[:drop]
            self._audio_start += drop // 2

    def _arrival_of(self, sample: int) -> float | None:
        for end, when in self._arrivals:
            if end >= sample:
                return when
        return self._arrivals[-1][1] if self._arrivals else None

    def _window_ms(self) -> int:
        """The silence that ends the current utterance: from the early transcript once it is
        known (and is of the audio up to now), else the default."""
        assert self._windows is not None
        decision = TurnEnd.DEFAULT
        early = self._early
        seg = self._segmenter
        if early is not None and early[0] == (seg.speech_start, seg.last_voiced_end) and early[1].done() \
                and not early[1].cancelled() and early[1].exception() is None:
            decision = classify(_text(early[1].result()))
        else:
            # A partial that covers every voiced sample reads as well as the early transcript
            # (an older one does not: the words said after it may change how the request ends).
            latest = self._latest
            if latest is not None and latest.text is not None and latest.speech_start == seg.speech_start \
                    and latest.voiced_end == seg.last_voiced_end:
                decision = classify(latest.text)
        self.last_decision = decision
        return self._windows.for_decision(decision)

    def _maybe_start_early_asr(self) -> None:
        seg = self._segmenter
        if not self._early_after or self._transcribe is None:
            return
        key = (seg.speech_start, seg.last_voiced_end)
        if seg.silence_ms * PCM_RATE / 1000 < self._early_after:
            if self._early is not None and seg.silence_ms == 0:
                self._drop_early()  # the user went on talking
            return
        if self._early is not None and self._early[0] == key:
            return
        if seg.last_voiced_end - seg.speech_start < seg.config.min_speech_ms * PCM_RATE // 1000:
            return  # would be discarded as a blip anyway
        self._drop_early()
        bounds = self._bounds(*key)
        reused = self._partial_of(key, bounds)
        if reused is not None:
            task = reused  # the closing partial sent exactly this audio: no second request
            self._counted("partial_asr_reused")
        else:
            task = asyncio.ensure_future(self._transcribe(self._utterance_audio(key[0], *bounds)))
        self._early = (key, task)
        task.add_done_callback(self._early_done)

    def _early_done(self, task: asyncio.Task[Any]) -> None:
        if self.on_early_ready is None or task.cancelled() or task.exception() is not None:
            return
        if self._early is not None and self._early[1] is task and self._segmenter.in_speech:
            self.on_early_ready(task)

    def _drop_early(self) -> None:
        if self._early is not None:
            task = self._early[1]
            task.cancel()
            self._early = None
            if self.on_early_dropped is not None:
                self.on_early_dropped(task)

    def _take_early(self, start: int, end: int) -> asyncio.Task[Any] | None:
        early, self._early = self._early, None
        if early is None:
            # Ended before the early transcription started (a window shorter than early_asr_ms,
            # the length limit): a partial of exactly this audio is as good.
            task = self._partial_of((start, end), self._bounds(start, end))
            if task is not None:
                self._counted("partial_asr_reused")
                self.early_used += 1
            return task
        if early[0] == (start, end):
            self.early_used += 1
            return early[1]
        early[1].cancel()
        if self.on_early_dropped is not None:
            self.on_early_dropped(early[1])
        return None

    # ------------------------------------------------------------------ partial transcripts

    def _counted(self, name: str) -> None:
        if self._count is not None:
            self._count(name)

    def _maybe_start_partial(self) -> None:
        """Every `partial_asr_ms` of new speech, and once at the pause (the closing partial), if
        none is in flight."""
        if not self._partial_every or self._transcribe_partial is None:
            return
        seg = self._segmenter
        latest = self._latest if self._latest is not None and self._latest.speech_start == seg.speech_start else None
        covered = latest.voiced_end if latest is not None else seg.speech_start
        key = (seg.speech_start, seg.last_voiced_end)
        bounds = self._bounds(*key)
        silence = seg.silence_ms * PCM_RATE / 1000
        if silence >= TAIL_SAMPLES:
            # The closing partial: the pause is long enough for the audio the early
            # transcription would send to be complete; taken once, before that one starts.
            if self._early is not None or self._partial_of(key, bounds) is not None or self._closing == bounds:
                return
            if self._partial is not None:
                # A partial of fewer words is still in flight: its answer is stale already, and
                # waiting for it would put the closing one (and the reply speculated on it) up to
                # a whole request later. It is cancelled; still one request in flight at most.
                self._partial.task.cancel()
                self._partial = None
                self._counted("partial_asr_superseded")
            self._closing = bounds  # once per pause, even if that request fails
        elif self._partial is not None or seg.last_voiced_end - covered < self._partial_every:
            return
        if seg.last_voiced_end - seg.speech_start < seg.config.min_speech_ms * PCM_RATE // 1000:
            return  # a blip so far
        pending = self._transcribe_partial(self._utterance_audio(key[0], *bounds))
        if pending is None:
            return  # the provider does not take partials now (e.g. a chain fell back to a local one)
        task = asyncio.ensure_future(pending)
        self._partial = Partial(key[0], key[1], bounds, task)
        task.add_done_callback(self._partial_done)

    def _partial_done(self, task: asyncio.Task[Any]) -> None:
        partial = self._partial
        if partial is None or partial.task is not task:
            return  # dropped (the utterance ended or was reset): a stale result
        self._partial = None
        if task.cancelled() or task.exception() is not None:
            return
        seg = self._segmenter
        if not seg.in_speech or seg.speech_start != partial.speech_start:
            return  # the utterance it belongs to is over
        partial.text = _text(task.result())
        self._latest = partial
        if self.on_partial is not None:
            self.on_partial(partial.text)
        log.debug("[%s] partial (%d ms): %r", self.tag, (partial.voiced_end - partial.speech_start) // 16,
                  partial.text[:60])

    def _partial_of(self, key: tuple[int, int], bounds: tuple[int, int]) -> asyncio.Task[Any] | None:
        """The task of a partial (in flight or done) of exactly this utterance's audio, if any."""
        for partial in (self._partial, self._latest):
            if partial is not None and (partial.speech_start, partial.voiced_end) == key \
                    and partial.bounds == bounds and partial.usable():
                return partial.task
        return None

    def _drop_partials(self, keep: asyncio.Task[Any] | None = None) -> None:
        partial, self._partial, self._latest, self._closing = self._partial, None, None, None
        early = self._early[1] if self._early is not None else None
        if partial is not None and partial.task is not keep and partial.task is not early:
            partial.task.cancel()


def _text(result: Any) -> str:
    return str(getattr(result, "text", result) or "")
