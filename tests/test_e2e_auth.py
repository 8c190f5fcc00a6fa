"""Auth on (pairing on, its default there): only devices the owner paired get tokens; tokens from
OTA are accepted, everything else gets HTTP 401 before the upgrade."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus

from harness.devsim import DeviceConnectError, SimDevice
from harness.devsim.activation import activate_like_firmware
from harness.devsim.server_process import ServerProcess, start_server
from server.transport.auth import TokenAuth
from tests.conftest import http_json

pytestmark = pytest.mark.e2e

ALLOWED = "02:aa:bb:cc:dd:01"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
async def auth_server() -> AsyncIterator[ServerProcess]:
    async with start_server({"server": {"auth": {"enabled": True, "allowed_devices": [ALLOWED.upper()]}},
                             "llm": {"temperature": 0.0}}) as proc:
        yield proc


def devices_cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m server devices ...` with the running server's own config (as its owner would)."""
    override = server.data_dir.parent / "override.yaml"
    return subprocess.run([sys.executable, "-m", "server", "--config", str(override), "devices", *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


async def pair(server: ServerProcess, dev: SimDevice) -> list[str]:
    """The firmware's activation loop, with the owner typing the code shown into the CLI."""
    shown: list[str] = []

    async def owner_reads_screen(code: str, message: str) -> None:
        shown.append(code)
        result = await asyncio.to_thread(devices_cli, server, "pair", code)
        assert result.returncode == 0, result.stderr

    await activate_like_firmware(dev, server.http_url, owner_reads_screen)
    return shown


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


async def test_firmware_pairing_flow(auth_server: ServerProcess) -> None:
    """Unknown device: OTA answers with a 6-digit code and a challenge and no token; the device
    shows it and polls activate (202); the owner confirms with the CLI; activate answers 200;
    the next OTA carries the token and no activation; the device talks."""
    async with SimDevice() as dev:
        first = await dev.ota(auth_server.http_url)
        assert first["websocket"]["token"] == "" and first["activation"]["code"].isdigit()
        assert first["activation"]["challenge"] and first["activation"]["code"] in first["activation"]["message"]
        assert await try_connect(auth_server, "", dev) == 401
        codes = await pair(auth_server, dev)
        assert codes == [first["activation"]["code"]]  # the same code until confirmed
        assert "activation" not in dev.ota_response and dev.ws_token.startswith("v2.")
        await dev.connect()
        result = await dev.ask_text("Hello.")
        assert result.completed


async def test_py_xiaozhi_pairs_the_same_way(auth_server: ServerProcess) -> None:
    async with SimDevice(py_xiaozhi=True) as dev:
        await pair(auth_server, dev)
        await dev.connect()
        assert (await dev.ask_text("Hello.")).completed


async def test_no_token_is_401(auth_server: ServerProcess) -> None:
    async with SimDevice() as dev:
        assert await try_connect(auth_server, "", dev) == 401


async def test_bad_token_is_401(auth_server: ServerProcess) -> None:
    async with SimDevice() as dev:
        assert await try_connect(auth_server, "v1.9999999999.forged", dev) == 401


async def test_expired_token_and_wrong_generation_are_401(auth_server: ServerProcess) -> None:
    secret = (auth_server.data_dir / "auth_secret").read_text().strip().encode()
    async with SimDevice() as dev:
        await pair(auth_server, dev)
        generation = int(dev.ws_token.split(".")[1])
        ident = dev.identity
        stale = TokenAuth(secret=secret, ttl_seconds=1).mint(ident.mac, ident.client_id, now=1000,
                                                             generation=generation)
        assert await try_connect(auth_server, stale, dev) == 401
        other_gen = TokenAuth(secret=secret, ttl_seconds=60).mint(ident.mac, ident.client_id,
                                                                 generation=generation + 1)
        assert await try_connect(auth_server, other_gen, dev) == 401
        fresh = TokenAuth(secret=secret, ttl_seconds=60).mint(ident.mac, ident.client_id, generation=generation)
        assert await try_connect(auth_server, fresh, dev) == 101


async def test_signed_token_of_an_unpaired_device_is_401(auth_server: ServerProcess) -> None:
    """Even a correctly signed token is refused when the registry does not know the device."""
    secret = (auth_server.data_dir / "auth_secret").read_text().strip().encode()
    async with SimDevice() as dev:
        token = TokenAuth(secret=secret, ttl_seconds=60).mint(dev.identity.mac, dev.identity.client_id)
        assert await try_connect(auth_server, token, dev) == 401


async def test_token_of_another_device_is_401(auth_server: ServerProcess) -> None:
    async with SimDevice() as a, SimDevice() as b:
        await pair(auth_server, a)
        assert await try_connect(auth_server, a.ws_token, b) == 401


async def test_allow_listed_device_needs_no_token(auth_server: ServerProcess) -> None:
    from harness.devsim.identity import DeviceIdentity

    async with SimDevice(identity=DeviceIdentity(mac=ALLOWED)) as dev:
        data = await dev.ota(auth_server.http_url)
        assert "activation" not in data  # no pairing for allow-listed ids
        assert await try_connect(auth_server, "", dev) == 101
        result = await dev.ask_text("Hello.")
        assert result.completed


# Servers that never hold a conversation (pairing, tokens, restarts only) start without loading
# local models: remote providers at an address nothing listens on, never called. Three such
# starts take seconds instead of a minute; what is tested (secret, registry, tokens) is the same.
NO_MODELS = {
    "asr": {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "k", "model": "m"},
    "llm": {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "k", "model": "m"},
    "tts": {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "k", "model": "m", "voice": "v"},
}


async def test_pairing_and_tokens_survive_a_restart(tmp_path) -> None:
    """The secret and the registry are kept under data/: a device paired before a restart keeps
    its token after it. With pairing off, any device gets a token (the reference behaviour)."""
    overrides = {"server": {"auth": {"enabled": True}}, "data_dir": str(tmp_path / "data"), **NO_MODELS}
    async with SimDevice() as dev:
        async with start_server(overrides) as first:
            await pair(first, dev)
            token = dev.ws_token
        async with start_server(overrides) as second:
            assert await try_connect(second, token, dev) == 101
            await dev.close()
            assert "activation" not in await dev.ota(second.http_url)
    legacy = {"server": {"auth": {"enabled": True, "pairing": {"enabled": False}}}, **NO_MODELS}
    async with start_server(legacy) as server, SimDevice() as dev:
        data = await dev.ota(server.http_url)
        assert "activation" not in data and data["websocket"]["token"].startswith("v2.")
        assert await try_connect(server, None, dev) == 101


async def test_metrics_count_rejections(auth_server: ServerProcess) -> None:
    data = await http_json(auth_server.http_url + "/metrics")
    assert data["counters"].get("auth_rejected", 0) >= 1
