"""An OpenAI-compatible vision model: a photo and a question in, a short answer out.

The device's camera tool reaches it through the vision endpoint (server/transport/vision.py),
which owns the HTTP side (auth, multipart, limits); this is the model call, on the same client
code, error mapping and answer cleaning as the OpenAI-compatible LLM.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field
from typing import Any, ClassVar

from server.providers.llm.openai_text import speakable
from server.providers.openai_common import make_client, provider_error, request_headers


class VisionFailed(Exception):
    """The model gave no usable answer. `message` is for the device (and so the user), `detail`
    for the log; `timed_out` when it did not answer in time."""

    def __init__(self, message: str, detail: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.timed_out = timed_out


@dataclass(slots=True)
class OpenAIVision:
    """One configured vision model. The client is made on first use and kept (its connection
    pool is the point); no retries: the device is waiting, and `timeout_s` is the whole budget."""

    base_url: str
    api_key: str
    model: str
    timeout_s: float
    max_tokens: int
    prompt: str  # the system prompt sent with every photo
    _client: Any = field(default=None, init=False, repr=False)
    name: ClassVar[str] = "vision.openai"

    async def _openai(self) -> Any:
        if self._client is None:
            # Made on a thread: the SDK imports its modules on first use (0.1-1.5 s), which on the
            # event loop would stall every device's audio for that long.
            client = await asyncio.to_thread(_client_with_resources, self.base_url, self.api_key, self.timeout_s)
            if self._client is None:
                self._client = client
            else:  # another request made one meanwhile
                await client.close()
        return self._client

    async def describe(self, question: str, image: bytes, mime: str) -> str:
        """The model's answer about `image`, think blocks removed. Raises VisionFailed."""
        # A 5 MB image encodes in a few milliseconds: not worth a thread hop.
        data_uri = f"data:{mime};base64,{base64.b64encode(image).decode('ascii')}"
        messages: list[dict[str, Any]] = []
        if self.prompt:
            messages.append({"role": "system", "content": self.prompt})
        messages.append({"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_uri}},
            {"type": "text", "text": question},
        ]})
        where = f"model {self.model} at {self.base_url}"
        try:
            client = await self._openai()
            response = await asyncio.wait_for(client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=self.max_tokens,
                extra_headers=request_headers(self.api_key) or None), self.timeout_s + 2)
        except Exception as exc:  # noqa: BLE001 - every SDK/network failure becomes a VisionFailed
            import openai

            if isinstance(exc, TimeoutError | openai.APITimeoutError):
                raise VisionFailed(f"the vision model did not answer within {self.timeout_s:g} s",
                                   f"model {self.model} timed out after {self.timeout_s:g} s",
                                   timed_out=True) from None
            error = provider_error(self.name, exc, self.base_url, self.timeout_s)
            if error.status is not None:
                raise VisionFailed(f"the vision model failed (HTTP {error.status})", f"{where}: {error}") from None
            raise VisionFailed("the vision model could not be reached", f"{where}: {error}") from None
        try:
            content = response.choices[0].message.content or ""
        except (AttributeError, IndexError, TypeError):
            raise VisionFailed("the vision model returned no answer",
                               f"unexpected response: {response!r:.200}") from None
        answer = speakable(content).strip()
        if not answer:
            raise VisionFailed("the vision model returned an empty answer", f"{where}: empty answer")
        return answer

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()


def _client_with_resources(base_url: str, api_key: str, timeout_s: float) -> Any:
    client = make_client(base_url, api_key, timeout_s)
    _ = client.chat.completions  # resolve the lazily imported API modules here, off the loop
    return client
