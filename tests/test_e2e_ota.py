"""The OTA endpoint over real HTTP: what the firmware reads, tolerance of odd requests, and the
firmware upgrade offered only when a newer binary was placed in the firmware folder."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from harness.devsim import SimDevice
from harness.devsim.server_process import ServerProcess, start_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
async def ota_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[ServerProcess, Path]]:
    fw = tmp_path_factory.mktemp("firmware")
    (fw / "bread-compact-wifi_2.4.2.bin").write_bytes(b"same version")
    async with start_server({"server": {"firmware_dir": str(fw), "timezone_offset_minutes": 60}}) as proc:
        yield proc, fw


async def post(url: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, dict | str]:
    async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=headers) as r:
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text


HEADERS = {"Device-Id": "02:00:00:00:aa:01", "Client-Id": "c-1", "Content-Type": "application/json"}


@pytest.mark.parametrize("body", [None, b"", b"{}", b"not json", b"[1,2]",
                                  b'{"application": "oops", "board": 5}',
                                  b'{"application": {"version": "2.4.2"}}'])
async def test_odd_bodies_still_get_a_full_answer(ota_server, body) -> None:
    server, _ = ota_server
    status, data = await post(server.http_url + "/xiaozhi/ota/", body, HEADERS)
    assert status == 200, data
    assert data["websocket"]["url"] == server.ws_url
    assert "mqtt" not in data and "activation" not in data
    assert data["server_time"]["timezone_offset"] == 60
    assert abs(data["server_time"]["timestamp"] / 1000 - time.time()) < 60
    assert data["firmware"]["url"] == ""  # nothing newer: never an upgrade


async def test_device_id_from_the_body_when_the_header_is_missing(ota_server) -> None:
    server, _ = ota_server
    status, data = await post(server.http_url + "/xiaozhi/ota/", b'{"mac_address": "02:00:00:00:aa:02"}',
                              {"Content-Type": "application/json"})
    assert status == 200 and data["websocket"]["url"]


async def test_no_device_id_at_all_is_400(ota_server) -> None:
    server, _ = ota_server
    status, _ = await post(server.http_url + "/xiaozhi/ota/", b"{}", {})
    assert status == 400


async def test_get_and_options(ota_server) -> None:
    server, _ = ota_server
    async with aiohttp.ClientSession() as s:
        async with s.get(server.http_url + "/xiaozhi/ota/") as r:
            assert r.status == 200 and server.ws_url in await r.text()
        async with s.options(server.http_url + "/xiaozhi/ota/") as r:
            # No `*`: CORS only for server.allowed_origins (empty by default), so a web page
            # the user opens cannot read OTA answers (test_abuse covers a configured origin).
            assert r.status == 204 and "Access-Control-Allow-Origin" not in r.headers
        async with s.options(server.http_url + "/xiaozhi/ota/", headers={"Origin": "http://evil.example"}) as r:
            assert r.status == 204 and "Access-Control-Allow-Origin" not in r.headers


async def test_newer_firmware_is_offered_and_downloadable(ota_server) -> None:
    server, fw = ota_server
    (fw / "bread-compact-wifi_2.5.0.bin").write_bytes(b"new firmware image")
    try:
        async with SimDevice() as dev:
            data = await dev.ota(server.http_url)
            assert data["firmware"]["version"] == "2.5.0"
            url = data["firmware"]["url"]
            assert url.endswith("/xiaozhi/ota/download/bread-compact-wifi_2.5.0.bin")
            async with aiohttp.ClientSession() as s, s.get(url) as r:
                assert r.status == 200 and await r.read() == b"new firmware image"
                assert r.headers["Content-Length"] == str(len(b"new firmware image"))
            async with aiohttp.ClientSession() as s, s.get(url.rsplit("/", 1)[0] + "/..%2Fauth_secret") as r:
                assert r.status == 404
    finally:
        (fw / "bread-compact-wifi_2.5.0.bin").unlink()
