"""Silero VAD, run with onnxruntime on the model file shipped in the `silero-vad` package.

We load only the package's ONNX file (located without importing the package, whose import pulls
in torch) and keep the recurrent state per session in `SileroStream`. One InferenceSession is
shared by every session; calls are serialized on a single worker thread, which also keeps each
session's frames in order.
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

    __slots__ = ("_context", "_pending", "_state", "window_samples")

    def __init__(self) -> None:
        self.window_samples = WINDOW
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros((1, CONTEXT), dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)


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
        samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
        buf = np.concatenate([stream._pending, samples]) if stream._pending.size else samples
        probs: list[float] = []
        n = buf.size // WINDOW
        for i in range(n):
            window = buf[i * WINDOW:(i + 1) * WINDOW].reshape(1, WINDOW)
            x = np.concatenate([stream._context, window], axis=1)
            out, state = self._session.run(None, {"input": x, "state": stream._state, "sr": self._sr})
            stream._state = state
            stream._context = x[:, -CONTEXT:]
            probs.append(float(out[0][0]))
        stream._pending = buf[n * WINDOW:].copy()
        return probs

    async def process(self, stream: SileroStream, pcm: bytes) -> list[float]:
        return await self.run_blocking(self.process_sync, stream, pcm)
