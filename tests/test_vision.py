"""The vision endpoint against a fake OpenAI-compatible chat API on 127.0.0.1, uploads built the
way the firmware's camera builds them (question field, then camera.jpg, chunked)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from server.transport.auth import TokenAuth
from server.transport.vision import PATH, VisionConfig, VisionHandler, image_mime, vision_url_for

DEVICE = "aa:bb:cc:dd:ee:ff"
CLIENT = "3c9b1c1e-0000-4000-8000-000000000001"
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40 + b"\xff\xd9"


@dataclass
class FakeOpenAI:
    """POST /v1/chat/completions; checks the request carries the image as a data URI."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    mode: str = "ok"  # ok | error | slow
    answer: str = "<think>a fruit?</think>A red apple on a white table."

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append({"body": body, "auth": request.headers.get("Authorization", "")})
        if self.mode == "error":
            return web.json_response({"error": {"message": "model overloaded", "type": "server_error"}}, status=500)
        if self.mode == "slow":
            await asyncio.sleep(1.0)
        return web.json_response({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": self.answer}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        })

    def image_and_question(self) -> tuple[str, str]:
        user = self.requests[-1]["body"]["messages"][-1]
        url = next(p["image_url"]["url"] for p in user["content"] if p["type"] == "image_url")
        text = next(p["text"] for p in user["content"] if p["type"] == "text")
        return url, text


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


@dataclass
class Env:
    fake: FakeOpenAI
    handler: VisionHandler
    auth: TokenAuth
    url: str
    http: aiohttp.ClientSession


@contextlib.asynccontextmanager
async def env(**overrides: Any) -> AsyncIterator[Env]:
    fake = FakeOpenAI()
    fake_app = web.Application(client_max_size=64 * 1024 * 1024)
    fake_app.router.add_post("/v1/chat/completions", fake.chat)
    fake_runner, fake_url = await _serve(fake_app)
    # WebSocket auth is OFF here: vision must still demand a token.
    auth = TokenAuth(secret=b"test-secret", ttl_seconds=3600, enabled=False)
    settings: dict[str, Any] = {"base_url": f"{fake_url}/v1", "api_key": "sk-test", "model": "vl-test",
                                "timeout_s": 5}
    settings.update(overrides)
    handler = VisionHandler(VisionConfig(**settings), auth)
    app = web.Application(client_max_size=1024 * 1024)  # as the server's HTTP app
    handler.add_routes(app)
    runner, url = await _serve(app)
    async with aiohttp.ClientSession() as http:
        try:
            yield Env(fake, handler, auth, url + PATH, http)
        finally:
            await handler.close()
            await runner.cleanup()
            await fake_runner.cleanup()


def firmware_body(question: str | None, image: bytes | None, boundary: str = "----ESP32_CAMERA_BOUNDARY") -> bytes:
    """Byte for byte the multipart layout of Esp32Camera::Explain."""
    out = b""
    if question is not None:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"question\"\r\n\r\n"
                f"{question}\r\n").encode()
    if image is not None:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"camera.jpg\"\r\n"
                f"Content-Type: image/jpeg\r\n\r\n").encode() + image + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


