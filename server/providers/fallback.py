"""Provider chains: `tts: [ {type: edge, ...}, {type: piper} ]` tries each in order.

A provider that fails is moved to the back for `cooldown_s`, so after a cloud TTS dies only the
first sentence pays for its timeout; the rest of the turn goes straight to the local one. A
stream that fails after it already produced output is not restarted on another provider (the
user would hear the start twice): that one sentence or answer ends there.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from server.providers.base import AudioChunk, LLMDelta, LLMRequest, ProviderError, Transcript
from server.providers.retry import retry_before_first_item

log = logging.getLogger("server.providers")

T = TypeVar("T")


class FallbackChain:
    kind = ""

    def __init__(self, providers: list[Any], cooldown_s: float = 30.0) -> None:
        if not providers:
            raise ValueError("a fallback chain needs at least one provider")
        self.providers = providers
        self.cooldown_s = cooldown_s
        self._failed_at: dict[int, float] = {}
        self.name = f"{self.kind}.fallback({' > '.join(p.name for p in providers)})"
        # Capabilities of a chain: local if any member is (it is warmed up like one); streaming
        # only if every member streams.
        self.local = any(p.local for p in providers)
        self.streaming = all(p.streaming for p in providers)

    @property
    def settings(self) -> Any:
        """The primary provider's settings (what `describe`/the benchmark report)."""
        return self.providers[0].settings

    @property
    def cheap_partials(self) -> bool:
        """Partials follow the provider that would answer now: while a remote ASR cools down and
        a local one stands in, partial transcripts pause."""
        return bool(self.order()[0].cheap_partials)

    def set_language(self, language: str) -> None:
        for p in self.providers:
            p.set_language(language)

    def order(self) -> list[Any]:
        now = time.monotonic()
        healthy = [p for i, p in enumerate(self.providers) if now - self._failed_at.get(i, -1e9) >= self.cooldown_s]
        cooling = [p for p in self.providers if p not in healthy]
        return healthy + cooling

    def failed(self, provider: Any, exc: Exception) -> None:
        self._failed_at[self.providers.index(provider)] = time.monotonic()
        log.warning("%s failed (%s); falling back", provider.name, exc)

    def succeeded(self, provider: Any) -> None:
        self._failed_at.pop(self.providers.index(provider), None)

    async def load(self) -> None:
        for p in self.providers:
            await p.load()

    async def close(self) -> None:
        for p in self.providers:
            await p.close()

    def _all_failed(self, errors: list[str]) -> ProviderError:
        return ProviderError(self.name, "all providers failed: " + "; ".join(errors), retryable=True)

    async def _stream(self, open_stream: Callable[[Any], AsyncIterator[T]]) -> AsyncIterator[T]:
        """Yield the items of `open_stream(provider)` from the first provider that gets through.
        A provider that fails before its first item is cooled down and the next one tried; one
        that fails after it is cooled down too, but its error ends the stream (the user already
        heard the start)."""
        errors: list[str] = []
        providers = iter(self.order())

        def attempt(provider: Any) -> Callable[[], AsyncIterator[T]]:
            async def items() -> AsyncIterator[T]:
                try:
                    async for item in open_stream(provider):
                        yield item
                except ProviderError as exc:
                    self.failed(provider, exc)
                    raise
                self.succeeded(provider)
            return items

        async def next_provider(exc: ProviderError) -> Callable[[], AsyncIterator[T]] | None:
            errors.append(str(exc))
            provider = next(providers, None)
            if provider is None:
                raise self._all_failed(errors)
            return attempt(provider)

        async with contextlib.aclosing(retry_before_first_item(attempt(next(providers)), next_provider)) as items:
            async for item in items:
                yield item


class FallbackTTS(FallbackChain):
    kind = "tts"

    def synthesize(self, text: str) -> AsyncIterator[AudioChunk]:
        return self._stream(lambda provider: provider.synthesize(text))


class FallbackLLM(FallbackChain):
    kind = "llm"

    @property
    def supports_tools(self) -> bool:
        return bool(self.order()[0].supports_tools)

    def stream(self, request: LLMRequest) -> AsyncIterator[LLMDelta]:
        def open_stream(provider: Any) -> AsyncIterator[LLMDelta]:
            # Tools only for a provider that takes them: the next one may be a local model without.
            tools = request.tools if provider.supports_tools else []
            return provider.stream(LLMRequest(request.messages, tools, request.temperature, request.max_tokens))

        return self._stream(open_stream)


class FallbackASR(FallbackChain):
    kind = "asr"

    async def transcribe(self, pcm: bytes, sample_rate: int = 16000) -> Transcript:
        async def once(provider: Any) -> AsyncIterator[Transcript]:
            yield await provider.transcribe(pcm, sample_rate)

        return [t async for t in self._stream(once)][0]


CHAINS: dict[str, type[FallbackChain]] = {"tts": FallbackTTS, "llm": FallbackLLM, "asr": FallbackASR}
