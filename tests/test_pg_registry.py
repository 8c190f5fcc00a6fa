"""The device registry on PostgreSQL, shared by processes: the same contract as the SQLite
registry (run on both), plus what only a shared store shows: a code minted through one
registry (process) is claimed exactly once when two others confirm it at the same moment, and a
revocation is seen by every process at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from server.pairing import Pairing, PairingConfig, SqliteDeviceRegistry
from server.pairing.networks import PendingCaps
from server.pairing.registry import CodeTaken, PendingCode, Unproven
from server.state import open_state
from server.state.config import StateConfig

ROOT = Path(__file__).resolve().parents[1]
MAC = "02:00:00:00:00:01"
CLIENT = "2f1c3a9e-1b2c-4d5e-8f90-123456789abc"


def pending(code: str, device: str = MAC, address: str = "10.0.0.2", now: float = 1000.0,
            client: str = CLIENT) -> PendingCode:
    return PendingCode(device, client, "bread", "2.4.2", code, "challenge", address, now, now + 60)


@pytest.fixture(params=["sqlite", "postgresql"])
async def registry(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "sqlite":
        reg = SqliteDeviceRegistry(tmp_path / "devices.sqlite3")
        await reg.open()
        yield reg
        await reg.close()
        return
    from server.state.pg_registry import PgDeviceRegistry

    pg = request.getfixturevalue("pg_cluster")
    state = await open_state(StateConfig(url=await pg.new_database()), None)
    reg = PgDeviceRegistry(state.extras["pg_pool"])
    await reg.open()
    yield reg
    await state.close()


async def test_registry_contract(registry: Any) -> None:
    assert await registry.add_pending(pending("111111"), PendingCaps(10, 10), 1000.0) is not None
    assert (await registry.pending(MAC, 1001.0)).code == "111111"
    # Same device and client asks again: the existing code comes back.
    assert (await registry.add_pending(pending("222222"), PendingCaps(10, 10), 1001.0)).code == "111111"
    with pytest.raises(CodeTaken):
        await registry.add_pending(pending("111111", device="02:00:00:00:00:02"), PendingCaps(10, 10), 1001.0)
    # Caps: per address.
    per_address = PendingCaps(10, 2)
    assert await registry.add_pending(pending("333333", device="02:00:00:00:00:03"), per_address, 1001.0) is not None
    assert await registry.add_pending(pending("444444", device="02:00:00:00:00:04"), per_address, 1001.0) is None
    assert await registry.confirm("999999", "owner", 1002.0) is None
    record = await registry.confirm("111111", "alice", 1002.0)
    assert record is not None and record.paired and record.owner == "alice" and record.generation == 1
    assert await registry.confirm("111111", "bob", 1002.0) is None, "a code works once"
    assert await registry.pending(MAC, 1002.0) is None
    await registry.touch(MAC, CLIENT, "", "2.5.0", 1003.0)
    got = await registry.get(MAC)
    assert got.firmware == "2.5.0" and got.board == "bread" and got.last_seen == 1003.0
    assert await registry.generations([MAC, "02:00:00:00:00:03", "nobody"]) == {
        MAC: 1, "02:00:00:00:00:03": None, "nobody": None}
    revoked = await registry.revoke(MAC)
    assert not revoked.paired and revoked.generation == 2
    assert await registry.generations([MAC]) == {MAC: None}
    assert [d.device_id for d in await registry.list_devices()] == [MAC]
    assert [p.code for p in await registry.list_pending(1003.0)] == ["333333"]
    assert await registry.list_pending(2000.0) == [], "expired codes are not listed"


async def test_registry_claims_keys_proofs_and_network_caps(registry: Any) -> None:
    """Issue 10's additions behave the same on both engines."""
    other = "9b1c3a9e-1b2c-4d5e-8f90-123456789abc"
    assert await registry.claim_memory(MAC, CLIENT, 1.0) == CLIENT
    assert await registry.claim_memory(MAC, other, 2.0) == CLIENT  # first use wins
    assert await registry.release_memory(MAC) and not await registry.release_memory(MAC)
    assert await registry.claim_memory(MAC, other, 3.0) == other
    # A registered key: the code is confirmed only after a proof for its challenge.
    await registry.set_key(MAC, "ab" * 32, 1000.0)
    assert await registry.get_key(MAC) == "ab" * 32
    assert await registry.add_pending(pending("555555"), PendingCaps(10, 10), 1000.0) is not None
    with pytest.raises(Unproven):
        await registry.confirm("555555", "owner", 1001.0)
    await registry.add_proof(MAC, "another challenge", 1001.0)
    with pytest.raises(Unproven):
        await registry.confirm("555555", "owner", 1001.0)
    await registry.add_proof(MAC, "challenge", 1001.0)
    assert (await registry.confirm("555555", "owner", 1002.0)).paired
    await registry.set_key(MAC, None, 1003.0)
    assert await registry.get_key(MAC) is None
    # Per public network, and a share kept for the LAN.
    caps = PendingCaps(max_total=6, max_per_address=5, max_per_network=2, max_public=3)
    stored = [await registry.add_pending(pending(f"6000{i:02d}", device=f"02:00:00:00:06:{i:02x}",
                                                 address=f"44.1.1.{i}"), caps, 1000.0) for i in range(4)]
    assert [s is not None for s in stored] == [True, True, False, False]
    assert await registry.add_pending(pending("600100", device="02:00:00:00:07:01", address="44.2.2.2"),
                                      caps, 1000.0) is not None
    assert await registry.add_pending(pending("600101", device="02:00:00:00:07:02", address="44.3.3.3"),
                                      caps, 1000.0) is None  # the public share (3) is full
    assert await registry.add_pending(pending("600102", device="02:00:00:00:07:03", address="192.168.1.9"),
                                      caps, 1000.0) is not None  # the LAN still pairs
    assert await registry.confirm("333333", "x", 2000.0) is None, "expired codes cannot be claimed"