async def upload(e: Env, *, question: str | None = "这是什么水果？", image: bytes | None = JPEG,
                 token: str | None = "mint", device: str = DEVICE, client: str = CLIENT,
                 extra_headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    if token == "mint":
        token = e.handler.mint_token(device, client)
    headers = {"Device-Id": device, "Client-Id": client,
               "Content-Type": "multipart/form-data; boundary=----ESP32_CAMERA_BOUNDARY"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    headers.update(extra_headers or {})
    body = firmware_body(question, image)

    async def chunks() -> AsyncIterator[bytes]:  # the firmware streams with chunked encoding
        for i in range(0, len(body), 4096):
            yield body[i:i + 4096]

    async with e.http.post(e.url, data=chunks(), headers=headers) as resp:
        assert resp.content_type == "application/json"
        return resp.status, json.loads(await resp.text())


async def test_photo_is_forwarded_as_data_uri_and_answered() -> None:
    async with env() as e:
        status, body = await upload(e)
        assert status == 200
        assert body == {"success": True, "action": "RESPONSE", "response": "A red apple on a white table."}
        url, question = e.fake.image_and_question()
        assert url.startswith("data:image/jpeg;base64,")
        assert base64.b64decode(url.split(",", 1)[1]) == JPEG
        assert question == "这是什么水果？"
        sent = e.fake.requests[-1]
        assert sent["body"]["model"] == "vl-test" and sent["auth"] == "Bearer sk-test"
        assert sent["body"]["messages"][0]["role"] == "system"


async def test_token_is_required_and_checked() -> None:
    async with env() as e:
        other_device = e.handler.mint_token("11:22:33:44:55:66", CLIENT)
        other_client = e.handler.mint_token(DEVICE, "another-client")
        websocket_token = e.auth.mint(DEVICE, CLIENT)  # valid for the WebSocket, not for vision
        for token, extra in [
            (None, None),
            ("", None),
            ("garbage", None),
            (other_device, None),
            (other_client, None),
            (websocket_token, None),
            (None, {"Client-Id": "web_test_client"}),  # the reference server's bypass: not here
        ]:
            status, body = await upload(e, token=token, extra_headers=extra)
            assert status == 401, token
            assert body["success"] is False and "message" in body
        expired = e.handler.tokens.mint(DEVICE, CLIENT, now=0)
        assert (await upload(e, token=expired))[0] == 401
        assert (await upload(e, device=""))[0] == 401
        assert e.fake.requests == []  # no paid model call for any of them
        # device ids are case-insensitive, as for the WebSocket token
        assert (await upload(e, device=DEVICE.upper()))[0] == 200


async def test_bad_uploads_are_rejected_clearly() -> None:
    async with env(max_image_bytes=20_000) as e:
        status, body = await upload(e, image=None)
        assert status == 400 and "file" in body["message"]
        status, body = await upload(e, image=b"this is not a picture at all")
        assert status == 415 and body["success"] is False
        status, body = await upload(e, image=JPEG * 3)  # 30 KB > 20 000 bytes
        assert status == 413 and "larger" in body["message"]
        headers = {"Device-Id": DEVICE, "Client-Id": CLIENT,
                   "Authorization": f"Bearer {e.handler.mint_token(DEVICE, CLIENT)}"}
        async with e.http.post(e.url, json={"question": "hi"}, headers=headers) as resp:
            assert resp.status == 400 and (await resp.json())["success"] is False
        # no question: a default one is asked
        status, _ = await upload(e, question=None)
        assert status == 200 and e.fake.image_and_question()[1]
        assert len(e.fake.requests) == 1


async def test_large_photo_passes_the_apps_body_limit() -> None:
    big = b"\xff\xd8\xff\xe0" + b"\x00" * 1_500_000  # above the HTTP app's 1 MiB client_max_size
    async with env(max_image_bytes=2_000_000) as e:
        status, body = await upload(e, image=big)
        assert status == 200 and body["success"] is True
        url, _ = e.fake.image_and_question()
        assert len(base64.b64decode(url.split(",", 1)[1])) == len(big)


async def test_model_failures_become_json_errors() -> None:
    async with env(timeout_s=0.5) as e:
        e.fake.mode = "error"
        status, body = await upload(e)
        assert status == 200 and body["success"] is False and "500" in body["message"]
        e.fake.mode = "slow"
        status, body = await upload(e)
        assert status == 200 and "0.5 s" in body["message"]


async def test_get_and_disabled() -> None:
    async with env() as e:
        async with e.http.get(e.url) as resp:
            assert resp.status == 200 and "vl-test" in await resp.text()
    async with env(model="") as e:
        assert not e.handler.enabled
        assert e.handler.device_capability(DEVICE, CLIENT, "192.168.1.5:8003", 8003) == ("", "")
        status, body = await upload(e)
        assert status == 200 and body["success"] is False


def test_capability_url_and_token() -> None:
    handler = VisionHandler(VisionConfig(base_url="http://x/v1", model="m"), TokenAuth(b"s", 60))
    url, token = handler.device_capability(DEVICE, CLIENT, "192.168.1.5:8003", 8003)
    assert url == "http://192.168.1.5:8003/mcp/vision/explain"
    assert handler.tokens.verify(token, DEVICE, CLIENT) is None
    assert TokenAuth(b"s", 60).verify(token, DEVICE, CLIENT) is not None  # not a WebSocket token
    assert vision_url_for("[::1]:8003", "", 9000) == "http://[::1]:9000/mcp/vision/explain"
    assert vision_url_for("", "", 8003) == "http://127.0.0.1:8003/mcp/vision/explain"
    assert vision_url_for("a:1", "https://vision.example.com/explain", 8003) == "https://vision.example.com/explain"
    assert image_mime(JPEG) == "image/jpeg" and image_mime(b"RIFF\0\0\0\0WEBPVP8 ") == "image/webp"
    assert image_mime(b"<html>") is None


@pytest.mark.parametrize("answer", ["", "<think>only thinking</think>"])
async def test_empty_answer_is_an_error(answer: str) -> None:
    async with env() as e:
        e.fake.answer = answer
        status, body = await upload(e)
        assert status == 200 and body["success"] is False
