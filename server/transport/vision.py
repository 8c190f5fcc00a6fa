"""`POST /mcp/vision/explain`: the device's camera tool uploads a photo and a question; we ask a
configured OpenAI-compatible vision model and answer with the firmware's expected JSON.

The firmware (esp32_camera.cc `Explain`) sends multipart/form-data: a `question` field, then the
JPEG as `file` (camera.jpg), chunked, with headers Device-Id, Client-Id and
`Authorization: Bearer <token>`, where url and token come from the `vision` capability we gave it
in the MCP `initialize`. It returns the response body verbatim as the tool result.

Unlike the reference server there is no bypass header: every upload needs a token minted for
that device and client, whether or not WebSocket auth is enabled, since each upload costs a paid
model call. Vision tokens are signed with a key derived from the server secret, so a vision token
is never a valid WebSocket token. The upload is streamed and cut at `max_image_bytes` instead of
being read whole first.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from typing import Any
from urllib.parse import urlsplit

from aiohttp import BodyPartReader, web

from server.config.schema import VisionConfig
from server.providers.openai_vision import OpenAIVision, VisionFailed
from server.transport.auth import TokenAuth
from server.transport.limits import RateLimiter

log = logging.getLogger("server.vision")

PATH = "/mcp/vision/explain"
_MAX_QUESTION_BYTES = 4096
# Magic numbers of the formats vision APIs accept; the firmware always sends JPEG.
_IMAGE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def vision_url_for(host_header: str, configured: str, http_port: int, path: str = PATH) -> str:
    """The vision URL for a device that reached us at `host_header` (the WebSocket's Host)."""
    if configured:
        return configured
    hostname = urlsplit(f"//{host_header.strip() or '127.0.0.1'}").hostname or "127.0.0.1"
    if ":" in hostname:
        hostname = f"[{hostname}]"
    return f"http://{hostname}:{http_port}{path}"


def vision_token_auth(auth: TokenAuth, ttl_s: float) -> TokenAuth:
    """A TokenAuth for vision tokens: same secret material, but a derived key, so vision tokens
    and WebSocket tokens are never interchangeable."""
    key = hmac.new(auth.secret, b"xiaozhi vision token v1", hashlib.sha256).hexdigest().encode()
    return TokenAuth(secret=key, ttl_seconds=ttl_s, enabled=True)


def image_mime(data: bytes) -> str | None:
    for magic, mime in _IMAGE_MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


class _Reject(Exception):
    def __init__(self, status: int, message: str, log_reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.log_reason = log_reason or message


def _size(n: int) -> str:
    return f"{n / 1048576:.1f} MB" if n >= 1048576 else f"{n / 1024:.0f} KB"


def _json(data: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, ensure_ascii=False), status=status, content_type="application/json")


class VisionHandler:
    def __init__(self, config: VisionConfig, auth: TokenAuth) -> None:
        self.config = config
        self.tokens = vision_token_auth(auth, config.token_ttl_s)
        self.model = OpenAIVision(base_url=config.base_url, api_key=config.api_key, model=config.model,
                                  timeout_s=config.timeout_s, max_tokens=config.max_tokens, prompt=config.prompt)
        self._slots = asyncio.Semaphore(config.max_concurrent)
        self._rate = RateLimiter(config.requests_per_minute)
        # Set when pairing is on: (device id, client id) -> the device's current generation, or
        # None when it is not paired. Tokens minted with a generation must match it.
        self.current_generation: Any = None

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    # ------------------------------------------------------------------ for the session

    def mint_token(self, device_id: str, client_id: str, generation: int | None = None) -> str:
        """A vision token; with a pairing `generation`, it stops working when the device is revoked."""
        return self.tokens.mint(device_id.strip().lower(), client_id.strip(),
                                generation=0 if generation is None else generation + 1)

    def device_capability(self, device_id: str, client_id: str, host_header: str,
                          http_port: int, generation: int | None = None) -> tuple[str, str]:
        """(url, token) for DeviceMcpClient(vision_url=..., vision_token=...); ("", "") when the
        endpoint is not configured, so the device is not told to upload photos nobody reads."""
        if not self.enabled:
            return "", ""
        return (vision_url_for(host_header, self.config.url, http_port),
                self.mint_token(device_id, client_id, generation))

    # ------------------------------------------------------------------ HTTP

    def add_routes(self, app: web.Application, path: str = PATH) -> None:
        app.router.add_route("GET", path, self.handle_get)
        app.router.add_route("POST", path, self.handle_post)

    async def handle_get(self, request: web.Request) -> web.Response:
        model = self.config.model if self.enabled else "not configured"
        return web.Response(text=f"Vision endpoint. POST multipart/form-data (question, file) with Device-Id, "
                                 f"Client-Id and Authorization: Bearer <token>. Model: {model}\n")

    async def handle_post(self, request: web.Request) -> web.Response:
        t0 = time.monotonic()
        device_id = request.headers.get("Device-Id", "").strip().lower()
        who = device_id or request.remote or "?"
        try:
            if not self.enabled:
                raise _Reject(503, "vision is not configured on this server")
            client_id = await self._check_auth(request, device_id)
            if not self._rate.allow(f"{device_id}|{client_id}"):
                raise _Reject(429, "too many photos, try again in a minute",
                              f"more than {self.config.requests_per_minute} uploads per minute")
            limit = self.config.max_image_bytes + _MAX_QUESTION_BYTES + 64 * 1024
            if request.content_length is not None and request.content_length > limit:
                # Declared too large: refused before a byte of the body is read.
                raise _Reject(413, f"the image is larger than {_size(self.config.max_image_bytes)}")
            async with self._slots:
                try:
                    async with asyncio.timeout(self.config.upload_timeout_s):
                        question, image = await self._read_upload(request)
                except TimeoutError:
                    raise _Reject(408, "the upload took too long") from None
                mime = image_mime(image)
                if mime is None:
                    raise _Reject(415, "the file is not a JPEG, PNG, GIF or WebP image")
                answer = await self._ask(question, image, mime)
        except _Reject as rej:
            log.warning("[vision %s] rejected (%d): %s", who, rej.status, rej.log_reason)
            # The firmware's camera tool drops the body of any non-200 answer and reports only
            # "failed to upload": for failures on our side (model down, not configured) answer
            # 200 with success false, so the message reaches the LLM and the user hears why.
            status = 200 if rej.status in (502, 503, 504) else rej.status
            return _json({"success": False, "message": rej.message}, status)
        log.info("[vision %s] %r, %d KB %s -> %r in %.1f s", who, question[:80], len(image) // 1024, mime,
                 answer[:120], time.monotonic() - t0)
        return _json({"success": True, "action": "RESPONSE", "response": answer})

    async def _check_auth(self, request: web.Request, device_id: str) -> str:
        client_id = request.headers.get("Client-Id", "").strip()[:64]
        scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        if not device_id or not token:
            raise _Reject(401, "unauthorized", "no Device-Id header or no Bearer token")
        result = self.tokens.verify_token(token, device_id, client_id)
        if result.reason is not None:
            raise _Reject(401, "unauthorized", f"client {client_id!r}: {result.reason}")
        if result.generation and self.current_generation is not None:
            # Generation g+1 marks a token of a paired device (0: minted without pairing).
            current = await self.current_generation(device_id, client_id)
            if current is None or current + 1 != result.generation:
                raise _Reject(401, "unauthorized", "device revoked since the token was minted")
        return client_id

    async def _read_upload(self, request: web.Request) -> tuple[str, bytes]:
        if not request.content_type.startswith("multipart/"):
            raise _Reject(400, "expected multipart/form-data with a question field and an image file")
        try:
            reader = await request.multipart()
        except (ValueError, AssertionError) as exc:
            raise _Reject(400, "malformed multipart body", f"malformed multipart: {exc}") from None
        question = ""
        image: bytes | None = None
        try:
            while True:
                part = await reader.next()
                if part is None:
                    break
                if not isinstance(part, BodyPartReader):
                    raise _Reject(400, "nested multipart is not supported")
                if part.name == "question":
                    raw = await self._read_part(part, _MAX_QUESTION_BYTES, "the question is too long")
                    question = raw.decode("utf-8", "replace").strip()
                elif part.name in ("file", "image") and image is None:
                    limit = self.config.max_image_bytes
                    image = await self._read_part(part, limit, f"the image is larger than {_size(limit)}", 413)
                else:
                    await part.release()  # an unknown field: skip it
        except _Reject:
            raise
        except (ValueError, AssertionError, ConnectionError) as exc:  # a broken body or a dropped upload
            raise _Reject(400, "malformed multipart body", f"malformed multipart: {exc}") from None
        if not image:
            raise _Reject(400, "no image: send the photo as the multipart field 'file'")
        return question or "What is in this photo?", image

    @staticmethod
    async def _read_part(part: BodyPartReader, limit: int, too_big: str, status: int = 400) -> bytes:
        buf = bytearray()
        while chunk := await part.read_chunk(64 * 1024):
            buf += chunk
            if len(buf) > limit:
                raise _Reject(status, too_big)
        return bytes(buf)

    async def _ask(self, question: str, image: bytes, mime: str) -> str:
        try:
            return await self.model.describe(question, image, mime)
        except VisionFailed as exc:
            raise _Reject(504 if exc.timed_out else 502, exc.message, exc.detail) from None

    async def close(self) -> None:
        await self.model.close()
