"""Speech recognition through any OpenAI-compatible `/audio/transcriptions` endpoint: OpenAI
(whisper-1, gpt-4o-mini-transcribe), SiliconFlow (FunAudioLLM/SenseVoiceSmall), Groq
(whisper-large-v3-turbo), a local faster-whisper / speaches server.

The reference server posted with sync `requests` and no timeout from inside a coroutine, so one
slow upload froze every device on the loop. Here an async request uploads a WAV built from the
utterance's PCM (plain aiohttp, not the SDK: less CPU on the event loop), bounded by
`timeout_s`, retried on 429/5xx/network errors.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from pydantic import Field

from server.providers.base import PCM_RATE, ProviderSettings, Transcript
from server.providers.openai_common import (
    OpenAIClientProvider,
    OpenAIProviderError,
    error_body_message,
    network_error,
    retry_after_header,
    status_error,
)
from server.providers.retry import call_with_retries, exponential

# Shorter clips are rejected by OpenAI ("audio too short") and carry no words anyway.
MIN_AUDIO_S = 0.1

# SenseVoice tags (`<|zh|><|HAPPY|><|Speech|><|withitn|>text`), which some hosts pass through.
_TAG = re.compile(r"<\|([^|]*)\|>")
_LANGS = {"zh", "en", "yue", "ja", "ko"}
_EMOTIONS = {"HAPPY", "SAD", "ANGRY", "NEUTRAL", "FEARFUL", "DISGUSTED", "SURPRISED"}


class OpenAIASRSettings(ProviderSettings):
    type: str = "openai"
    base_url: str = "https://api.openai.com/v1"
    api_key: str = ""  # empty for local servers that need none
    # whisper-1 | gpt-4o-mini-transcribe (OpenAI), FunAudioLLM/SenseVoiceSmall (SiliconFlow),
    # whisper-large-v3-turbo (Groq), whatever model a local server loaded.
    model: str = "whisper-1"
    # ISO-639-1 code ("zh", "en"...) to skip language detection; None or "auto": detect.
    language: str | None = None
    # Vocabulary or style hint (names, the wake word...); empty: none.
    prompt: str = ""
    # Whole request: upload, recognition, answer.
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    retries: int = Field(default=1, ge=0, le=5)
    retry_backoff_s: float = Field(default=0.3, ge=0, le=30)
    extra_body: dict[str, Any] = Field(default_factory=dict)  # extra form fields
    # Partial transcripts while the user speaks (vad.partial_asr_ms): a remote service does the
    # work, so they cost an upload each; false to save requests on a metered plan.
    partials: bool = True


def parse_tags(text: str) -> tuple[str, str | None, str | None]:
    """Strip SenseVoice-style tags; return (text, language, emotion)."""
    language = emotion = None
    for tag in _TAG.findall(text):
        if tag in _LANGS and language is None:
            language = tag
        elif tag in _EMOTIONS and emotion is None:
            emotion = tag.lower()
    return _TAG.sub("", text).strip(), language, emotion


class OpenAIASR(OpenAIClientProvider):
    kind = "asr"
    local = False
    Settings = OpenAIASRSettings
    settings: OpenAIASRSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cheap_partials = self.settings.partials

    async def transcribe(self, pcm: bytes, sample_rate: int = PCM_RATE) -> Transcript:
        from server.audio.pcm import write_wav

        self._check_loaded()
        if len(pcm) / 2 / sample_rate < MIN_AUDIO_S:
            return Transcript(text="")
        s = self.settings
        wav = write_wav(pcm, sample_rate)  # a header and a copy: microseconds, fine on the loop
        return await call_with_retries(self.name, s.retries, exponential(s.retry_backoff_s), lambda: self._request(wav))

    def form(self, wav: bytes) -> Any:
        import aiohttp

        s = self.settings
        form = aiohttp.FormData()
        form.add_field("file", wav, filename="speech.wav", content_type="audio/wav")
        form.add_field("model", s.model)
        if s.language and s.language != "auto":
            form.add_field("language", s.language)
        if s.prompt:
            form.add_field("prompt", s.prompt)
        for key, value in s.extra_body.items():
            form.add_field(key, value if isinstance(value, str) else json.dumps(value))
        return form

    async def _request(self, wav: bytes) -> Transcript:
        # Plain aiohttp rather than the SDK: one multipart POST and a JSON answer, without the
        # SDK's per-request CPU on the event loop (see OpenAIClientProvider.plain_session).
        import aiohttp

        s = self.settings
        url = s.base_url.rstrip("/") + "/audio/transcriptions"
        try:
            async with asyncio.timeout(s.timeout_s), self.post(
                    url, data=self.form(wav), headers=self.plain_headers({"Accept": "application/json"})) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    raise status_error(self.name, resp.status, error_body_message(body), s.base_url,
                                       retry_after_header(resp.headers.get("retry-after")))
        except OpenAIProviderError:
            raise
        except TimeoutError:
            raise OpenAIProviderError(self.name, f"no answer from {s.base_url} within {s.timeout_s:g} s (timeout_s)",
                                      retryable=True) from None
        except aiohttp.ClientError as exc:
            raise network_error(self.name, s.base_url, exc) from exc
        raw = _transcript_text(body)
        text, language, emotion = parse_tags(raw)
        if language is None and s.language and s.language != "auto":
            language = s.language
        return Transcript(text=text, language=language, emotion=emotion)


def _transcript_text(body: bytes) -> str:
    """`{"text": ...}` (json/verbose_json), or the body itself (text/srt answers)."""
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()
    if isinstance(data, dict):
        return str(data.get("text") or "")
    return data if isinstance(data, str) else ""
