"""Device registry and pairing policy (SQLite, real files), and the `devices` CLI."""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys
from pathlib import Path

import pytest

from server.pairing import Pairing, PairingConfig, SqliteDeviceRegistry
from server.pairing.memory_identity import MemoryIdentities, derived_identity
from server.pairing.networks import PendingCaps, is_local, network_of
from server.pairing.registry import PendingCode, Unproven
from server.pairing.service import expected_hmacs
from server.transport.auth import TokenAuth

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


# ------------------------------------------------------------------------------ issue 10 gaps


def test_networks_and_local_addresses() -> None:
    assert network_of("44.1.2.3") == "44.1.2.0/24" and network_of("::ffff:44.1.2.3") == "44.1.2.0/24"
    assert network_of("2a00:1:2:3::9") == network_of("2a00:1:2:3:ffff::1") == "2a00:1:2:3::/64"
    assert all(is_local(a) for a in ("192.168.1.5", "10.9.8.7", "127.0.0.9", "fe80::1", "fd00::1", "::1"))
    assert not any(is_local(a) for a in ("44.1.2.3", "2a00:1::1", "8.8.8.8"))


async def test_pending_codes_per_network_and_a_share_kept_for_the_lan(tmp_path: Path) -> None:
    """An attacker with a whole /24 (or a /64) holds few codes; the public internet together holds
    at most max_pending_public; the rest stays for devices on the owner's network."""
    registry = SqliteDeviceRegistry(tmp_path / "devices.sqlite3")
    await registry.open()
    try:
        p = Pairing(registry, PairingConfig(max_pending=10, max_pending_per_address=3, max_pending_per_network=2,
                                            max_pending_public=6))
        n = iter(range(10_000))

        async def new_device(address: str) -> bool:
            i = next(n)
            decision = await ota(p, device=f"02:10:00:00:{i // 256:02x}:{i % 256:02x}", address=address)
            return decision.activation is not None

        assert [await new_device(f"44.1.1.{i}") for i in range(10)].count(True) == 2  # one /24
        assert [await new_device(f"2a00:1:2:3::{i:x}") for i in range(10)].count(True) == 2  # one /64
        # Many networks: the public share fills (6) and stops there.
        assert [await new_device(f"44.2.{i}.1") for i in range(10)].count(True) == 2
        # A device physically present (on the LAN) still pairs, up to the total.
        assert [await new_device(f"192.168.1.{i}") for i in range(10)].count(True) == 4
        assert not await new_device("192.168.1.200")  # total 10 reached
        assert PendingCaps(10, 3, 2, 6).refusal(["44.1.1.1"] * 2, "44.1.1.9") == "codes pending for network 44.1.1.0/24"
    finally:
        await registry.close()


async def test_memory_identity_is_trust_on_first_use(pairing: Pairing) -> None:
    registry = pairing.registry
    auth = TokenAuth(secret=b"x" * 32, ttl_seconds=3600, enabled=False)
    ids = MemoryIdentities(registry, auth)
    other = "9b1c3a9e-1b2c-4d5e-8f90-123456789abc"
    assert await ids.resolve(MAC, CLIENT, "") == MAC  # first contact claims the id's memory
    impostor = await ids.resolve(MAC, other, "")
    assert impostor == derived_identity(MAC, other) and impostor != MAC
    assert await ids.resolve(MAC, other, "") == impostor  # stable: the impostor keeps its own memory
    no_client = await ids.resolve(MAC, "", "")
    assert no_client not in (MAC, impostor)
    assert await ids.resolve(MAC, CLIENT, "") == MAC
    # The owner hands the memory to the board after a flash erase (new client id).
    assert await registry.release_memory(MAC)
    assert await ids.resolve(MAC, other, "") == MAC and await ids.resolve(MAC, CLIENT, "") != MAC
    # A paired device never gives its memory to a connection without its valid token.
    paired = "02:00:00:00:00:22"
    code = (await ota(pairing, device=paired)).activation["code"]
    record = await pairing.confirm(code)
    assert record is not None
    assert await ids.resolve(paired, CLIENT, "") != paired
    token = auth.mint(paired, CLIENT, generation=record.generation)
    assert await ids.resolve(paired, CLIENT, f"Bearer {token}") == paired
    assert await ids.resolve(paired, other, f"Bearer {token}") != paired  # the token names another client
    await registry.revoke(paired)
    assert await ids.resolve(paired, CLIENT, f"Bearer {token}") == paired  # revoked: its paired client's still
    assert await ids.resolve(paired, other, "") != paired  # ... and nobody else's


async def test_activation_hmac_when_a_key_is_registered(pairing: Pairing) -> None:
    key = "5a" * 32  # as registered with `devices key ID HEX`
    await pairing.registry.set_key(MAC, key, 0)
    decision = await ota(pairing)
    code, challenge = decision.activation["code"], decision.activation["challenge"]
    with pytest.raises(Unproven):  # the owner typed the code before the board proved anything
        await pairing.confirm(code)
    wrong = hmac.new(bytes.fromhex("a5" * 32), challenge.encode(), hashlib.sha256).hexdigest()
    body = {"algorithm": "hmac-sha256", "serial_number": "SN1", "challenge": challenge, "hmac": wrong}
    assert await pairing.check_activation(MAC, CLIENT, body) == "bad"
    assert await pairing.check_activation(MAC, CLIENT, {}) == "bad"  # a board without a serial number
    with pytest.raises(Unproven):
        await pairing.confirm(code)
    right = hmac.new(bytes.fromhex(key), challenge.encode(), hashlib.sha256).hexdigest()  # as the eFuse does
    assert await pairing.check_activation(MAC, "another-client", {**body, "hmac": right}) == "bad"
    assert await pairing.check_activation(MAC, CLIENT, {**body, "hmac": right}) == "proven"
    assert (await pairing.confirm(code)).device_id == MAC
    # py-xiaozhi keys its HMAC with the text of efuse.json's hmac_key; the same registered key covers it.
    py = "02:00:00:00:00:33"
    await pairing.registry.set_key(py, key, 0)
    decision = await ota(pairing, device=py, address="10.0.0.3")
    challenge = decision.activation["challenge"]
    signed = hmac.new(key.encode(), challenge.encode(), hashlib.sha256).hexdigest()
    assert signed in expected_hmacs(key, challenge)
    payload = {"Payload": {"algorithm": "hmac-sha256", "challenge": challenge, "hmac": signed}}
    assert await pairing.check_activation(py, CLIENT, payload) == "proven"
    # A proof is for one challenge: a new code (after expiry) needs a new one.
    pairing.test_clock.now += 61  # type: ignore[attr-defined]
    again = await ota(pairing, device=py, address="10.0.0.3")
    with pytest.raises(Unproven):
        await pairing.confirm(again.activation["code"])
    # Without a registered key nothing changes: `{}` from a stock board is fine.
    plain = "02:00:00:00:00:44"
    decision = await ota(pairing, device=plain, address="10.0.0.4")
    assert await pairing.check_activation(plain, CLIENT, {}) == "no-key"
    assert (await pairing.confirm(decision.activation["code"])).device_id == plain