async def test_a_code_minted_on_one_process_is_claimed_once_across_processes(pg_cluster: Any) -> None:
    from server.state.pg_registry import PgDeviceRegistry

    url = await pg_cluster.new_database()
    states = [await open_state(StateConfig(url=url), None) for _ in range(3)]
    try:
        regs = [PgDeviceRegistry(s.extras["pg_pool"]) for s in states]
        for r in regs:
            await r.open()
        pairings = [Pairing(r, PairingConfig()) for r in regs]
        minted = await pairings[0].on_ota(device_id=MAC, client_id=CLIENT, board="b", firmware="1", address="a")
        code = minted.activation["code"]
        # The device asks again through another process: the same code, not a second one.
        again = await pairings[1].on_ota(device_id=MAC, client_id=CLIENT, board="b", firmware="1", address="a")
        assert again.activation["code"] == code
        results = await asyncio.gather(*(p.confirm(code, owner=f"owner{i}") for i, p in enumerate(pairings)))
        winners = [r for r in results if r is not None]
        assert len(winners) == 1, results
        for p in pairings:
            assert await p.current_generation(MAC, CLIENT) == winners[0].generation
        await regs[2].revoke(MAC)
        for p in pairings:  # revoked everywhere at once
            assert await p.current_generation(MAC, CLIENT) is None
    finally:
        for s in states:
            await s.close()


async def test_devices_cli_pairs_in_the_shared_registry(pg_cluster: Any, tmp_path: Path) -> None:
    """`python -m server devices pair CODE` on a fleet config confirms a code any process minted."""
    import subprocess
    import sys

    import yaml

    from server.state.pg_registry import PgDeviceRegistry

    url = await pg_cluster.new_database()
    state = await open_state(StateConfig(url=url), None)
    try:
        reg = PgDeviceRegistry(state.extras["pg_pool"])
        await reg.open()
        minted = await Pairing(reg, PairingConfig()).on_ota(device_id=MAC, client_id=CLIENT, board="b",
                                                             firmware="1", address="a")
        override = tmp_path / "fleet.yaml"
        override.write_text(yaml.safe_dump({
            "data_dir": str(tmp_path / "data"), "state": {"url": url},
            "server": {"websocket_url": "ws://lb/xiaozhi/v1/", "auth": {"enabled": True, "secret": "s"}}}))
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "server", "--config", str(override), "devices", "pair",
                             minted.activation["code"], "--owner", "ops"],
            cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        record = await reg.get(MAC)
        assert record is not None and record.paired and record.owner == "ops"
        assert not (tmp_path / "data" / "devices.sqlite3").exists(), "nothing went to a local SQLite file"
    finally:
        await state.close()
