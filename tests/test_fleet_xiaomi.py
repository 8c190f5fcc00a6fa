"""Xiaomi speakers in a fleet: two real server processes (on PostgreSQL, and on PostgreSQL with
leases and messages in Redis) bridge three speakers of the fake Xiaomi cloud, all on 127.0.0.1.

Each speaker is polled and answered by exactly one process (its fleet lease). A holder killed
with SIGKILL is replaced within the lease time and the next question is answered once; a holder
frozen with SIGSTOP is replaced, and when it wakes up (SIGCONT) it sends the speaker nothing more
and says in its log and counters that it lost the speaker. The fake cloud tells the processes
apart by the login device id each one keeps in its own data directory.

The same fleet (one start-up per engine keeps the suite short) pairs a new board end to end
through HAProxy: the OTA that mints its code lands on one process, the owner confirms it with
`python -m server devices pair CODE` on the shared registry, and the board's activation and next
OTA land on the other process, which hands out a token both processes accept; the code works once.
A paired board's stale connection on one process is closed when it connects to the other
(presence on PostgreSQL LISTEN/NOTIFY, or on Redis pub/sub).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness.devsim import DeviceIdentity, SimDevice
from harness.devsim.activation import activate_like_firmware
from harness.devsim.server_process import ServerProcess
from harness.fakes.openai_server import ChatReply, FakeOpenAIServer
from harness.fakes.xiaomi_cloud import FakeSpeaker, FakeXiaomiCloud
from harness.fleet.cluster import Fleet, fleet
from tests.conftest import redis_url_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
USER = "3333333333"
SCALE = 0.05  # the fake speakers talk 20x faster than real ones, and the bridge is told so
# Speaker requests that only read its state.
STATUS_READS = frozenset({"player_get_play_status"})
TTL = 2.0  # state.lease_ttl_s (the smallest allowed): takeover in about this time
POLL = 0.2
# A waiting process retries every TTL/3; the new holder then lists the speakers and polls.
TAKEOVER_LIMIT = TTL + TTL / 3 + 1.5
NAMES = ("客厅", "卧室", "书房")


@pytest.fixture(scope="module")
async def fakes() -> AsyncIterator[tuple[FakeXiaomiCloud, FakeOpenAIServer]]:
    cloud = FakeXiaomiCloud(speech_scale=SCALE, record_lag_s=0.2, native_answer_s=3.0)
    async with cloud, FakeOpenAIServer(require_key="fleet-key") as llm:
        yield cloud, llm


@pytest.fixture(scope="module", params=["postgresql", "redis"])
async def two(request: pytest.FixtureRequest, pg_cluster: Any,
              fakes: tuple[FakeXiaomiCloud, FakeOpenAIServer]) -> AsyncIterator[tuple[Fleet, dict[str, FakeSpeaker]]]:
    cloud, llm = fakes
    redis_url = await redis_url_for(request)
    # A fresh account per run: its speakers' records and commands start empty; so does the LLM log.
    llm.reset()
    speakers = {name: FakeSpeaker(name, "LX06") for name in NAMES}
    cloud.add_account(USER, "pw", *speakers.values())
    overrides = {
        "server": {"auth": {"pairing": {"enabled": True}}},
        "assistant": {"language": "zh"},
        "state": {"lease_ttl_s": TTL},
        "xiaomi": {
            "enabled": True, "poll_interval_s": POLL, "fast_poll_interval_s": POLL,
            "endpoints": cloud.endpoints(),
            "accounts": [{"user_id": USER, "password": "pw", "speakers": [
                {"match": name, "mode": "always", "model": {"speech_rate": 1 / SCALE}} for name in NAMES]}],
        },
    }
    async with fleet(await pg_cluster.new_database(), llm, redis_url=redis_url, overrides=overrides) as f:
        await wait_until(lambda: all(len(pollers(cloud, sp, since=time.monotonic() - 1)) == 1
                                     for sp in speakers.values()), timeout=30, what="every speaker polled")
        yield f, speakers
    del cloud.accounts[USER]


async def wait_until(cond: Callable[[], bool], timeout: float = 10, what: str = "", f: Fleet | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            logs = "".join(f"\n--- process {n}:\n" + "\n".join(
                line for line in s.log_lines[-300:] if "xiaomi" in line or "lease" in line)
                for n, s in zip(f.names, f.servers, strict=True)) if f is not None else ""
            raise AssertionError(f"timed out waiting for {what}{logs}")
        await asyncio.sleep(0.02)


def client_of(server: ServerProcess) -> str:
    """The login device id this process shows the Xiaomi cloud (kept in its own data dir; a
    process that never held a speaker has not logged in yet: "")."""
    try:
        return (server.data_dir / "xiaomi" / USER / "device_id").read_text().strip()
    except FileNotFoundError:
        return ""


def pollers(cloud: FakeXiaomiCloud, sp: FakeSpeaker, since: float) -> set[str]:
    return {client for at, dev, client in cloud.poll_log if dev == sp.device_id and at >= since}


def holder(f: Fleet, cloud: FakeXiaomiCloud, sp: FakeSpeaker) -> ServerProcess:
    clients = pollers(cloud, sp, since=time.monotonic() - 1)
    assert len(clients) == 1, f"{sp.name} polled by {len(clients)} processes"
    client = clients.pop()
    return next(s for s in f.servers if s.proc.returncode is None and client_of(s) == client)


def asked(llm: FakeOpenAIServer, query: str) -> int:
    """How many times `query` reached the LLM as the user's newest message."""
    n = 0
    for r in llm.chat_requests():
        users = [m for m in r.body["messages"] if m.get("role") == "user"]
        if users and query in str(users[-1].get("content")):
            n += 1
    return n


