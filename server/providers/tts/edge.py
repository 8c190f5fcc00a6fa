"""Microsoft Edge online TTS through edge-tts, streamed.

Each sentence opens one WebSocket (what edge-tts does); the MP3 it sends is decoded in-process
as it arrives (server/audio/mp3.py, on this provider's thread pool) and yielded chunk by chunk,
so the first audio reaches the pacer while Microsoft is still synthesizing the rest. The
reference server waited for the whole MP3, ran an ffmpeg subprocess per sentence, and could hang
forever on a stalled socket; here every wait is bounded by `timeout_s`.

Retries happen only before the first audio chunk: a stream that fails later cannot be restarted
without the user hearing the start twice, so it raises and the turn (or a fallback chain) decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field

from server.providers.base import AudioChunk, Provider, ProviderError, ProviderSettings, ProviderUnavailable
from server.providers.retry import stream_with_retries

log = logging.getLogger("server.providers")

# The same checks edge-tts makes in TTSConfig, done when the config is read instead of per sentence.
_PERCENT = r"^[+-]\d+%$"
_HERTZ = r"^[+-]\d+Hz$"


class EdgeSettings(ProviderSettings):
    type: str = "edge"
    # Any Edge voice: zh-CN-XiaoxiaoNeural, zh-CN-YunxiNeural, en-US-AriaNeural, ...
    # (list them with `edge-tts --list-voices`).
    voice: str = "zh-CN-XiaoxiaoNeural"
    rate: str = Field(default="+0%", pattern=_PERCENT)  # speaking rate, e.g. "+10%", "-20%"
    volume: str = Field(default="+0%", pattern=_PERCENT)
    pitch: str = Field(default="+0Hz", pattern=_HERTZ)  # e.g. "+5Hz"
    # http://host:port proxy for the WebSocket. HTTPS_PROXY/NO_PROXY are honoured too.
    proxy: str | None = None
    # WebSocket URL of the read-aloud service, for a mirror, a proxying gateway or tests, e.g.
    # ws://127.0.0.1:8300/consumer/speech/synthesize/readaloud/edge/v1 (edge-tts's
    # TrustedClientToken is added when the URL has none). Empty: Microsoft's. Process-wide: see load().
    endpoint: str = Field(default="", pattern=r"^(wss?://\S+)?$")
    # Longest wait for the connection and for each next message: a stalled stream fails after
    # this instead of hanging the turn.
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    # Extra attempts when a sentence fails before any audio arrived (connection refused, stall).
    retries: int = Field(default=1, ge=0, le=5)
    # MP3 decodes running at once, shared by all sessions (decoding takes <0.1% of the audio time).
    workers: int = Field(default=2, ge=1, le=16)


_applied_endpoint: str | None = None  # the URL load() last put into edge-tts, if any


def endpoint_url(endpoint: str, token: str) -> str:
    """The URL edge-tts needs: it appends `&ConnectionId=...` to it, so it must already carry a
    query, and the service (or a faithful mirror) expects the TrustedClientToken there."""
    parts = urlsplit(endpoint)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not any(key == "TrustedClientToken" for key, _ in query):
        query.append(("TrustedClientToken", token))
    return urlunsplit(parts._replace(query=urlencode(query)))


def apply_endpoint(edge_tts: Any, endpoint: str, name: str) -> None:
    """Point edge-tts at `endpoint`.

    edge-tts has no per-call URL: every Communicate reads the module global
    `edge_tts.communicate.WSS_URL` when it connects (its `connector`/`proxy` cannot redirect it,
    since TLS is verified for speech.platform.bing.com). So this is process-wide: all EdgeTTS
    providers of this server use the endpoint loaded last, and two different endpoints in one
    config cannot both work; that case is logged."""
    global _applied_endpoint
    from edge_tts import constants

    url = endpoint_url(endpoint, constants.TRUSTED_CLIENT_TOKEN)
    current = edge_tts.communicate.WSS_URL
    if _applied_endpoint is not None and current == _applied_endpoint and current != url:
        log.warning("%s: endpoint %s replaces %s for every Edge voice in this process (edge-tts has one "
                    "URL per process)", name, url, current)
    edge_tts.communicate.WSS_URL = url
    _applied_endpoint = url
    log.info("%s: Edge service endpoint %s", name, url)


class EdgeTTS(Provider):
    kind = "tts"
    local = False
    Settings = EdgeSettings
    settings: EdgeSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._edge_tts: Any = None

    async def load(self) -> None:
        try:
            import edge_tts
        except ImportError:
            raise ProviderUnavailable("tts.edge: pip install edge-tts") from None
        try:
            import av  # noqa: F401 - the MP3 decoder; fail at startup, not on the first sentence
        except ImportError:
            raise ProviderUnavailable("tts.edge: the MP3 decoder needs PyAV (pip install av)") from None
        s = self.settings
        try:
            # Validates the voice name format as edge-tts will (no network involved).
            edge_tts.Communicate("check", s.voice, rate=s.rate, volume=s.volume, pitch=s.pitch, proxy=s.proxy)
        except (TypeError, ValueError) as exc:
            raise ProviderUnavailable(f"tts.edge: invalid settings: {exc}") from None
        if s.endpoint:
            apply_endpoint(edge_tts, s.endpoint, self.name)
        elif _applied_endpoint is not None and _applied_endpoint == edge_tts.communicate.WSS_URL:
            log.warning("%s: no endpoint set, but another Edge provider in this process set %s, which "
                        "this one will use too (edge-tts has one URL per process)", self.name, _applied_endpoint)
        self._edge_tts = edge_tts

    def describe(self) -> str:
        via = f" via {self.settings.endpoint}" if self.settings.endpoint else ""
        return f"{self.name} ({self.settings.voice}{via})"

    async def synthesize(self, text: str) -> AsyncIterator[AudioChunk]:
        if self._edge_tts is None:
            raise ProviderError(self.name, "not loaded")
        if not any(ch.isalnum() for ch in text):
            # Only punctuation or emoji: the service answers with no audio (NoAudioReceived).
            return
        # A short linear backoff: the service's failures are brief (a dropped WebSocket).
        async with contextlib.aclosing(stream_with_retries(
                self.name, self.settings.retries, lambda n, _exc: min(0.2 * n, 1.0),
                lambda: self._stream_once(text))) as chunks:
            async for chunk in chunks:
                yield chunk

    async def _stream_once(self, text: str) -> AsyncIterator[AudioChunk]:
        from server.audio.mp3 import Mp3StreamDecoder

        s = self.settings
        edge = self._edge_tts
        # edge-tts's own aiohttp timeouts take whole seconds; ours below is the precise bound.
        whole_s = max(1, math.ceil(s.timeout_s))
        communicate = edge.Communicate(
            text, s.voice, rate=s.rate, volume=s.volume, pitch=s.pitch, proxy=s.proxy,
            connect_timeout=whole_s, receive_timeout=whole_s)
        decoder = Mp3StreamDecoder()
        stream = communicate.stream()
        received = 0
        try:
            while True:
                try:
                    async with asyncio.timeout(s.timeout_s):
                        message = await anext(stream)
                except StopAsyncIteration:
                    break
                if message["type"] != "audio":
                    continue  # sentence/word boundary metadata
                data: bytes = message["data"]
                received += len(data)
                pcm = await self.run_blocking(decoder.feed, data, workers=s.workers)
                if pcm:
                    yield AudioChunk(pcm=pcm, sample_rate=decoder.sample_rate or 24000)
            tail = await self.run_blocking(decoder.flush, workers=s.workers)
            if tail:
                yield AudioChunk(pcm=tail, sample_rate=decoder.sample_rate or 24000)
        except ProviderError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is reported as this provider's
            raise self._error(exc, received) from exc
        finally:
            await stream.aclose()
        if received and decoder.frames == 0:
            raise ProviderError(self.name, f"{received} bytes of audio could not be decoded as MP3")
        # edge-tts ends quietly when the socket closes before `turn.end`; its state then shows
        # audio bytes that were never confirmed by a turn.end (a truncated sentence).
        confirmed = communicate.state.get("cumulative_audio_bytes")
        if isinstance(confirmed, int) and confirmed < received:
            raise ProviderError(
                self.name, f"the Edge service closed the connection mid-sentence "
                f"({received - confirmed} of {received} audio bytes without turn.end)", retryable=True)

    def _error(self, exc: BaseException, received: int) -> ProviderError:
        """Name the cause the way someone reading the log needs it."""
        import aiohttp
        from edge_tts import exceptions as edge_exc

        s = self.settings
        if isinstance(exc, TimeoutError):
            where = "mid-stream" if received else "before any audio"
            return ProviderError(
                self.name, f"stalled {where}: nothing from the Edge service for {s.timeout_s:g} s", retryable=True)
        if isinstance(exc, edge_exc.NoAudioReceived):
            # An unknown voice gets exactly this; retrying the same request will not help.
            return ProviderError(self.name, f"no audio received (is the voice {s.voice!r} valid?)")
        if isinstance(exc, edge_exc.WebSocketError):
            return ProviderError(self.name, f"WebSocket error: {exc}", retryable=True)
        if isinstance(exc, edge_exc.UnexpectedResponse | edge_exc.UnknownResponse):
            return ProviderError(
                self.name, f"unexpected answer from the Edge service ({exc}); edge-tts may need an update")
        if isinstance(exc, edge_exc.EdgeTTSException):
            return ProviderError(self.name, f"{type(exc).__name__}: {exc}")
        if isinstance(exc, aiohttp.WSServerHandshakeError | aiohttp.ClientResponseError):
            refused = exc.status in (401, 403)
            hint = " (Microsoft refused the token: upgrade edge-tts, check the clock)" if refused else ""
            return ProviderError(
                self.name, f"HTTP {exc.status} from the Edge service{hint}",
                retryable=exc.status in (408, 429) or exc.status >= 500)
        if isinstance(exc, aiohttp.ClientProxyConnectionError):
            return ProviderError(self.name, f"cannot reach the proxy {s.proxy}: {exc}", retryable=True)
        if isinstance(exc, aiohttp.ClientConnectorError):
            return ProviderError(
                self.name, f"cannot connect to the Edge service at {exc.host}:{exc.port}: {exc.os_error}",
                retryable=True)
        if isinstance(exc, aiohttp.ClientError | OSError):
            return ProviderError(self.name, f"connection failed: {type(exc).__name__}: {exc}", retryable=True)
        return ProviderError(self.name, f"synthesis failed: {type(exc).__name__}: {exc}")
