"""Issue 10's attacks, each against the real server (a child process, auth and pairing on, low
limits), with a well-behaved, paired simulated device whose conversation must still succeed.

Attackers use other loopback source addresses (127.0.0.x: Linux routes all of 127/8 to the
loopback interface), so per-address limits hit them and not the good device at 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness.devsim import DeviceConnectError, SimDevice
from harness.devsim.activation import activate_like_firmware
from harness.devsim.identity import DeviceIdentity, firmware_ota_body, firmware_ota_headers, post_raw
from harness.devsim.server_process import ServerProcess, start_server
from harness.fakes.hass_server import FakeHomeAssistant
from harness.fakes.openai_server import ChatReply, FakeOpenAIServer, ToolCallSpec

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
GOOD = DeviceIdentity(mac="02:60:00:00:00:01", client_id="6c1d2e3f-0000-4000-8000-000000000001")
FLOODER = "02:66:66:66:66:66"  # allow-listed (no token needed): an attacker with a way in
# More allow-listed ids for the connection flood: a second connection with the same id replaces
# the first (the server closes a device's stale connection), so a flood needs distinct ids.
FLOOD_IDS = [f"02:66:66:66:67:{i:02x}" for i in range(8)]
ORIGIN_OK = "http://console.example"
METRICS_TOKEN = "metrics-secret-1"
LIMITS = {"max_connections": 40, "max_connections_per_address": 3, "ota_per_minute": 12,
          "activate_per_minute": 60}
# A good device's text turn against the fake LLM takes ~0.3 s of TTS on this machine; under
# attack it must stay well inside this (a normal turn, not a stalled one).
GOOD_TURN_BUDGET_S = 15.0


@dataclass
class Abuse:
    server: ServerProcess
    llm: FakeOpenAIServer
    hass: FakeHomeAssistant
    override: Path
    good_url: str = ""
    good_token: str = ""
    latencies: list[float] = field(default_factory=list)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "server", "--config", str(self.override), "devices", *args],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)

    def good_device(self, **config: Any) -> SimDevice:
        dev = SimDevice(identity=GOOD, **config)
        dev.ws_url, dev.ws_token = self.good_url, self.good_token
        return dev

    async def good_conversation(self, text: str = "What a nice day.") -> float:
        """The well-behaved device talks; the answer is the fake LLM's, in full."""
        async with self.good_device() as dev:
            await dev.connect()
            result = await dev.ask_text(text, timeout=GOOD_TURN_BUDGET_S)
            assert result.completed, result.error
            assert " ".join(result.sentences).startswith(f"You said: {text[:-1]}"), result.sentences
            latency = (result.t_tts_stop or 0) - (result.t_input_end or 0)
            self.latencies.append(latency)
            return latency


def llm_section(fake: FakeOpenAIServer) -> dict[str, Any]:
    return {"type": "openai", "base_url": fake.base_url, "api_key": "k", "model": "fake-model",
            "timeout_s": 5, "first_token_timeout_s": 5, "retries": 0}


def short_reply(body: dict[str, Any]) -> ChatReply:
    """"You said: <text>." - short, so each good turn plays about a second of audio."""
    users = [m.get("content") for m in body.get("messages") or [] if m.get("role") == "user"]
    last = users[-1] if users and isinstance(users[-1], str) else ""
    return ChatReply(text=f"You said: {' '.join(last.split())[:80]}")