def speech(sp: FakeSpeaker, since: float = 0.0) -> list[Any]:
    return [c for c in sp.commands if c.name == "text_to_speech" and c.at >= since]


async def takeover(cloud: FakeXiaomiCloud, sp: FakeSpeaker, new_holder: ServerProcess, since: float) -> float:
    """Seconds from `since` until `new_holder` first polled the speaker."""
    def first() -> float | None:
        client = client_of(new_holder)
        return next((at for at, dev, c in cloud.poll_log
                     if dev == sp.device_id and client and c == client and at >= since), None)

    await wait_until(lambda: first() is not None, timeout=TAKEOVER_LIMIT + 5, what=f"takeover of {sp.name}")
    return first() - since  # type: ignore[operator]


async def counter(f: Fleet, server: ServerProcess, name: str) -> int:
    url = f.prometheus_url(f.names[f.servers.index(server)])
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        text = await r.text()
    return next(int(float(line.split()[-1])) for line in text.splitlines() if line.startswith(name + " "))


async def test_each_speaker_is_polled_and_answered_by_exactly_one_process(
        two: tuple[Fleet, dict[str, FakeSpeaker]], fakes: tuple[FakeXiaomiCloud, FakeOpenAIServer]) -> None:
    f, speakers = two
    cloud, llm = fakes
    await asyncio.sleep(1.0)
    t0 = time.monotonic() - 1.0
    holders = {name: holder(f, cloud, sp) for name, sp in speakers.items()}
    for sp in speakers.values():
        assert len(pollers(cloud, sp, since=t0)) == 1
    for name, sp in speakers.items():
        cloud.say(sp, f"{name}现在几点")
    for name, sp in speakers.items():
        await wait_until(lambda sp=sp: len(speech(sp)) >= 1 and not sp.playing(), what=f"answer on {name}", f=f)
    await asyncio.sleep(1.0)  # nothing more comes
    for name, sp in speakers.items():
        assert asked(llm, f"{name}现在几点") == 1, f"{name}: the question reached the LLM once"
        assert {c.client for c in sp.commands} == {client_of(holders[name])}, f"{name}: only its holder acts"
        assert f"{name}现在几点" in "".join(e.text for e in sp.spoken("tts"))


