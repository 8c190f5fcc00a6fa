"""Speech through any OpenAI-compatible `/audio/speech` endpoint (OpenAI tts-1 /
gpt-4o-mini-tts, SiliconFlow CosyVoice, a local server), streamed.

The body is read as it arrives and every piece is yielded at once as PCM, so the first audio
reaches the pacer while the server is still synthesizing. Formats (`response_format`):
- `pcm`: raw 16-bit little-endian mono; OpenAI sends 24 kHz (`pcm_sample_rate`);
- `wav`: the header is parsed from the stream; streaming servers write 0 or 0xFFFFFFFF as the
  sizes (the length is unknown when the header goes out), which means "until the end";
- `mp3`, for servers that offer nothing better: decoded in-process as it arrives
  (server/audio/mp3.py), on this provider's thread pool rather than on the event loop.
A server that ignores `pcm` and answers WAV anyway is recognised by its RIFF header.

Retries happen only before the first chunk: a sentence cannot restart once the user heard part
of it.
"""

from __future__ import annotations

import contextlib
import logging
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar, Literal

from pydantic import Field

from server.providers.base import AudioChunk, ProviderSettings, ProviderUnavailable
from server.providers.openai_common import (
    OpenAIClientProvider,
    OpenAIProviderError,
    error_body_message,
    network_error,
    retry_after_header,
    status_error,
)
from server.providers.retry import exponential, stream_with_retries

log = logging.getLogger("server.providers")

_UNKNOWN_SIZES = (0, 0xFFFFFFFF)
READ_BYTES = 16384  # about 340 ms of 24 kHz PCM
READ_BYTES_MP3 = 4096  # about half a second of speech MP3
_PCM_SUBFORMAT = 1  # WAVE_FORMAT_PCM, also the first two bytes of an EXTENSIBLE sub-format GUID


class OpenAITTSSettings(ProviderSettings):
    type: str = "openai"
    base_url: str = "https://api.openai.com/v1"
    api_key: str = ""  # empty for local servers that need none
    # tts-1 | tts-1-hd | gpt-4o-mini-tts (OpenAI); FunAudioLLM/CosyVoice2-0.5B (SiliconFlow)...
    model: str = "tts-1"
    # alloy, nova, ... (OpenAI); "FunAudioLLM/CosyVoice2-0.5B:alex" (SiliconFlow)...
    voice: str = "alloy"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    # Style prompt for models that take one (gpt-4o-mini-tts); empty: none.
    instructions: str = ""
    response_format: Literal["pcm", "wav", "mp3"] = "pcm"
    # The rate of `pcm` answers (OpenAI: 24000; SiliconFlow lets extra_body.sample_rate pick it).
    pcm_sample_rate: int = Field(default=24000, ge=8000, le=48000)
    # Connect timeout, and the longest silence between two pieces of the body.
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    retries: int = Field(default=1, ge=0, le=5)
    retry_backoff_s: float = Field(default=0.3, ge=0, le=30)
    extra_body: dict[str, Any] = Field(default_factory=dict)


# --------------------------------------------------------------------------- stream decoding


class PcmStream:
    """Raw PCM16 mono: only keeps sample alignment across network chunks.

    The stream decoders share one interface: `feed(bytes) -> PCM16 mono`, `finish()` at the end
    of the body (the PCM still held back; ValueError when the body was not valid audio),
    `sample_rate` of the PCM, and `cpu_bound` (decode on the provider's thread pool).
    """

    cpu_bound: ClassVar[bool] = False  # re-slicing bytes is cheaper than a hop to a thread

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._odd = b""

    def feed(self, data: bytes) -> bytes:
        data = self._odd + data
        cut = len(data) - len(data) % 2
        self._odd = data[cut:]
        return data[:cut]

    def finish(self) -> bytes:
        return b""  # an odd trailing byte is half a sample: dropped


