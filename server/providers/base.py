"""What every provider promises, and the errors they raise.

Providers are loaded once per process and shared by every session, so they hold no per-device
state: anything that belongs to one conversation (VAD recurrent state, dialogue history) lives in
an object the session owns (`VADStream`, the request passed in). CPU-bound providers run their
work on their own bounded thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")

# Audio inside the server is PCM16 mono at this rate (what the devices send); providers that want
# another rate resample inside their adapter.
PCM_RATE = 16000


class ProviderSettings(BaseModel):
    """Base of every provider's settings model: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")

    type: str


class ProviderError(Exception):
    """A provider failed while serving a request. `retryable` says whether trying again (or a
    fallback provider) may help; the message names the provider and the cause for the log."""

    def __init__(self, provider: str, message: str, *, retryable: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.retryable = retryable
        # Seconds the service asked us to wait before trying again (HTTP Retry-After), if any.
        self.retry_after = retry_after


class ProviderUnavailable(Exception):
    """Raised at startup when a configured provider cannot run: a package or model is missing.
    The message tells the user what to install or download."""


@dataclass(slots=True)
class ProviderContext:
    """What the server hands every provider at construction."""

    root_dir: Path
    data_dir: Path
    models_dir: Path
    output_sample_rate: int = 24000

    def resolve(self, path: str | Path) -> Path:
        """Relative paths in config are relative to the project root, like the config file."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.root_dir / p


class Provider:
    """Common life cycle. Subclasses set `kind`, `Settings`, and implement `load`."""

    kind: ClassVar[str] = ""
    # Declared capabilities (read as plain attributes, never probed with getattr):
    # runs on this machine (warmed up at startup so the first user does not pay for it);
    local: ClassVar[bool] = False
    # yields its output as it is produced (LLM deltas, TTS chunks) rather than all at the end;
    streaming: ClassVar[bool] = True
    # an LLM that accepts `LLMRequest.tools` and answers with tool calls (OpenAI function calling).
    supports_tools: bool = False
    # an ASR for which transcribing the growing utterance every `vad.partial_asr_ms` is cheap
    # (a remote service; a local model only when its settings say so): partial transcripts.
    cheap_partials: bool = False
    Settings: ClassVar[type[ProviderSettings]] = ProviderSettings

    def __init__(self, settings: ProviderSettings, context: ProviderContext, name: str | None = None) -> None:
        self.settings = settings
        self.context = context
        self.name = name or f"{self.kind}.{settings.type}"
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def executor(self, workers: int = 1) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=workers, thread_name_prefix=self.name.replace(".", "-"))
        return self._pool

    async def run_blocking(self, fn: Callable[..., T], *args: Any, workers: int = 1, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor(workers), functools.partial(fn, *args, **kwargs))

    async def load(self) -> None:
        """Import packages and load models. Raise ProviderUnavailable with advice when impossible."""

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def describe(self) -> str:
        return self.name

    def set_language(self, language: str) -> None:
        """The assistant's language, for providers whose prompts depend on it (few-shot examples)."""
        self.language = language


class Loadable(Protocol):
    """The life cycle every provider (and fallback chain) offers the runtime."""

    name: str

    async def load(self) -> None: ...

    async def close(self) -> None: ...


# --------------------------------------------------------------------------- VAD


class VADStream(Protocol):
    """Per-session VAD state. `process` takes PCM16 at PCM_RATE and returns one speech
    probability per complete window (leftover samples are kept for the next call)."""

    window_samples: int

    def process(self, pcm: bytes) -> list[float]: ...

    def reset(self) -> None: ...


@runtime_checkable
class VADProvider(Loadable, Protocol):
    """Sessions call `process_sync` inside `run_blocking`, together with their Opus decode, so
    one hop to the VAD thread serves both. `settings` carries the endpointing parameters."""

    name: str
    window_samples: int
    settings: Any

    def new_stream(self) -> VADStream: ...

    def process_sync(self, stream: VADStream, pcm: bytes) -> list[float]: ...

    async def run_blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...


# --------------------------------------------------------------------------- ASR


@dataclass(slots=True)
class Transcript:
    text: str
    language: str | None = None
    emotion: str | None = None


@runtime_checkable
class ASRProvider(Loadable, Protocol):
    name: str
    local: bool
    cheap_partials: bool

    async def transcribe(self, pcm: bytes, sample_rate: int = PCM_RATE) -> Transcript: ...


# --------------------------------------------------------------------------- LLM


@dataclass(slots=True)
class ChatMessage:
    role: str  # system | user | assistant | tool
    content: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        if self.name and self.role == "tool":
            out["name"] = self.name
        return out


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # raw JSON text as the model produced it; parsed (and validated) by the executor


@dataclass(slots=True)
class LLMRequest:
    messages: list[ChatMessage]
    tools: list[dict[str, Any]] = field(default_factory=list)
    temperature: float | None = None
    max_tokens: int | None = None


@dataclass(slots=True)
class LLMDelta:
    """One streamed piece: text to speak, and/or complete tool calls (emitted once merged)."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)


@runtime_checkable
class LLMProvider(Loadable, Protocol):
    """`supports_tools`: offer tools in the request (otherwise they are left out); `streaming`:
    deltas arrive as generated."""

    name: str
    local: bool
    streaming: bool
    supports_tools: bool

    def set_language(self, language: str) -> None: ...

    def stream(self, request: LLMRequest) -> AsyncIterator[LLMDelta]: ...


# --------------------------------------------------------------------------- TTS


@dataclass(slots=True)
class AudioChunk:
    pcm: bytes  # PCM16 mono
    sample_rate: int


@runtime_checkable
class TTSProvider(Loadable, Protocol):
    name: str
    local: bool

    def synthesize(self, text: str) -> AsyncIterator[AudioChunk]: ...


async def iterate_in_thread(
    provider: Provider, make_iter: Callable[[], Any], *, cancel_event: Any | None = None,
    workers: int = 1, queue_size: int = 64,
) -> AsyncIterator[Any]:
    """Run a blocking iterator on the provider's pool and yield its items on the loop.

    The producer stops early when the consumer goes away (generator closed or cancelled): it
    checks a flag between items, so a cancelled LLM or TTS stream frees its thread promptly.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=queue_size)
    stop = cancel_event if cancel_event is not None else _Flag()

    def put(kind: str, item: Any) -> None:
        fut = asyncio.run_coroutine_threadsafe(queue.put((kind, item)), loop)
        # Block the producer while the queue is full (back-pressure), but wake up if stopped.
        while True:
            try:
                fut.result(timeout=0.1)
                return
            except concurrent.futures.TimeoutError:
                if stop.is_set():
                    fut.cancel()
                    return

    def produce() -> None:
        try:
            for item in make_iter():
                if stop.is_set():
                    break
                put("item", item)
                if stop.is_set():
                    break
        except BaseException as exc:  # noqa: BLE001 - forwarded to the consumer
            put("error", exc)
        else:
            put("done", None)

    future = loop.run_in_executor(provider.executor(workers), produce)
    try:
        while True:
            kind, item = await queue.get()
            if kind == "item":
                yield item
            elif kind == "error":
                raise item
            else:
                break
    finally:
        stop.set()
        # Drain so a producer blocked on put() can finish.
        while not queue.empty():
            queue.get_nowait()
        if future.done():
            future.exception()


class _Flag:
    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set
