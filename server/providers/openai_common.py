"""What the OpenAI-compatible LLM, ASR, TTS and vision clients share: the provider life cycle
with its aiohttp session, the event-stream reader, and the mapping of HTTP, network and SDK
errors to ProviderErrors that name the cause. The retry policy they follow is the providers'
common one (retry.py).

Nothing here imports `openai`, `httpx2` or `aiohttp` at module level: configuring an
embedded-only server must not pay for them, so those imports happen inside the functions.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol
from urllib.parse import urlsplit

from server.providers.base import Provider, ProviderError, ProviderUnavailable

log = logging.getLogger("server.providers")

# The SDK refuses to build a client without a key; local servers (Ollama, LM Studio, vLLM) need
# none. With this placeholder (and `request_headers`) no Authorization header is sent at all.
NO_KEY = "no-key"


# --------------------------------------------------------------------------- errors


class OpenAIProviderError(ProviderError):
    """ProviderError with the HTTP status (None for network errors) and the server's Retry-After."""

    def __init__(self, provider: str, message: str, *, retryable: bool = False, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(provider, message, retryable=retryable, retry_after=retry_after)
        self.status = status


def _server_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    msg = ""
    if isinstance(body, dict):
        inner = body.get("error", body)
        msg = str(inner.get("message") or "") if isinstance(inner, dict) else str(inner)
    elif isinstance(body, str):
        msg = body
    msg = msg or str(getattr(exc, "message", "") or exc)
    msg = " ".join(msg.split())
    return msg[:300] + ("..." if len(msg) > 300 else "")


def _retry_after(exc: Any) -> float | None:
    response = getattr(exc, "response", None)
    return retry_after_header(response.headers.get("retry-after") if response is not None else None)


def _root_cause(exc: BaseException) -> str:
    cause: BaseException = exc
    while cause.__cause__ is not None and cause.__cause__ is not cause:
        cause = cause.__cause__
    text = str(cause) or type(cause).__name__
    return f"{type(cause).__name__}: {text}" if cause is not exc else text


def provider_error(name: str, exc: BaseException, base_url: str, timeout_s: float) -> OpenAIProviderError:
    """Map an `openai` SDK (or network) exception to a ProviderError that names the cause."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        return status_error(name, exc.status_code, _server_message(exc), base_url, _retry_after(exc))
    if isinstance(exc, openai.APITimeoutError):
        return OpenAIProviderError(name, f"timed out after {timeout_s:g} s (timeout_s) talking to {base_url}",
                                   retryable=True)
    if isinstance(exc, openai.APIConnectionError):
        return OpenAIProviderError(name, f"connection to {base_url} failed: {_root_cause(exc)}", retryable=True)
    if isinstance(exc, openai.APIError):  # an error event inside an otherwise fine stream
        return OpenAIProviderError(name, f"{base_url} reported an error mid-stream: {_server_message(exc)}",
                                   retryable=True)
    return OpenAIProviderError(name, f"unexpected {type(exc).__name__} from {base_url}: {exc}")


def status_error(name: str, status: int, msg: str, base_url: str, retry_after: float | None) -> OpenAIProviderError:
    """An HTTP error answer, whichever client received it: what to check, and whether to retry."""
    if status in (401, 403):
        return OpenAIProviderError(name, f"HTTP {status} from {base_url}: {msg} (check api_key)", status=status)
    if status == 404:
        return OpenAIProviderError(name, f"HTTP 404 from {base_url}: {msg} (check base_url and model)",
                                   status=status)
    retryable = status in (408, 409, 429) or status >= 500
    return OpenAIProviderError(name, f"HTTP {status} from {base_url}: {msg}", retryable=retryable,
                               status=status, retry_after=retry_after if retryable else None)


def error_body_message(body: bytes) -> str:
    """The `error.message` of an OpenAI-style JSON error body, else the body's start."""
    import json

    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        inner = data.get("error", data)
        text = str(inner.get("message") or inner) if isinstance(inner, dict) else str(inner)
    text = " ".join(text.split())
    return text[:300] + ("..." if len(text) > 300 else "")


async def sse_data(stream: Any) -> AsyncIterator[str]:
    """The `data` of each server-sent event read from an aiohttp body (`response.content`):
    lines split by us (aiohttp's line reader refuses long lines), multi-line data joined,
    comments and other fields skipped."""
    buffer = bytearray()
    data: list[str] = []
    async for piece in stream.iter_any():
        buffer += piece
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            line = bytes(buffer[start:end]).rstrip(b"\r")
            start = end + 1
            if not line:
                if data:
                    yield "\n".join(data)
                    data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append((value[1:] if value.startswith(b" ") else value).decode("utf-8", "replace"))
        del buffer[:start]
    if data:
        yield "\n".join(data)


def network_error(name: str, base_url: str, exc: Exception) -> OpenAIProviderError:
    """An aiohttp failure (the connection, or a body that broke off) as a retryable ProviderError
    naming the host; whether a retry happens is the caller's policy (never after output)."""
    import aiohttp

    if isinstance(exc, aiohttp.ClientPayloadError):
        return OpenAIProviderError(name, f"connection to {base_url} broke mid-stream: {exc}", retryable=True)
    return OpenAIProviderError(name, f"connection to {base_url} failed: {type(exc).__name__}: {exc}",
                               retryable=True)


def retry_after_header(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: ignore, the backoff applies


# --------------------------------------------------------------------------- client


def make_client(base_url: str, api_key: str, timeout_s: float) -> Any:
    """An AsyncOpenAI client with our timeouts and without the SDK's own retries."""
    import httpx2
    import openai

    if urlsplit(base_url).scheme not in ("http", "https"):
        raise ProviderUnavailable(f"base_url must start with http:// or https://, got {base_url!r}")
    return openai.AsyncOpenAI(base_url=base_url, api_key=api_key or NO_KEY, max_retries=0,
                              timeout=httpx2.Timeout(timeout_s))


def request_headers(api_key: str, extra: dict[str, str] | None = None) -> dict[str, Any]:
    """Per-request headers: without a key, the SDK is told to send no Authorization at all
    (it accepts that only per request, not as a client default)."""
    import openai

    headers: dict[str, Any] = dict(extra or {})
    if not api_key:
        headers["Authorization"] = openai.Omit()
    return headers


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTPS_PROXY / HTTP_PROXY / ALL_PROXY, minus
    NO_PROXY), as aiohttp's trust_env would find it; None: connect directly."""
    from urllib.request import getproxies, proxy_bypass

    parts = urlsplit(url)
    if not parts.hostname or proxy_bypass(parts.hostname):
        return None
    proxies = getproxies()
    return proxies.get(parts.scheme) or proxies.get("all") or None


def _without_credentials(proxy: str) -> str:
    parts = urlsplit(proxy)
    return f"{parts.scheme}://{parts.hostname}:{parts.port}" if parts.hostname else proxy


class ClientSettings(Protocol):
    """The settings fields OpenAIClientProvider relies on (each provider's model has them)."""

    base_url: str
    api_key: str
    model: str
    timeout_s: float


class OpenAIClientProvider(Provider):
    """Life cycle of the OpenAI-compatible LLM, ASR and TTS providers: one aiohttp session (its
    connection pool is the point), made on first use and shared by every session, closed with
    the provider. They speak plain HTTP rather than going through the `openai` SDK, which cost
    several ms of event-loop CPU per request and a pydantic object per streamed token (see
    plain_session); the SDK stays for the vision endpoint (server/providers/openai_vision.py)."""

    settings: ClientSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loaded = False
        self._http: Any = None  # aiohttp.ClientSession (see plain_session)
        self.proxy: str | None = None  # from HTTPS_PROXY / HTTP_PROXY / NO_PROXY, at load

    def plain_session(self) -> Any:
        """The provider's aiohttp session. The SDK cost about 9 ms of event-loop CPU per
        streamed request more than aiohttp (11.4 against 2.3 ms for a streamed chat answer from
        the fake server, both sides counted, `python -m bench.http_cost`): with requests from
        every talking device, that adds up on the one loop all devices share."""
        if self._http is None:
            import aiohttp

            connector = aiohttp.TCPConnector(limit=1000)
            # trust_env off: with it, aiohttp reads ~/.netrc and the proxy variables on two
            # thread hops for every request. The proxy is looked up once instead (env_proxy).
            self._http = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self._http

    def post(self, url: str, **kwargs: Any) -> Any:
        """A POST through the provider's session and the proxy the environment names, if any."""
        return self.plain_session().post(url, proxy=self.proxy, **kwargs)

    def plain_headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Accept, the key as a Bearer token (none without a key), then `extra`, which wins
        (a vendor that wants its own Authorization scheme sets it in extra_headers)."""
        headers = {"Accept": "*/*"}
        if self.settings.api_key:
            headers["Authorization"] = f"Bearer {self.settings.api_key}"
        headers.update(extra or {})
        return headers

    async def load(self) -> None:
        base_url = self.settings.base_url
        if urlsplit(base_url).scheme not in ("http", "https"):
            raise ProviderUnavailable(f"{self.name}: base_url must start with http:// or https://, got {base_url!r}")
        self.proxy = env_proxy(base_url)
        if self.proxy:
            log.info("%s: through the proxy %s (from the environment)", self.name, _without_credentials(self.proxy))
        self._loaded = True

    async def close(self) -> None:
        self._loaded = False
        if self._http is not None:
            http, self._http = self._http, None
            await http.close()
        await super().close()

    def describe(self) -> str:
        return f"{self.name} ({self.settings.model} at {self.settings.base_url})"

    def _check_loaded(self) -> None:
        if not self._loaded:
            raise ProviderError(self.name, "not loaded")