class WavStream:
    """A WAV file arriving in pieces: header parsed incrementally, PCM16 out (stereo averaged to
    mono), sizes 0/0xFFFFFFFF read as "until the end of the body"."""

    cpu_bound: ClassVar[bool] = False

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # parse position in _buf while in the header
        self.sample_rate = 0
        self.channels = 0
        self._in_data = False
        self._remaining: int | None = None  # data bytes still expected; None: until EOF
        self._carry = b""

    def feed(self, data: bytes) -> bytes:
        if not self._in_data:
            self._buf += data
            if not self._parse_header():
                return b""
            data = bytes(self._buf[self._pos:])
            self._buf = bytearray()
        if self._remaining is not None:
            data = data[:self._remaining]
            self._remaining -= len(data)
        data = self._carry + data
        frame = 2 * self.channels
        cut = len(data) - len(data) % frame
        self._carry = data[cut:]
        return self._to_mono(data[:cut])

    def finish(self) -> bytes:
        if not self._in_data:
            raise ValueError("the body ended inside the WAV header")
        return b""  # a partial trailing frame cannot be played

    def _parse_header(self) -> bool:
        """Advance through RIFF/fmt/other chunks; True once positioned at the data."""
        buf = self._buf
        if self._pos == 0:
            if len(buf) < 12:
                return False
            if buf[:4] != b"RIFF" or buf[8:12] != b"WAVE":
                raise ValueError(f"not a WAV stream (starts with {bytes(buf[:12])!r})")
            self._pos = 12
        while True:
            if len(buf) < self._pos + 8:
                return False
            chunk_id = bytes(buf[self._pos:self._pos + 4])
            (size,) = struct.unpack_from("<I", buf, self._pos + 4)
            body = self._pos + 8
            if chunk_id == b"data":
                if not self.channels:
                    raise ValueError("WAV data chunk before its fmt chunk")
                self._remaining = None if size in _UNKNOWN_SIZES else size
                self._pos = body
                self._in_data = True
                return True
            if len(buf) < body + size:
                return False
            if chunk_id == b"fmt ":
                self._read_fmt(bytes(buf[body:body + size]))
            self._pos = body + size + (size & 1)  # chunks are padded to even sizes

    def _read_fmt(self, fmt: bytes) -> None:
        if len(fmt) < 16:
            raise ValueError("WAV fmt chunk too short")
        tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", fmt)
        if tag == 0xFFFE and len(fmt) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the real tag is in the GUID
            (tag,) = struct.unpack_from("<H", fmt, 24)
        if tag != _PCM_SUBFORMAT or bits != 16 or channels < 1:
            raise ValueError(f"unsupported WAV encoding (format {tag}, {bits} bit, {channels} channels); "
                             "only 16-bit PCM is read")
        self.sample_rate, self.channels = rate, channels

    def _to_mono(self, pcm: bytes) -> bytes:
        if self.channels == 1 or not pcm:
            return pcm
        import numpy as np

        frames = np.frombuffer(pcm, dtype=np.int16).reshape(-1, self.channels)
        return frames.mean(axis=1).astype(np.int16).tobytes()


class _SniffingStream:
    """`pcm` was asked for, but some servers send WAV regardless: decide on the first 4 bytes."""

    cpu_bound: ClassVar[bool] = False

    def __init__(self, sample_rate: int) -> None:
        self._head = b""
        self._inner: PcmStream | WavStream | None = None
        self._pcm_rate = sample_rate

    @property
    def sample_rate(self) -> int:
        return self._inner.sample_rate if self._inner is not None else self._pcm_rate

    def feed(self, data: bytes) -> bytes:
        if self._inner is None:
            self._head += data
            if len(self._head) < 4:
                return b""
            if self._head.startswith(b"RIFF"):
                log.info("tts.openai: asked for raw pcm, the server sent WAV; reading its header")
                self._inner = WavStream()
            else:
                self._inner = PcmStream(self._pcm_rate)
            data, self._head = self._head, b""
        return self._inner.feed(data)

    def finish(self) -> bytes:
        if self._inner is None and self._head:
            raise ValueError("the body is shorter than one sample")
        return self._inner.finish() if self._inner is not None else b""


class Mp3Stream:
    """MP3 through the in-process streaming decoder. Decoding is CPU work (`cpu_bound`): the
    provider calls `feed` and `finish` on its thread pool, one call at a time (the decoder is
    not thread-safe)."""

    cpu_bound: ClassVar[bool] = True

    def __init__(self) -> None:
        from server.audio.mp3 import Mp3StreamDecoder

        self._decoder = Mp3StreamDecoder()
        self._received = 0

    @property
    def sample_rate(self) -> int:
        # Known from the first decoded frame on, which is before any PCM comes out.
        return self._decoder.sample_rate or 0

    def feed(self, data: bytes) -> bytes:
        self._received += len(data)
        return self._decoder.feed(data)

    def finish(self) -> bytes:
        tail = self._decoder.flush()
        if self._received and self._decoder.frames == 0:
            raise ValueError(f"{self._received} bytes could not be decoded as MP3")
        return tail


_Decoder = PcmStream | WavStream | _SniffingStream | Mp3Stream


# --------------------------------------------------------------------------- provider


