"""Silero VAD, run with onnxruntime on the model file shipped in the `silero-vad` package.

We load only the package's ONNX file (located without importing the package, whose import pulls
in torch) and keep the recurrent state per session in `SileroStream`. One InferenceSession is
shared by every session; calls are serialized on a single worker thread (see `batch.py`), which
also keeps each session's frames in order.

Cost control for many listening devices: a window whose energy is far below speech gets
probability 0 without running the model (its recurrent state is left as it was). "Far below" is
either absolutely quiet (`skip_below_dbfs`: digital silence, DTX comfort noise) or, under
`skip_ceiling_dbfs`, within `skip_near_floor_db` of the stream's own noise floor (a steady
room: fan, hum, street). The floor follows the quietest windows at once and rises slowly, and
only on windows that were not speech, so a long utterance cannot lift it. Speech stands well
above the room it is spoken in, so its windows still reach the model. And the windows of
several sessions that are due at the same time go through the model as one batch
(`process_batch_sync`): one ONNX call for N devices instead of N calls.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from server.providers.base import PCM_RATE, Provider, ProviderSettings, ProviderUnavailable

WINDOW = 512  # samples at 16 kHz (32 ms): the window the model is trained on
CONTEXT = 64  # samples of the previous window the model expects in front of each window
_ZEROS = np.zeros(WINDOW, dtype=np.float32)
_ZEROS.flags.writeable = False
_ZERO_CONTEXT = np.zeros((1, CONTEXT), dtype=np.float32)
_ZERO_CONTEXT.flags.writeable = False
FLOOR_START_DB = -60.0  # a new stream's noise floor estimate (dBFS)
FLOOR_RISE = 0.05  # share of the gap the floor rises per non-speech window (~1 s to settle)
FLOOR_SPEECH_PROB = 0.2  # a window the model scores above this is speech: the floor stays


class SileroSettings(ProviderSettings):
    type: str = "silero"
    # Probability above which a window counts as speech, and below which it counts as silence
    # again (hysteresis between the two avoids flapping on soft syllables).
    threshold: float = Field(default=0.5, gt=0, lt=1)
    neg_threshold: float = Field(default=0.35, gt=0, lt=1)
    # Silence (in audio time) that ends an utterance in auto/realtime mode.
    min_silence_ms: int = Field(default=500, ge=100, le=5000)
    # Speech shorter than this is a cough or a click, not an utterance.
    min_speech_ms: int = Field(default=250, ge=0, le=5000)
    # Audio kept before the detected start of speech, so the first syllable is not clipped.
    pre_roll_ms: int = Field(default=300, ge=0, le=2000)
    # Start recognising after this much silence, while still waiting for min_silence_ms to
    # confirm the end: if the user stays quiet the transcript is ready sooner; if they go on,
    # the early result is thrown away. 0 disables it.
    early_asr_ms: int = Field(default=200, ge=0, le=5000)
    # Partial transcripts while the user speaks: every this-many ms of new speech the growing
    # utterance is transcribed in the background (one at a time per session), and once more at
    # the pause, so the end of turn can read it and the final transcript can reuse it. Only on
    # ASR providers that declare them cheap (remote ones; local Whisper with `asr.partials: true`).
    # 0 disables it.
    partial_asr_ms: int = Field(default=500, ge=0, le=10000)
    # Adaptive end of turn (needs early_asr_ms > 0): the early transcript picks the silence that
    # ends the utterance: short_silence_ms when it reads as a finished request, long_silence_ms
    # when it trails off ("and then...", "嗯..."), min_silence_ms while it is not known yet.
    adaptive_end: bool = True
    short_silence_ms: int = Field(default=300, ge=100, le=5000)
    long_silence_ms: int = Field(default=1000, ge=100, le=5000)
    # Speculative reply (needs early_asr_ms > 0): start the LLM and the first sentence's TTS on
    # the early transcript, silently, and let it speak the moment the endpoint confirms that
    # utterance; thrown away if the user goes on (counted in /metrics as speculation_*).
    speculate: bool = True
    # Windows (32 ms) quieter than this RMS level count as silence without running the model
    # (digital silence, DTX comfort noise). Speech at a device's microphone is typically -40 to
    # -20 dBFS. -140 runs the model on everything but exact digital silence.
    skip_below_dbfs: float = Field(default=-60.0, ge=-140, le=0)
    # Also skipped: windows within this many dB of the stream's noise floor, if quieter than
    # skip_ceiling_dbfs (a steady room noise). 0 turns this off.
    skip_near_floor_db: float = Field(default=6.0, ge=0, le=30)
    skip_ceiling_dbfs: float = Field(default=-35.0, ge=-140, le=0)
    # An ONNX file to use instead of the one in the silero-vad package.
    model_path: str = ""


def packaged_model_path() -> Path:
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ProviderUnavailable("vad.silero: the 'silero-vad' package is not installed (pip install silero-vad)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise ProviderUnavailable(f"vad.silero: model file missing from the silero-vad package: {path}")
    return path


class SileroStream:
    """One session's VAD state: the model's recurrent state, the context samples and any
    samples that did not fill a whole window yet."""

    __slots__ = ("_context", "_floor_db", "_pending", "_state", "window_samples")

    def __init__(self) -> None:
        self.window_samples = WINDOW
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros((1, CONTEXT), dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self._floor_db = FLOOR_START_DB

    def skip_silence(self, samples: int) -> int:
        """`samples` of silence that need no model (a DTX packet): the windows they complete,
        each of which has probability 0. The recurrent state is kept, the context is silence."""
        total = self._pending.size + samples
        windows = total // WINDOW
        if windows:
            # Shared read-only zeros: this runs for every DTX frame of every listening device.
            self._context = _ZERO_CONTEXT
            self._pending = _ZEROS[:total - windows * WINDOW]
        else:
            self._pending = np.concatenate([self._pending, np.zeros(samples, dtype=np.float32)])
        return windows


class SileroVAD(Provider):
    kind = "vad"
    local = True
    Settings = SileroSettings
    settings: SileroSettings

    window_samples = WINDOW

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._session: Any = None
        self._sr = np.array(PCM_RATE, dtype=np.int64)
        st = self.settings
        self._quiet_db = st.skip_below_dbfs
        self._near_db = st.skip_near_floor_db
        self._ceiling_db = st.skip_ceiling_dbfs
        self.windows_run = 0  # windows the model ran on
        self.windows_skipped = 0  # quiet windows (probability 0 without the model)
        self.batches = 0  # model calls
        self._uplink_batcher: Any = None  # set by server.providers.vad.batch.batcher_for

    async def load(self) -> None:
        path = (self.context.resolve(self.settings.model_path) if self.settings.model_path
                else packaged_model_path())
        if not path.is_file():
            raise ProviderUnavailable(f"vad.silero: model_path {path} does not exist")
        try:
            import onnxruntime
        except ImportError:
            raise ProviderUnavailable("vad.silero: onnxruntime is not installed (pip install onnxruntime)") from None

        def build() -> Any:
            opts = onnxruntime.SessionOptions()
            # A 32 ms window is tiny: one thread is faster than paying for a thread team.
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            return onnxruntime.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])

        self._session = await self.run_blocking(build)

    def new_stream(self) -> SileroStream:
        return SileroStream()

    def process_sync(self, stream: SileroStream, pcm: bytes) -> list[float]:
        return self.process_batch_sync([(stream, pcm)])[0]

    def process_batch_sync(self, items: list[tuple[SileroStream, bytes]]) -> list[list[float]]:
        """Speech probabilities for several streams at once (one item per stream: a stream must
        not appear twice). Window k of every stream that has one goes through the model in the
        same call; windows under the energy floor get 0 and do not touch the model state."""
        plans: list[tuple[SileroStream, np.ndarray, list[float], list[float]]] = []
        depth = 0
        for stream, pcm in items:
            samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
            buf = np.concatenate([stream._pending, samples]) if stream._pending.size else samples
            n = buf.size // WINDOW
            windows = buf[:n * WINDOW].reshape(n, WINDOW)
            energy = np.einsum("ij,ij->i", windows, windows) / WINDOW
            level_db = (10 * np.log10(np.maximum(energy, 1e-14))).tolist()
            stream._pending = buf[n * WINDOW:].copy()
            plans.append((stream, windows, level_db, [0.0] * n))
            depth = max(depth, n)
        for k in range(depth):
            rows: list[int] = []
            for index, (stream, windows, level_db, _) in enumerate(plans):
                if k >= len(windows):
                    continue
                level = level_db[k]
                if level < self._quiet_db or (level < self._ceiling_db and level < stream._floor_db + self._near_db):
                    stream._context = windows[k:k + 1, -CONTEXT:]
                    self.windows_skipped += 1
                    self._follow_floor(stream, level)
                else:
                    rows.append(index)
            if rows:
                self._run_rows(plans, rows, k)
        return [plan[3] for plan in plans]

    def _follow_floor(self, stream: SileroStream, level: float) -> None:
        """Noise floor: down at once to a quieter window (not below the absolute skip level,
        so a stretch of digital silence does not leave it far under the room), up slowly."""
        if level < stream._floor_db:
            stream._floor_db = max(level, self._quiet_db)
        else:
            stream._floor_db += FLOOR_RISE * (level - stream._floor_db)

    def _run_rows(self, plans: list[tuple[SileroStream, np.ndarray, list[float], list[float]]],
                  rows: list[int], k: int) -> None:
        x = np.concatenate([np.concatenate([plans[i][0]._context, plans[i][1][k:k + 1]], axis=1) for i in rows])
        state = (plans[rows[0]][0]._state if len(rows) == 1
                 else np.concatenate([plans[i][0]._state for i in rows], axis=1))
        out, state = self._session.run(None, {"input": x, "state": state, "sr": self._sr})
        self.batches += 1
        self.windows_run += len(rows)
        for j, i in enumerate(rows):
            stream = plans[i][0]
            stream._state = state[:, j:j + 1, :] if len(rows) > 1 else state
            stream._context = x[j:j + 1, -CONTEXT:]
            prob = plans[i][3][k] = float(out[j][0])
            if prob < FLOOR_SPEECH_PROB or plans[i][2][k] < stream._floor_db:
                self._follow_floor(stream, plans[i][2][k])

    async def process(self, stream: SileroStream, pcm: bytes) -> list[float]:
        return await self.run_blocking(self.process_sync, stream, pcm)

    async def close(self) -> None:
        if self._uplink_batcher is not None:
            self._uplink_batcher.close()
        await super().close()
