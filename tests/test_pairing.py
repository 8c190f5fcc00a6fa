"""Device registry and pairing policy (SQLite, real files), and the `devices` CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from server.pairing import Pairing, PairingConfig, SqliteDeviceRegistry
from server.pairing.registry import PendingCode

MAC = "02:00:00:00:00:01"
CLIENT = "2f1c3a9e-1b2c-4d5e-8f90-123456789abc"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def pairing(tmp_path: Path):
    registry = SqliteDeviceRegistry(tmp_path / "devices.sqlite3")
    await registry.open()
    clock = Clock()
    p = Pairing(registry, PairingConfig(code_ttl_s=60, max_pending=5, max_pending_per_address=2), clock=clock)
    p.test_clock = clock  # type: ignore[attr-defined]
    yield p
    await registry.close()


async def ota(p: Pairing, device: str = MAC, client: str = CLIENT, address: str = "10.0.0.2"):
    return await p.on_ota(device_id=device, client_id=client, board="bread-compact-wifi", firmware="2.4.2",
                          address=address, language="zh-CN")


async def test_code_then_pair_then_token_generation(pairing: Pairing) -> None:
    first = await ota(pairing)
    assert not first.paired and first.activation is not None
    code = first.activation["code"]
    assert len(code) == 6 and code.isdigit() and first.activation["challenge"]
    assert code in first.activation["message"] and first.activation["timeout_ms"] == 60_000
    again = await ota(pairing)  # the device asks again: same code, not a new one
    assert again.activation["code"] == code
    assert not await pairing.is_paired(MAC, CLIENT)
    assert await pairing.confirm("000000" if code != "000000" else "111111") is None  # wrong code: nothing
    record = await pairing.confirm(code, owner="alice")
    assert record is not None and record.device_id == MAC and record.owner == "alice" and record.paired
    assert await pairing.confirm(code) is None  # a code works once
    assert await pairing.is_paired(MAC, CLIENT)
    assert not await pairing.is_paired(MAC, "another-client")  # the token is bound to the board's uuid
    done = await ota(pairing)
    assert done.paired and done.activation is None and done.generation == record.generation
    revoked = await pairing.registry.revoke(MAC)
    assert revoked is not None and not revoked.paired and revoked.generation == record.generation + 1
    assert await pairing.current_generation(MAC, CLIENT) is None
    back = await ota(pairing)  # back to pairing, with a fresh code
    assert not back.paired and back.activation is not None
    repaired = await pairing.confirm(back.activation["code"])
    assert repaired.generation == record.generation + 1  # old tokens (old generation) stay dead


async def test_codes_expire(pairing: Pairing) -> None:
    code = (await ota(pairing)).activation["code"]
    pairing.test_clock.now += 61  # type: ignore[attr-defined]
    assert await pairing.confirm(code) is None
    assert not await pairing.is_paired(MAC, CLIENT)
    fresh = await ota(pairing)
    assert fresh.activation is not None and fresh.activation["timeout_ms"] == 60_000


async def test_a_flood_never_evicts_pending_codes(pairing: Pairing) -> None:
    victim = (await ota(pairing, address="10.0.0.2")).activation["code"]
    # One address: at most 2 pending codes.
    results = [await ota(pairing, device=f"02:00:00:00:01:{i:02x}", address="10.0.0.66") for i in range(20)]
    assert sum(r.activation is not None for r in results) == 2 and all(r.busy for r in results[2:])
    # Many addresses: the table fills (5) and stays full; nobody's code is pushed out.
    many = [await ota(pairing, device=f"02:00:00:00:02:{i:02x}", address=f"10.0.1.{i}") for i in range(20)]
    assert sum(r.activation is not None for r in many) == 2 and all(r.busy for r in many[2:])
    pending = await pairing.registry.list_pending(pairing.test_clock.now)  # type: ignore[attr-defined]
    assert len(pending) == 5 and MAC in {p.device_id for p in pending}
    assert (await pairing.confirm(victim)).device_id == MAC
    # Once codes expire, the space is free again.
    pairing.test_clock.now += 61  # type: ignore[attr-defined]
    assert (await ota(pairing, device="02:00:00:00:03:01", address="10.0.2.1")).activation is not None


async def test_code_collisions_draw_again(pairing: Pairing, monkeypatch: pytest.MonkeyPatch) -> None:
    import server.pairing.service as service

    draws = iter(["123456", "123456", "654321"])
    monkeypatch.setattr(service, "new_code", lambda: next(draws))
    a = await ota(pairing, device="02:00:00:00:00:0a")
    b = await ota(pairing, device="02:00:00:00:00:0b", address="10.0.0.3")
    assert (a.activation["code"], b.activation["code"]) == ("123456", "654321")


async def test_registry_stores_only_paired_devices(pairing: Pairing) -> None:
    for i in range(4):
        await ota(pairing, device=f"02:00:00:00:05:{i:02x}", address=f"10.0.5.{i}")
    assert await pairing.registry.list_devices() == []
    assert await pairing.registry.generations(["02:00:00:00:05:00"]) == {"02:00:00:00:05:00": None}
    assert isinstance((await pairing.registry.list_pending(0))[0], PendingCode)


def test_cli_pairs_lists_and_revokes(tmp_path: Path) -> None:
    """The real CLI process against a registry file (as next to a running server)."""
    import asyncio

    data = tmp_path / "data"
    override = tmp_path / "override.yaml"
    override.write_text(f"data_dir: {data}\nserver:\n  auth:\n    enabled: true\n")

    async def issue() -> str:
        registry = SqliteDeviceRegistry(data / "devices.sqlite3")
        await registry.open()
        try:
            decision = await Pairing(registry, PairingConfig()).on_ota(
                device_id=MAC, client_id=CLIENT, board="bread-compact-wifi", firmware="2.4.2", address="10.0.0.2")
            return decision.activation["code"]
        finally:
            await registry.close()

    code = asyncio.run(issue())

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "server", "--config", str(override), "devices", *args],
                              capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])

    listed = cli("list")
    assert listed.returncode == 0 and "waiting for pairing" in listed.stdout and MAC in listed.stdout
    assert code not in listed.stdout  # the code is read off the device, never printed here
    wrong = cli("pair", "999999" if code != "999999" else "111111")
    assert wrong.returncode == 1 and "no device is waiting" in wrong.stderr
    ok = cli("pair", code, "--owner", "alice")
    assert ok.returncode == 0 and f"paired {MAC}" in ok.stdout
    listed = cli("list")
    assert "paired" in listed.stdout and "alice" in listed.stdout
    revoked = cli("revoke", MAC.upper())
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert "revoked" in cli("list").stdout
    assert cli("revoke", "02:00:00:00:00:99").returncode == 1