class OpenAITTS(OpenAIClientProvider):
    kind = "tts"
    local = False
    Settings = OpenAITTSSettings
    settings: OpenAITTSSettings

    async def load(self) -> None:
        if self.settings.response_format == "mp3":
            try:
                import av  # noqa: F401 - the MP3 decoder; fail at startup, not on the first sentence
            except ImportError:
                raise ProviderUnavailable("tts.openai: the MP3 decoder needs PyAV (pip install av)") from None
        await super().load()

    def describe(self) -> str:
        return f"{self.name} ({self.settings.model}, {self.settings.voice})"

    def request_params(self, text: str) -> dict[str, Any]:
        """The JSON body of the request (`extra_body` merged in, as the SDK would)."""
        s = self.settings
        params: dict[str, Any] = {"model": s.model, "voice": s.voice, "input": text,
                                  "response_format": s.response_format}
        if s.speed != 1.0:
            params["speed"] = s.speed
        if s.instructions:
            params["instructions"] = s.instructions
        params.update(s.extra_body)
        return params

    async def synthesize(self, text: str) -> AsyncIterator[AudioChunk]:
        self._check_loaded()
        if not text.strip():
            return
        s = self.settings
        # aclosing: when the user interrupts, closing this generator closes the HTTP stream now.
        async with contextlib.aclosing(stream_with_retries(
                self.name, s.retries, exponential(s.retry_backoff_s), lambda: self._attempt(text))) as chunks:
            async for chunk in chunks:
                yield chunk

    def _decoder(self) -> _Decoder:
        s = self.settings
        if s.response_format == "pcm":
            return _SniffingStream(s.pcm_sample_rate)
        return WavStream() if s.response_format == "wav" else Mp3Stream()

    async def _decode(self, decoder: _Decoder, step: Callable[..., bytes], *args: Any) -> bytes:
        """Run one decoder step: MP3 decoding would stall every session on the loop, so it goes
        to this provider's thread pool; the raw formats run inline."""
        if decoder.cpu_bound:
            return await self.run_blocking(step, *args)
        return step(*args)

    async def _attempt(self, text: str) -> AsyncIterator[AudioChunk]:
        # Plain aiohttp rather than the SDK: one request per sentence of every reply, and the
        # endpoint is a JSON POST answered with audio bytes (see plain_session for the cost).
        import aiohttp

        s = self.settings
        decoder = self._decoder()
        total = 0
        url = s.base_url.rstrip("/") + "/audio/speech"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=s.timeout_s, sock_read=s.timeout_s)
        try:
            async with self.post(url, json=self.request_params(text), headers=self.plain_headers(),
                                                 timeout=timeout) as resp:
                if resp.status >= 400:
                    body = await resp.content.read(4096)
                    raise status_error(self.name, resp.status, error_body_message(body), s.base_url,
                                       retry_after_header(resp.headers.get("retry-after")))
                content_type = resp.headers.get("content-type", "").lower()
                if content_type.startswith(("application/json", "text/")):
                    body = (await resp.content.read(300)).decode(errors="replace")
                    raise OpenAIProviderError(self.name, f"{s.base_url} answered {content_type} instead of audio: "
                                                         f"{body}", retryable=False, status=resp.status)
                # Closing the generator early exits this block, which closes the connection.
                # A bounded read at a time: a body that arrived whole still streams on in
                # pieces the pacer and the encoder can start on.
                step = READ_BYTES_MP3 if s.response_format == "mp3" else READ_BYTES
                async for data in resp.content.iter_chunked(step):
                    pcm = await self._decode(decoder, decoder.feed, data)
                    if pcm:
                        total += len(pcm)
                        yield AudioChunk(pcm=pcm, sample_rate=decoder.sample_rate)
                pcm = await self._decode(decoder, decoder.finish)
                if pcm:
                    total += len(pcm)
                    yield AudioChunk(pcm=pcm, sample_rate=decoder.sample_rate)
        except OpenAIProviderError:
            raise
        except ValueError as exc:
            raise OpenAIProviderError(self.name, f"bad audio from {s.base_url}: {exc}") from exc
        except TimeoutError as exc:
            raise OpenAIProviderError(self.name, f"{s.base_url} timed out: nothing for {s.timeout_s:g} s "
                                                 "(timeout_s)", retryable=True) from exc
        except aiohttp.ClientError as exc:
            raise network_error(self.name, s.base_url, exc) from exc
        if total == 0:
            raise OpenAIProviderError(self.name, f"{s.base_url} sent no audio for {text[:40]!r}", retryable=True)
