"""Auth on: tokens from OTA are accepted, everything else gets HTTP 401 before the upgrade."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from websockets.exceptions import InvalidStatus

from harness.devsim import DeviceConnectError, SimDevice
from harness.devsim.server_process import ServerProcess, start_server
from server.transport.auth import TokenAuth
from tests.conftest import http_json

pytestmark = pytest.mark.e2e

ALLOWED = "02:aa:bb:cc:dd:01"


@pytest.fixture(scope="module")
async def auth_server() -> AsyncIterator[ServerProcess]:
    async with start_server({"server": {"auth": {"enabled": True, "allowed_devices": [ALLOWED.upper()]}},
                             "llm": {"temperature": 0.0}}) as proc:
        yield proc


def rejected_status(exc: BaseException) -> int | None:
    while exc is not None:
        if isinstance(exc, DeviceConnectError) and exc.status:
            return exc.status
        if isinstance(exc, InvalidStatus):
            return exc.response.status_code
        exc = exc.__cause__ or exc.__context__
    return None


async def try_connect(server: ServerProcess, token: str | None, dev: SimDevice) -> int:
    try:
        await dev.connect(url=server.ws_url, token=token)
    except Exception as exc:  # noqa: BLE001
        status = rejected_status(exc)
        assert status is not None, f"unexpected failure: {exc!r}"
        return status
    return 101


async def test_ota_token_is_accepted(auth_server: ServerProcess) -> None:
    async with SimDevice() as dev:
        ota = await dev.ota(auth_server.http_url)
        assert ota["websocket"]["token"].startswith("v1.")
        await dev.connect()
        result = await dev.ask_text("Hello.")
        assert result.completed


async def test_no_token_is_401(auth_server: ServerProcess) -> None:
    async with SimDevice() as dev:
        assert await try_connect(auth_server, "", dev) == 401


async def test_bad_token_is_401(auth_server: ServerProcess) -> None:
    async with SimDevice() as dev:
        assert await try_connect(auth_server, "v1.9999999999.forged", dev) == 401


async def test_expired_token_is_401(auth_server: ServerProcess) -> None:
    secret = (auth_server.data_dir / "auth_secret").read_text().strip().encode()
    async with SimDevice() as dev:
        stale = TokenAuth(secret=secret, ttl_seconds=1).mint(dev.identity.mac, dev.identity.client_id, now=1000)
        assert await try_connect(auth_server, stale, dev) == 401
        fresh = TokenAuth(secret=secret, ttl_seconds=60).mint(dev.identity.mac, dev.identity.client_id)
        assert await try_connect(auth_server, fresh, dev) == 101


async def test_token_of_another_device_is_401(auth_server: ServerProcess) -> None:
    async with SimDevice() as a, SimDevice() as b:
        ota = await a.ota(auth_server.http_url)
        assert await try_connect(auth_server, ota["websocket"]["token"], b) == 401


async def test_allow_listed_device_needs_no_token(auth_server: ServerProcess) -> None:
    from harness.devsim.identity import DeviceIdentity

    async with SimDevice(identity=DeviceIdentity(mac=ALLOWED)) as dev:
        assert await try_connect(auth_server, "", dev) == 101
        result = await dev.ask_text("Hello.")
        assert result.completed


async def test_tokens_survive_a_restart(tmp_path) -> None:
    """The secret is kept under data/, so a token minted before a restart still works after."""
    overrides = {"server": {"auth": {"enabled": True}}, "data_dir": str(tmp_path / "data")}
    async with SimDevice() as dev:
        async with start_server(overrides) as first:
            token = (await dev.ota(first.http_url))["websocket"]["token"]
        async with start_server(overrides) as second:
            assert await try_connect(second, token, dev) == 101


async def test_metrics_count_rejections(auth_server: ServerProcess) -> None:
    data = await http_json(auth_server.http_url + "/metrics")
    assert data["counters"].get("auth_rejected", 0) >= 1