async def test_frozen_holder_is_replaced_and_refused_when_it_wakes(
        two: tuple[Fleet, dict[str, FakeSpeaker]], fakes: tuple[FakeXiaomiCloud, FakeOpenAIServer]) -> None:
    f, speakers = two
    cloud, llm = fakes
    sp = speakers["客厅"]
    stale = holder(f, cloud, sp)
    other = next(s for s in f.servers if s is not stale)
    lapsed_before = await counter(f, stale, "xz_lease_terms_lapsed_total")
    # The holder is mid-reply (sentences still coming from the LLM) when it freezes.
    llm.chat_script.append(ChatReply(chunks=["第一句。", "第二句。", "第三句。", "第四句。"], chunk_delay_s=0.5))
    asked_at = time.monotonic()
    cloud.say(sp, "请讲个长故事")
    await wait_until(lambda: len(speech(sp, asked_at)) >= 1, what="the first sentence", f=f)
    os.kill(stale.pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        took = await takeover(cloud, sp, other, frozen_at)
        print(f"\ntakeover after SIGSTOP: {took:.2f} s (lease TTL {TTL} s)")
        assert took <= TAKEOVER_LIMIT
        cloud.say(sp, "卧室的灯开了吗")
        try:
            await wait_until(lambda: any("卧室的灯开了吗" in c.args.get("text", "") for c in speech(sp)),
                             what="the new holder's answer")
        except AssertionError:
            raise AssertionError("no answer from the new holder:\n" + "\n".join(other.log_lines[-40:])) from None
    finally:
        os.kill(stale.pid, signal.SIGCONT)
    await asyncio.sleep(TTL + 1)  # the stale process runs again: it must not touch the speaker
    # (A status read it had on the wire when it froze may land just after frozen_at: count from
    # the takeover, when the other process owns the speaker.)
    stale_after = [c for c in sp.commands if c.client == client_of(stale) and c.at >= frozen_at + took]
    # A status read that had passed its fence check when the process froze is sent when it wakes
    # (reads check only the lease deadline, and a checked request cannot be recalled; fence.py).
    # It changes nothing on the speaker. A command must never come.
    stale_commands = [c for c in stale_after if c.name not in STATUS_READS]
    assert stale_commands == [], "no command from the stale holder after the takeover"
    assert len(stale_after) - len(stale_commands) <= 1, stale_after
    assert asked(llm, "卧室的灯开了吗") == 1
    assert pollers(cloud, sp, since=time.monotonic() - 1) == {client_of(other)}
    # It noticed: its lease term lapsed (and any action it still tried was refused by the fence).
    assert await counter(f, stale, "xz_lease_terms_lapsed_total") > lapsed_before
    log = stale.log_text()
    assert "deadline passed before renewal" in log or "refused" in log
    print("\n".join(line for line in stale.log_lines if "refused" in line or "deadline passed" in line))
    assert await counter(f, stale, "xz_xiaomi_fenced_refusals_total") == log.count("no longer holds the speaker")


def devices_cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m server devices ...` with a fleet process's own config (the shared registry)."""
    override = server.data_dir.parent / "override.yaml"
    return subprocess.run([sys.executable, "-m", "server", "--config", str(override), "devices", *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


async def only(f: Fleet, name: str) -> None:
    """Route every OTA/activate request through the balancer to process `name`."""
    for other in f.names:
        await f.balancer.command(f"set server http/{other} state {'ready' if other == name else 'maint'}")


async def pair_through_balancer(f: Fleet, dev: SimDevice, mint_on: str, activate_on: str) -> list[str]:
    codes: list[str] = []

    async def owner_reads_screen(code: str, message: str) -> None:
        codes.append(code)
        done = await asyncio.to_thread(devices_cli, f.servers[0], "pair", code, "--owner", "ops")
        assert done.returncode == 0, done.stderr
        await only(f, activate_on)  # the board's next requests reach the other process

    await only(f, mint_on)
    try:
        await activate_like_firmware(dev, f.balancer.http_url, owner_reads_screen, wait_accepted_s=0.2,
                                     wait_error_s=0.5)
    finally:
        for name in f.names:
            await f.balancer.command(f"set server http/{name} state ready")
    return codes


async def test_pairing_end_to_end_through_the_balancer_on_two_processes(
        two: tuple[Fleet, dict[str, FakeSpeaker]]) -> None:
    f, _ = two
    dev = SimDevice()
    codes = await pair_through_balancer(f, dev, mint_on="a", activate_on="b")
    assert len(codes) == 1 and codes[0], "one code, shown once"
    issued = [n for n in f.names if any("pairing code issued" in line and dev.identity.mac in line.lower()
                                        for line in f.server(n).log_lines)]
    assert issued == ["a"], f"minted on process a only, not {issued}"
    assert dev.ws_token, "the OTA answered by the other process carries a token"
    for server in f.servers:  # the token works on both processes, and through the balancer
        assert (await dev.connect(url=server.ws_url))["session_id"]
        await dev.close()
    assert (await dev.connect())["session_id"]
    await dev.close()
    again = await asyncio.to_thread(devices_cli, f.servers[1], "pair", codes[0])
    assert again.returncode != 0, "a code claims once"
    stranger = SimDevice()
    ota = await stranger.ota(f.balancer.http_url)
    assert "activation" in ota and not (ota.get("websocket") or {}).get("token"), "a new board gets a code only"


async def test_a_stale_connection_is_closed_across_processes(two: tuple[Fleet, dict[str, FakeSpeaker]]) -> None:
    """Presence on this run's bus (PostgreSQL LISTEN/NOTIFY, or Redis pub/sub)."""
    f, _ = two
    ident = DeviceIdentity()
    old = SimDevice(identity=ident)
    await pair_through_balancer(f, old, mint_on="b", activate_on="a")
    await old.connect(url=f.servers[0].ws_url)
    new = SimDevice(identity=ident)
    await new.ota(f.balancer.http_url)
    await new.connect(url=f.servers[1].ws_url)
    closed = await old.wait_for(lambda e: e.kind == "close", timeout=10)
    assert "replaced by a newer connection" in (closed.close_reason or "")
    assert not new.closed
    await new.close()


async def test_killed_holder_is_replaced_within_the_lease_time(
        two: tuple[Fleet, dict[str, FakeSpeaker]], fakes: tuple[FakeXiaomiCloud, FakeOpenAIServer]) -> None:
    """Last: it kills one of the two processes."""
    f, speakers = two
    cloud, llm = fakes
    sp = speakers["书房"]
    victim = holder(f, cloud, sp)
    survivor = next(s for s in f.servers if s is not victim)
    victim.proc.kill()
    killed_at = time.monotonic()
    cloud.say(sp, "书房刚才说到哪了")  # during the hand-over: nobody polls the speaker now
    took = await takeover(cloud, sp, survivor, killed_at)
    print(f"\ntakeover after SIGKILL: {took:.2f} s (lease TTL {TTL} s)")
    assert took <= TAKEOVER_LIMIT
    # Said less than TAKEOVER_CATCH_UP_MS before the takeover: the new holder answers it, once.
    await wait_until(lambda: any("书房刚才说到哪了" in c.args.get("text", "") for c in speech(sp, killed_at)),
                     what="the answer to the question said during the hand-over", f=f)
    for other in speakers.values():  # every speaker is polled again, by the survivor only
        await takeover(cloud, other, survivor, killed_at)
    await asyncio.sleep(0.5)
    since = time.monotonic()
    cloud.say(sp, "书房有多冷")
    await wait_until(lambda: any("书房有多冷" in c.args.get("text", "") for c in speech(sp, since)),
                     what="the survivor's answer", f=f)
    await asyncio.sleep(1.0)
    assert asked(llm, "书房有多冷") == 1
    assert asked(llm, "书房刚才说到哪了") == 1
    assert {c.client for c in sp.commands if c.at >= since} == {client_of(survivor)}
