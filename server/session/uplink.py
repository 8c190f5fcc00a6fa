"""A board's microphone: Opus frames -> PCM -> VAD -> utterances, with the listen state.

Audio and the listen state changes that must apply in order with it (start, stop, detect) go
through one bounded queue to one worker, which hands the frames to the process-wide VAD batcher
(decode + Silero on one thread, batched across sessions: server/providers/vad/batch.py). DTX and
comfort-noise frames need neither: they are silence of the packet's length, handled on the
event loop, right in `audio()` when nothing is queued (see `UplinkAudio`). The queue is bounded
in audio frames (the oldest are dropped when a client floods faster than real time); control
items never drop. Utterances come out through `on_utterance`;
`on_speech` fires for every frame heard while the user is speaking (activity, barge-in).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from server.conversation.metrics import MetricsLog
from server.pipeline.segmenter import SegmenterConfig
from server.providers.base import ASRProvider, VADProvider
from server.session.listener import UplinkAudio, Utterance, UtteranceListener, end_windows
from server.session.ratelog import RateLimitedLog

# Audio the firmware replays before `listen detect` (its wake word); we keep about this much.
WAKE_AUDIO_S = 2.5


class Uplink:
    def __init__(self, vad: VADProvider, asr: ASRProvider, metrics: MetricsLog, *, max_utterance_s: float,
                 queue_frames: int, tag: str, warn: RateLimitedLog,
                 on_utterance: Callable[[Utterance], None], on_speech: Callable[[float], None],
                 on_wake: Callable[[str, float], None]) -> None:
        self.vad = vad
        self.asr = asr
        self.metrics = metrics
        self.tag = tag
        self._warn = warn
        self._on_utterance = on_utterance
        self._on_speech = on_speech
        self._on_wake = on_wake
        self.listening = False
        self.mode = "auto"
        self.frame_ms = 60  # the device's uplink frame length (from its hello)
        s = vad.settings
        self.listener = UtteranceListener(
            SegmenterConfig(threshold=s.threshold, neg_threshold=s.neg_threshold, min_silence_ms=s.min_silence_ms,
                            min_speech_ms=s.min_speech_ms, window_samples=vad.window_samples),
            pre_roll_ms=s.pre_roll_ms, early_asr_ms=s.early_asr_ms, max_utterance_s=max_utterance_s,
            transcribe=self._early_transcribe, tag=tag, windows=end_windows(s),
            partial_asr_ms=getattr(s, "partial_asr_ms", 0), transcribe_partial=self._partial_transcribe,
            count=metrics.count)
        self.input = UplinkAudio(vad, metrics.count)  # decode + VAD, batched across sessions
        self._busy = False  # frames of this session are at the VAD thread
        self._wake_audio: deque[bytes] = deque()
        self._queue: deque[tuple[str, Any]] = deque()
        self._queued_audio = 0
        self._limit = queue_frames
        self._ready = asyncio.Event()

    @property
    def in_speech(self) -> bool:
        return self.listener.in_speech

    @property
    def speech_ms(self) -> float:
        return self.listener.speech_ms

    def close(self) -> None:
        self.listener.close()

    # ------------------------------------------------------------------ input (event loop)

    def audio(self, packet: bytes, arrival: float) -> None:
        if not self._queue and not self._busy and self.listening:
            # Nothing queued or in flight: a DTX/comfort-noise frame is handled right here, no
            # queue, no task switch (the common case for a device that listens to a quiet room).
            silent = self.input.silent(packet)
            if silent is not None:
                self._on_silence(*silent, arrival)
                return
        self._enqueue("audio", (packet, arrival))

    def start(self, mode: str | None) -> None:
        self._enqueue("start", mode)

    def stop(self) -> None:
        self._enqueue("stop", None)

    def wake(self, word: str) -> None:
        self._enqueue("wake", word)

    def reset(self) -> None:
        self._enqueue("reset", None)

    def _enqueue(self, kind: str, value: Any) -> None:
        if kind == "audio" and self._queued_audio >= self._limit or len(self._queue) >= 4 * self._limit:
            # Faster than real time (or we are overloaded): drop the oldest audio (or, for a
            # client spamming listen messages, the oldest item), so memory stays bounded.
            index = next((i for i, (k, _) in enumerate(self._queue) if k == "audio"), 0)
            if self._queue[index][0] == "audio":
                self._queued_audio -= 1
            del self._queue[index]
            self._warn.warn(self.tag, "flood", "uplink arriving faster than it is processed: dropping the oldest")
            self.metrics.count("uplink_frames_dropped")
        self._queue.append((kind, value))
        if kind == "audio":
            self._queued_audio += 1
        self._ready.set()

    # ------------------------------------------------------------------ worker

    async def run(self) -> None:
        """The worker: one per session, until cancelled."""
        while True:
            if not self._queue:
                self._ready.clear()
                await self._ready.wait()
                continue
            kind, value = self._queue.popleft()
            if kind != "audio":
                self._apply(kind, value)
                continue
            self._queued_audio -= 1
            packet, arrival = value
            if not self.listening:
                self._keep_wake_audio(packet)
                continue
            silent = self.input.silent(packet)
            if silent is not None:
                self._on_silence(*silent, arrival)  # DTX: silence, without decoding or the model
                continue
            # This frame and the ones queued right behind it go to the VAD thread as one job.
            frames = [value]
            while self._queue and self._queue[0][0] == "audio" and self.input.needs_decoding(self._queue[0][1][0]):
                frames.append(self._queue.popleft()[1])
                self._queued_audio -= 1
            self._busy = True
            try:
                results = await self.input.process([p for p, _ in frames])
            finally:
                self._busy = False
            for (pcm, probs, error), (_, at) in zip(results, frames, strict=True):
                if pcm is None:
                    self._warn.warn(self.tag, "opus", f"dropped uplink frame: {error}")
                    self.metrics.count("bad_opus_frames")
                    continue
                self._on_pcm(pcm, probs, at)

    def _apply(self, kind: str, value: Any) -> None:
        """Listen state changes, applied in order with the audio that came before them."""
        if kind == "start":
            self.mode = value or self.mode or "auto"
            self.listening = True
            self._reset(self.mode)
        elif kind == "stop":
            self.listening = False
            utterance = self.listener.finish()
            if utterance is not None:
                self._on_utterance(utterance)
            self.input.reset()
        elif kind == "wake":
            discarded = len(self._wake_audio) * self.frame_ms / 1000
            self._wake_audio.clear()
            self._reset()
            self._on_wake(value, discarded)
        elif kind == "reset":
            self._reset()

    def _reset(self, mode: str | None = None) -> None:
        self.listener.reset(mode)
        self.input.reset()

    def _keep_wake_audio(self, packet: bytes) -> None:
        # Frames before `listen detect` are the wake word replay; keep the last ~2.5 s only.
        self._wake_audio.append(packet)
        while len(self._wake_audio) > int(WAKE_AUDIO_S * 1000 / max(self.frame_ms, 10)):
            self._wake_audio.popleft()

    def _on_silence(self, samples: int, windows: int, arrival: float) -> None:
        """A DTX packet: nothing at all to do for a quiet room, else silence fed like audio."""
        if not self.listener.skip_quiet(samples, windows, arrival):
            self._on_pcm(bytes(samples * 2), [0.0] * windows, arrival, quiet=True)

    def _on_pcm(self, pcm: bytes, probs: list[float], arrival: float, *, quiet: bool = False) -> None:
        for utterance in self.listener.feed(pcm, probs, arrival, quiet=quiet):
            self._on_utterance(utterance)
        if self.listener.in_speech:
            self._on_speech(arrival)

    def _early_transcribe(self, audio: bytes) -> Awaitable[Any]:
        """The ASR the listener starts during the endpoint wait, counted as it starts: against
        `early_asr_used`, /metrics shows the work thrown away when the speaker went on."""
        self.metrics.count("early_asr_started")
        return self.asr.transcribe(audio)

    def _partial_transcribe(self, audio: bytes) -> Awaitable[Any] | None:
        """A partial transcript of the utterance so far, if the ASR (as it stands now: a chain
        may have fallen back to a local model) takes partials cheaply; None otherwise."""
        if not self.asr.cheap_partials:
            return None
        self.metrics.count("partial_asr_started")
        return self.asr.transcribe(audio)