@pytest.fixture(scope="module")
async def abuse() -> AsyncIterator[Abuse]:
    hass = FakeHomeAssistant(token="ha-token")
    hass.add("light.kitchen", "off", friendly_name="Kitchen")
    hass.add("lock.front_door", "locked", friendly_name="Front door")
    hass.add("cover.garage", "closed", friendly_name="Garage")
    async with FakeOpenAIServer(default_reply=short_reply) as llm, hass:
        overrides = {
            "llm": llm_section(llm),
            "server": {
                "auth": {"enabled": True, "allowed_devices": [FLOODER, *FLOOD_IDS],
                         "pairing": {"code_ttl_s": 120, "max_pending": 8, "max_pending_per_address": 2,
                                     "revocation_check_s": 0.5}},
                "allowed_origins": [ORIGIN_OK], "metrics_token": METRICS_TOKEN,
                "limits": {**LIMITS, "send_timeout_s": 3, "max_pending_sends": 16},
            },
            "memory": {"mode": "history", "max_exchanges_per_user": 10},
            "session": {"max_text_chars": 500, "text_turns_per_minute": 30},
            "device_tools": {"max_tools": 20, "max_tools_bytes": 30000, "max_iot_things": 6,
                             "max_iot_bytes": 8000},
            "plugins": {"home_assistant": {"enabled": True, "base_url": hass.url, "token": "ha-token",
                                           "entities": [
                                               {"entity_id": "light.kitchen", "name": ["kitchen light"]},
                                               {"entity_id": "lock.front_door", "name": ["front door"]}]}},
            "vision": {"base_url": llm.base_url, "model": "fake-vl", "api_key": "k", "requests_per_minute": 3,
                       "max_image_bytes": 65536},
        }
        async with start_server(overrides) as server:
            state = Abuse(server, llm, hass, server.data_dir.parent / "override.yaml")

            async def confirm(code: str, message: str) -> None:
                assert code in message
                done = await asyncio.to_thread(state.cli, "pair", code, "--owner", "test")
                assert done.returncode == 0, done.stderr

            async with SimDevice(identity=GOOD) as dev:
                log = await activate_like_firmware(dev, server.http_url, confirm)
                assert log.codes and log.activate_statuses[-1] == 200 and dev.ws_token.startswith("v2.")
                state.good_url, state.good_token = dev.ws_url or "", dev.ws_token
            yield state


# ------------------------------------------------------------------------------ raw HTTP helpers


async def until(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def raw_request(port: int, head: bytes, body: bytes = b"", local: str = "127.0.0.1",
                      timeout: float = 10) -> tuple[int, bytes]:
    """Send bytes as they are (non-ASCII headers, odd framing) and read the status and the rest."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0))
    try:
        writer.write(head + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(65536), timeout)
    finally:
        writer.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, data


def upgrade_head(path: str, headers: dict[str, str] | list[tuple[str, str]]) -> bytes:
    items = headers.items() if isinstance(headers, dict) else headers
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"]
    lines += [f"{k}: {v}" for k, v in items]
    return "\r\n".join(lines).encode("utf-8") + b"\r\n\r\n"


async def ota_post(server: ServerProcess, device: str, client: str = "", local: str = "127.0.0.1",
                   headers: dict[str, str] | None = None, body: bytes | None = None) -> tuple[int, dict[str, Any], Any]:
    ident = DeviceIdentity(mac=device, client_id=client or GOOD.client_id)
    h = firmware_ota_headers(ident)
    h.update(headers or {})
    connector = aiohttp.TCPConnector(local_addr=(local, 0))
    async with aiohttp.ClientSession(connector=connector) as http, http.post(
            server.http_url + "/xiaozhi/ota/", data=body if body is not None else firmware_ota_body(ident).encode(),
            headers=h) as resp:
        text = await resp.text()
        try:
            data = json.loads(text)
        except ValueError:
            data = {"text": text}
        return resp.status, data, resp.headers


# ------------------------------------------------------------------------------ pairing and tokens


async def test_ota_never_hands_a_token_to_whoever_names_a_device(abuse: Abuse) -> None:
    """The original hole: POST /xiaozhi/ota/ with the victim's Device-Id returned its token."""
    status, data, _ = await ota_post(abuse.server, GOOD.mac, client="00000000-1111-4222-8333-444444444444",
                                     local="127.0.0.21")
    assert status == 200 and data["websocket"]["token"] == "" and "activation" in data
    status, data, _ = await ota_post(abuse.server, "02:60:00:00:00:99", local="127.0.0.21")
    assert status == 200 and data["websocket"]["token"] == "" and len(data["activation"]["code"]) == 6
    # Without a token the attacker cannot connect as anyone.
    async with SimDevice(identity=DeviceIdentity(mac=GOOD.mac)) as dev:
        with pytest.raises(DeviceConnectError) as err:
            await dev.connect(url=abuse.server.ws_url, token="")
        assert err.value.status == 401
    await abuse.good_conversation()


async def test_activation_answers_202_until_paired(abuse: Abuse) -> None:
    ident = DeviceIdentity(mac="02:60:00:00:00:02")
    status, data, _ = await ota_post(abuse.server, ident.mac, client=ident.client_id, local="127.0.0.22")
    assert status == 200 and "activation" in data
    h = firmware_ota_headers(ident)
    url = abuse.server.http_url + "/xiaozhi/ota/activate"
    for body in ("{}", json.dumps({"algorithm": "hmac-sha256", "challenge": "wrong", "hmac": "00" * 32})):
        assert (await post_raw(url, h, body, local_address="127.0.0.22"))[0] == 202
    # The good device is paired: 200 (and the firmware then re-runs OTA and gets its token).
    assert (await post_raw(url, firmware_ota_headers(GOOD), "{}"))[0] == 200


async def test_activation_hmac_with_a_registered_key(abuse: Abuse) -> None:
    """Activation-Version 2: with the board's eFuse key registered (`devices key ID HEX`), a board
    that signs the challenge with another key is refused (403 on activate, and the owner's
    `pair CODE` is refused), and the board with the right key pairs as the firmware does."""
    key = "3c" * 32
    mac = "02:60:00:00:00:0d"
    assert abuse.cli("key", mac, key).returncode == 0
    owner_results: list[subprocess.CompletedProcess[str]] = []
    owner_tasks: list[asyncio.Task[None]] = []

    async def owner_types_code(code: str, message: str) -> None:
        async def later() -> None:  # the owner reads the screen while the board already polls
            await asyncio.sleep(1.0)
            owner_results.append(await asyncio.to_thread(abuse.cli, "pair", code))
        owner_tasks.append(asyncio.create_task(later()))

    impostor = DeviceIdentity(mac=mac, client_id="6c1d2e3f-0000-4000-8000-0000000000d1")
    async with SimDevice(identity=impostor, serial_number="SN-IMPOSTOR", efuse_hmac_key="c3" * 32,
                         local_address="127.0.0.71") as dev:
        with pytest.raises(TimeoutError) as err:
            await activate_like_firmware(dev, abuse.server.http_url, owner_types_code, max_ota_rounds=1,
                                         wait_error_s=0.3)
        await asyncio.gather(*owner_tasks)
        assert "activate_statuses=[403" in str(err.value)
        assert owner_results[-1].returncode == 1 and "did not prove" in owner_results[-1].stderr
        assert dev.ws_token == ""
    owner_tasks.clear()
    board = DeviceIdentity(mac=mac, client_id="6c1d2e3f-0000-4000-8000-0000000000d2")
    async with SimDevice(identity=board, serial_number="SN-BOARD", efuse_hmac_key=key,
                         local_address="127.0.0.72") as dev:
        try:  # firmware pacing (3 s after a 202): the owner's CLI has time to start
            log = await activate_like_firmware(dev, abuse.server.http_url, owner_types_code, max_ota_rounds=2)
        finally:
            await asyncio.gather(*owner_tasks)
        assert owner_results[-1].returncode == 0, owner_results[-1].stderr
        assert log.activate_statuses[0] == 202 and log.activate_statuses[-1] == 200
        assert dev.ws_token.startswith("v2.")
    assert abuse.cli("revoke", mac).returncode == 0
    await abuse.good_conversation()


async def test_revoked_device_is_cut_off_at_once(abuse: Abuse) -> None:
    """Pair a second device the firmware's way, connect it, revoke it from the CLI while it is
    connected: the open session ends, its token is refused, its OTA shows a code again."""
    ident = DeviceIdentity(mac="02:60:00:00:00:03")
    codes: list[str] = []

    async def owner_types(code: str, message: str) -> None:
        codes.append(code)
        assert abuse.cli("pair", code).returncode == 0

    async with SimDevice(identity=ident, local_address="127.0.0.23") as dev:
        await activate_like_firmware(dev, abuse.server.http_url, owner_types)
        token = dev.ws_token
        await dev.connect()
        assert (await dev.ask_text("Hello.")).completed
        listed = abuse.cli("list").stdout
        assert ident.mac in listed and "paired" in listed
        assert abuse.cli("revoke", ident.mac).returncode == 0
        await until(lambda: dev.closed, 5)
    async with SimDevice(identity=ident, local_address="127.0.0.23") as again:
        with pytest.raises(DeviceConnectError) as err:
            await again.connect(url=abuse.server.ws_url, token=token)
        assert err.value.status == 401
        data = await again.ota(abuse.server.http_url)
        assert data["websocket"]["token"] == "" and data["activation"]["code"] not in codes
    await abuse.good_conversation()


async def test_malformed_tokens_are_401_not_500(abuse: Abuse) -> None:
    port = abuse.server.ws_port
    valid = abuse.good_token
    bad_tokens = ["v1.².x", "v2.0.²³." + "A" * 43, valid[:-1] + "é", "v2.٣.1." + valid.rsplit(".", 1)[1],
                  "Bearer " + "x" * 6000]
    for token in bad_tokens:
        status, data = await raw_request(port, upgrade_head("/xiaozhi/v1/", {
            "Authorization": f"Bearer {token}", "Device-Id": GOOD.mac, "Client-Id": GOOD.client_id}))
        assert status in (401, 431, 400), (token[:20], data[:200])
        assert b"Traceback" not in data
    assert "Traceback" not in abuse.server.log_text()
    await abuse.good_conversation()


async def test_pending_code_flood_never_evicts_a_real_device(abuse: Abuse) -> None:
    victim = DeviceIdentity(mac="02:60:00:00:00:04")
    _, first, _ = await ota_post(abuse.server, victim.mac, client=victim.client_id, local="127.0.0.24")
    code = first["activation"]["code"]
    results = []
    for i in range(30):  # new ids from many addresses until the table is full
        status, data, _ = await ota_post(abuse.server, f"02:61:00:00:{i // 256:02x}:{i % 256:02x}",
                                         local=f"127.0.1.{i + 1}")
        results.append(status)
    assert 503 in results  # full: new devices are told to retry later
    _, again, _ = await ota_post(abuse.server, victim.mac, client=victim.client_id, local="127.0.0.24")
    assert again["activation"]["code"] == code  # still pending, same code
    assert abuse.cli("pair", code).returncode == 0
    assert abuse.cli("revoke", victim.mac).returncode == 0
    await abuse.good_conversation()


# ------------------------------------------------------------------------------ limits on the ways in


async def test_ota_and_activate_rate_limits(abuse: Abuse) -> None:
    statuses = [(await ota_post(abuse.server, "02:62:00:00:00:01", local="127.0.0.31"))[0] for _ in range(20)]
    assert statuses.count(429) >= 20 - LIMITS["ota_per_minute"] and statuses[0] == 200
    url = abuse.server.http_url + "/xiaozhi/ota/activate"
    h = firmware_ota_headers(DeviceIdentity(mac="02:62:00:00:00:01"))
    polls = [(await post_raw(url, h, "{}", local_address="127.0.0.32"))[0] for _ in range(70)]
    assert polls.count(429) >= 70 - LIMITS["activate_per_minute"]
    # Other addresses are not affected (503: the pairing table may be full from another test).
    assert (await ota_post(abuse.server, "02:62:00:00:00:02", local="127.0.0.33"))[0] in (200, 503)
    await abuse.good_conversation()


async def test_cors_only_for_configured_origins(abuse: Abuse) -> None:
    _, _, headers = await ota_post(abuse.server, "02:63:00:00:00:01", local="127.0.0.41",
                                   headers={"Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in headers
    _, _, headers = await ota_post(abuse.server, "02:63:00:00:00:01", local="127.0.0.41",
                                   headers={"Origin": ORIGIN_OK})
    assert headers.get("Access-Control-Allow-Origin") == ORIGIN_OK
    async with aiohttp.ClientSession() as http, http.options(
            abuse.server.http_url + "/xiaozhi/ota/", headers={"Origin": "http://evil.example",
                                                             "Access-Control-Request-Method": "POST"}) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_websocket_origin_check(abuse: Abuse) -> None:
    async with abuse.good_device() as dev:
        with pytest.raises(DeviceConnectError) as err:
            await dev.connect(extra_headers={"Origin": "http://evil.example"})
        assert err.value.status == 403
    async with abuse.good_device() as dev:
        await dev.connect(extra_headers={"Origin": ORIGIN_OK})
        assert (await dev.ask_text("Hello from the console.")).completed


async def test_connections_per_address_and_total(abuse: Abuse) -> None:
    """An attacker with a way in (an allow-listed id) opens connections until refused; the good
    device at another address still talks."""
    flood: list[SimDevice] = []
    refused = 0
    try:
        for i in range(LIMITS["max_connections_per_address"] + 3):
            dev = SimDevice(identity=DeviceIdentity(mac=FLOOD_IDS[i]), local_address="127.0.0.51")
            try:
                await dev.connect(url=abuse.server.ws_url, token="")
                flood.append(dev)
            except DeviceConnectError as exc:
                assert exc.status == 503
                refused += 1
        assert len(flood) == LIMITS["max_connections_per_address"] and refused == 3
        await abuse.good_conversation()
    finally:
        await asyncio.gather(*(d.close() for d in flood))


async def _open_raw(port: int, local: str, send: bytes = b"") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0))
    if send:
        writer.write(send)
        await writer.drain()
    return reader, writer


async def _answered_at_once(reader: asyncio.StreamReader, within: float = 1.5) -> bytes | None:
    """What the server sends without being asked (a refused socket gets its 503 at once); None
    when it stays silent (a socket that holds a slot, waiting for its handshake)."""
    try:
        return await asyncio.wait_for(reader.read(200), within)
    except TimeoutError:
        return None


async def test_half_open_handshakes_count_against_the_limits(abuse: Abuse) -> None:
    """Sockets that connect and never finish the upgrade (nothing sent, or half a request) hold a
    slot from the TCP accept: beyond the per-address cap, and beyond the total, the next socket is
    answered 503 at once. The good device, at its own address, keeps talking; and the slots come
    back when the sockets close."""
    port = abuse.server.ws_port
    per = LIMITS["max_connections_per_address"]
    half = upgrade_head("/xiaozhi/v1/", {})[:40]
    held: list[asyncio.StreamWriter] = []
    try:
        for i in range(per):
            _, writer = await _open_raw(port, "127.0.0.61", half if i % 2 else b"")
            held.append(writer)
        reader, writer = await _open_raw(port, "127.0.0.61")  # sends nothing at all
        held.append(writer)
        t0 = time.monotonic()
        answer = await _answered_at_once(reader)
        assert answer is not None and answer.startswith(b"HTTP/1.1 503"), answer
        assert time.monotonic() - t0 < 1.0  # at once, not at the 10 s open timeout
        status, _ = await raw_request(port, upgrade_head("/xiaozhi/v1/", {"Device-Id": FLOOD_IDS[0]}),
                                      local="127.0.0.61")
        assert status == 503
        await abuse.good_conversation()
        # The total: half-open sockets from many addresses, until the server is full.
        readers = []
        for i in range(LIMITS["max_connections"] + 10):
            reader, writer = await _open_raw(port, f"127.0.3.{i // per + 1}", half if i % 3 == 0 else b"")
            held.append(writer)
            readers.append(reader)
        answers = await asyncio.gather(*(_answered_at_once(r) for r in readers))
        refused = [a for a in answers if a is not None]
        assert len(refused) >= 10 and all(a.startswith(b"HTTP/1.1 503") for a in refused)
        assert len(answers) - len(refused) <= LIMITS["max_connections"] - per
    finally:
        for writer in held:
            writer.close()
    # Closed sockets give their slots back at once.
    await asyncio.sleep(0.3)
    async with SimDevice(identity=DeviceIdentity(mac=FLOOD_IDS[1]), local_address="127.0.0.61") as dev:
        await dev.connect(url=abuse.server.ws_url, token="")
    await abuse.good_conversation()


async def test_metrics_need_the_token(abuse: Abuse) -> None:
    url = abuse.server.http_url + "/metrics"
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:  # loopback, but a token is configured
            assert resp.status == 401 and GOOD.mac not in await resp.text()
        async with http.get(url, headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401
        async with http.get(url, headers={"Authorization": "Bearer é"}) as resp:
            assert resp.status in (400, 401)
        async with http.get(url, headers={"Authorization": f"Bearer {METRICS_TOKEN}"}) as resp:
            assert resp.status == 200 and "counters" in await resp.json()


async def test_deep_json_is_a_clean_protocol_error(abuse: Abuse) -> None:
    deep = "[" * 30_000 + "]" * 30_000  # 30 times Python's recursion limit, within the 64 KB body cap
    status, data, _ = await ota_post(abuse.server, "02:64:00:00:00:01", local="127.0.0.61", body=deep.encode())
    assert status in (200, 503)  # the body is ignored; 503 only if the pairing table is full
    async with abuse.good_device() as dev:
        await dev.connect()
        await dev.send_text_raw('{"type":"mcp","payload":' + "[" * 50_000 + "]" * 50_000 + "}")
        await dev.send_text_raw("[" * 100_000)
        result = await dev.ask_text("Still there?")
        assert result.completed
    assert "RecursionError" not in abuse.server.log_text()


# ------------------------------------------------------------------------------ owner-only control


async def test_home_assistant_refuses_unlisted_and_sensitive(abuse: Abuse) -> None:
    abuse.llm.chat_script.extend([
        ChatReply(tool_calls=[ToolCallSpec("hass_set_state", {"entity": "front door", "state": "unlock"})]),
        ChatReply(text="I cannot do that."),
        ChatReply(tool_calls=[ToolCallSpec("hass_set_state", {"entity": "cover.garage", "state": "open"})]),
        ChatReply(text="I cannot do that either."),
    ])
    n = len(abuse.llm.chat_requests())
    async with abuse.good_device() as dev:
        await dev.connect()
        assert (await dev.ask_text("Unlock the front door.")).completed
        assert (await dev.ask_text("Open the garage.")).completed
    assert abuse.hass.states["lock.front_door"]["state"] == "locked"
    assert abuse.hass.states["cover.garage"]["state"] == "closed"
    assert not [c for c in abuse.hass.calls if c.domain in ("lock", "cover")]
    results = [m for r in abuse.llm.chat_requests()[n:] for m in r.body["messages"] if m.get("role") == "tool"]
    assert len(results) == 2 and results[0]["content"] == results[1]["content"]  # same refusal, no ids
    assert "garage" not in results[1]["content"]


# ------------------------------------------------------------------------------ vision


async def test_vision_rate_and_size_limits(abuse: Abuse) -> None:
    async with abuse.good_device() as dev:
        await dev.connect()
        await until(lambda: dev.mcp.vision_url is not None, 10)
        url, token = dev.mcp.vision_url, dev.mcp.vision_token
    headers = {"Device-Id": GOOD.mac, "Client-Id": GOOD.client_id, "Authorization": f"Bearer {token}"}
    jpeg = b"\xff\xd8\xff\xe0" + b"\x00" * 2000 + b"\xff\xd9"

    def form(image: bytes) -> aiohttp.FormData:
        f = aiohttp.FormData()
        f.add_field("question", "what is this?")
        f.add_field("file", image, filename="camera.jpg", content_type="image/jpeg")
        return f

    async with aiohttp.ClientSession() as http:
        # Declared larger than allowed: refused before the body is read.
        async with http.post(url, data=b"x" * 200_000, headers={
                **headers, "Content-Type": "multipart/form-data; boundary=b"}) as resp:
            assert resp.status == 413
        statuses = []
        for _ in range(5):
            async with http.post(url, data=form(jpeg), headers=headers) as resp:
                statuses.append(resp.status)
        assert statuses[:2] == [200, 200] and 429 in statuses  # 3 per minute (413 above counted)
        async with http.post(url, data=form(jpeg), headers={**headers, "Authorization": "Bearer v2.1.1.x"}) as resp:
            assert resp.status == 401


# ------------------------------------------------------------------------------ session-side limits


async def counters(abuse: Abuse) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(
            abuse.server.http_url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}) as resp:
        return (await resp.json())["counters"]


def user_texts(requests: list[Any]) -> list[str]:
    out = []
    for r in requests:
        for m in r.body.get("messages") or []:
            if m.get("role") == "user" and isinstance(m.get("content"), str):
                out.append(m["content"])
    return out


async def test_typed_text_length_and_rate(abuse: Abuse) -> None:
    n = len(abuse.llm.chat_requests())
    before = (await counters(abuse)).get("typed_text_refused", 0)
    async with SimDevice(identity=DeviceIdentity(mac=FLOODER), local_address="127.0.0.71") as dev:
        await dev.connect(url=abuse.server.ws_url, token="")
        await dev.listen_start("manual")
        await dev.listen_detect("LONGTEXT " + "x" * 5000)
        for i in range(60):
            await dev.listen_detect(f"RATETEXT {i}")
        await asyncio.sleep(2.0)
        sent = user_texts(abuse.llm.chat_requests()[n:])
        assert not any("LONGTEXT" in t for t in sent)
        assert sum("RATETEXT" in t for t in sent) <= 30
        assert (await counters(abuse)).get("typed_text_refused", 0) - before >= 31
    await abuse.good_conversation()


async def test_iot_descriptor_flood_is_bounded(abuse: Abuse) -> None:
    n = len(abuse.llm.chat_requests())
    async with SimDevice(identity=DeviceIdentity(mac=FLOODER), local_address="127.0.0.72") as dev:
        await dev.connect(url=abuse.server.ws_url, token="")
        for i in range(300):
            await dev.send_text_raw(json.dumps({"type": "iot", "update": True, "descriptors": [{
                "name": f"Thing{i}", "description": "a thing " * 20, "properties": {},
                "methods": {"Blink": {"description": "blink it", "parameters": {}}}}]}))
        result = await dev.ask_text("What can you do?")
        assert result.completed
    request = abuse.llm.chat_requests()[n]
    iot_tools = [t for t in request.body.get("tools") or [] if t["function"]["name"].startswith("iot_")]
    assert 0 < len(iot_tools) <= 6 + 1  # six things' methods, plus the state reader
    await abuse.good_conversation()


async def test_device_mcp_tools_are_capped(abuse: Abuse) -> None:
    from harness.devsim import filler_tools

    n = len(abuse.llm.chat_requests())
    async with SimDevice(identity=DeviceIdentity(mac=FLOODER), local_address="127.0.0.73",
                         extra_tools=filler_tools(120, 400)) as dev:
        await dev.connect(url=abuse.server.ws_url, token="")
        await asyncio.sleep(1.5)  # the server lists the device's tools (paginated)
        assert (await dev.ask_text("Hello tools.")).completed
    request = abuse.llm.chat_requests()[n]
    device_tools = [t for t in request.body.get("tools") or [] if t["function"]["name"].startswith("self_")]
    assert 0 < len(device_tools) <= 20
    assert len(json.dumps(device_tools)) < 60000
    await abuse.good_conversation()


async def test_v2_json_flood_from_a_client_that_stops_reading(abuse: Abuse) -> None:
    """Protocol v2: JSON inside binary frames used to start a task each, outside the receive
    loop's back-pressure, so a client flooding pings without reading the pongs piled up tasks
    and pending sends. Now they go through the receive loop like text: the server reads only as
    fast as it can answer (and drops a client whose socket stays full past
    limits.send_timeout_s), memory stays flat, other devices are served."""
    from harness.rawws import RawWebSocket, frame
    from server.protocol import framing

    rss_before = abuse.server.rss_bytes()
    before = (await counters(abuse)).get("slow_reader_closed", 0)
    ws, head = await RawWebSocket.connect(abuse.server.ws_port, "/xiaozhi/v1/", {
        "Device-Id": FLOODER, "Client-Id": GOOD.client_id, "Protocol-Version": "2"}, local="127.0.0.74")
    assert head.startswith(b"HTTP/1.1 101")
    try:
        await ws.send_text(json.dumps({"type": "hello", "version": 2, "transport": "websocket"}))
        assert b"hello" in await ws.read_some()
        ping = framing.pack(2, b'{"type":"ping"}', payload_type=framing.PAYLOAD_JSON)
        batch = b"".join(frame(ping, 0x2) for _ in range(500))

        async def flood() -> int:
            sent = 0
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    await asyncio.wait_for(ws.loop.sock_sendall(ws.sock, batch), 2.0)
                except (TimeoutError, OSError):
                    break  # the server stopped reading us (its socket to us is full) or cut us off
                sent += 500
            return sent

        flooding = asyncio.create_task(flood())
        await abuse.good_conversation("Are you still with me?")  # served during the flood
        sent = await flooding
        assert sent >= 1000
        grown = (abuse.server.rss_bytes() - rss_before) / 2**20
        assert grown < 40, f"RSS grew {grown:.0f} MB during a flood of {sent} pings"
        dropped = (await counters(abuse)).get("slow_reader_closed", 0) > before
        print(f"v2 flood: {sent} pings sent, RSS +{grown:.1f} MB, dropped by the server: {dropped}")
    finally:
        ws.close()
    await abuse.good_conversation()


# ------------------------------------------------------------------------------ memory


async def test_memory_rows_per_identity_are_pruned(abuse: Abuse) -> None:
    async with abuse.good_device() as dev:
        await dev.connect()
        for i in range(14):
            assert (await dev.ask_text(f"Note number {i}.")).completed
    await asyncio.sleep(0.5)  # exchanges are written in the background
    db = sqlite3.connect(abuse.server.data_dir / "memory.sqlite3")
    try:
        rows = db.execute("SELECT user_text FROM exchanges WHERE user_id = ? ORDER BY id", (GOOD.mac,)).fetchall()
    finally:
        db.close()
    assert len(rows) == 10 and rows[-1][0] == "Note number 13."


async def test_good_device_latency_stayed_normal(abuse: Abuse) -> None:
    """Runs last: every good conversation above completed; none took abnormally long."""
    t0 = time.monotonic()
    await abuse.good_conversation("Last one.")
    assert time.monotonic() - t0 < GOOD_TURN_BUDGET_S
    assert abuse.latencies and max(abuse.latencies) < GOOD_TURN_BUDGET_S
