"""Our Xiaomi cloud client (server/xiaomi/) against the fake cloud (harness/fakes/xiaomi_cloud.py),
a real aiohttp server on 127.0.0.1 speaking the wire shapes of shared/spec/xiaomi-cloud.md:
login (password, passToken, verification, captcha), the login device id kept across restarts and
errors, token reuse, 401 -> one re-login then backoff, MiNA ubus, conversation records, signed MIoT
requests, and the command line."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from harness.fakes.net_guard import block_internet
from harness.fakes.xiaomi_cloud import FakeSpeaker, FakeXiaomiCloud
from server.xiaomi import wire
from server.xiaomi.account import MINA_SID, MIOT_SID, Endpoints, XiaomiAccount
from server.xiaomi.conversation import ConversationApi, parse_records
from server.xiaomi.devices import find_speaker, list_speakers
from server.xiaomi.errors import (
    AuthExpired,
    BadResponse,
    CaptchaRequired,
    NoCredentials,
    PassTokenRejected,
    SpeakerOffline,
    VerificationRequired,
    WrongPassword,
)
from server.xiaomi.http import exchange, new_http_session
from server.xiaomi.mina import MinaService
from server.xiaomi.miot import MiotService
from server.xiaomi.models import ModelOverrides, model_table
from server.xiaomi.store import AccountStore

ROOT = Path(__file__).resolve().parents[1]
USER = "1234567890"
PASSWORD = "p@ss word!"


@pytest.fixture(autouse=True)
def _no_internet(monkeypatch: pytest.MonkeyPatch) -> None:
    block_internet(monkeypatch)


@pytest.fixture
async def cloud() -> AsyncIterator[FakeXiaomiCloud]:
    fake = FakeXiaomiCloud(speech_scale=0.05, record_lag_s=0.0)
    fake.add_account(USER, PASSWORD, FakeSpeaker("客厅", "LX06", alias="客厅音箱"),
                     FakeSpeaker("卧室", "X08E"))
    async with fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[object]:
    async with new_http_session() as session:
        yield session


def make_account(cloud: FakeXiaomiCloud, http: object, data_dir: Path, **kw: str) -> XiaomiAccount:
    return XiaomiAccount(http, AccountStore(data_dir, USER), Endpoints(**cloud.endpoints()), **kw)  # type: ignore[arg-type]


# -- wire formulas, checked against values computed independently ---------------------------------


def test_account_json_keeps_big_integer_nonce_exact() -> None:
    nonce = 2**62 + 12345  # above 2**53: a float would round it
    data = wire.parse_account_json(f'&&&START&&&{{"code":0,"nonce":{nonce},"userId":{USER}}}'.encode(), "t")
    assert data["nonce"] == nonce and str(data["nonce"]) == str(nonce)
    assert wire.client_sign(data["nonce"], "c2VjcmV0") == base64.b64encode(
        hashlib.sha1(f"nonce={nonce}&c2VjcmV0".encode()).digest()).decode()
    with pytest.raises(BadResponse):
        wire.parse_account_json(b"<html>login</html>", "t")


def test_password_hash_is_md5_upper_hex() -> None:
    assert wire.password_hash("abc") == "900150983CD24FB0D6963F7D28E17F72"


def test_miot_signature_formula() -> None:
    ssecurity = base64.b64encode(b"0123456789abcdef").decode()
    nonce = base64.b64encode(b"12345678" + (1000).to_bytes(4, "big")).decode()
    snonce = wire.signed_nonce(ssecurity, nonce)
    assert snonce == base64.b64encode(hashlib.sha256(b"0123456789abcdef" + b"12345678" +
                                                     (1000).to_bytes(4, "big")).digest()).decode()
    import hmac

    msg = f"/miotspec/action&{snonce}&{nonce}&data={{}}".encode()
    expected = base64.b64encode(hmac.new(base64.b64decode(snonce), msg, hashlib.sha256).digest()).decode()
    assert wire.miot_signature("/miotspec/action", snonce, nonce, "{}") == expected
    form = wire.miot_form("/home/device_list", ssecurity, {"a": 1}, now=60 * 1000)
    raw = base64.b64decode(form["_nonce"])
    assert len(raw) == 12 and int.from_bytes(raw[8:], "big") == 1000  # 8 random bytes + minute counter


# -- login --------------------------------------------------------------------------------------


async def test_password_login_stores_tokens_0600_and_restart_reuses_them(cloud: FakeXiaomiCloud, http: object,
                                                                          tmp_path: Path) -> None:
    account = make_account(cloud, http, tmp_path, password=PASSWORD)
    await account.login()
    assert [(u, s, how) for u, s, how in cloud.logins] == [(USER, MINA_SID, "password"), (USER, MIOT_SID, "pass_token")]
    tokens = tmp_path / "xiaomi" / USER / "tokens.json"
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
    saved = json.loads(tokens.read_text())
    assert saved["pass_token"].startswith("V1:") and set(saved["services"]) == {MINA_SID, MIOT_SID}
    assert PASSWORD not in tokens.read_text()

    # A restart: a new account object, no password at all, works on the stored tokens alone.
    restarted = make_account(cloud, http, tmp_path)
    names = [d.name for d in await MinaService(restarted).device_list()]
    assert names == ["客厅", "卧室"]
    assert len(cloud.logins) == 2 and restarted.logins == 0


async def test_lazy_login_on_first_call(cloud: FakeXiaomiCloud, http: object, tmp_path: Path) -> None:
    account = make_account(cloud, http, tmp_path, password=PASSWORD)
    devices = await MinaService(account).device_list()
    assert devices[0].hardware == "LX06" and devices[0].alias == "客厅音箱"
    assert cloud.logins == [(USER, MINA_SID, "password")]  # MIoT logs in only when first needed


async def test_pass_token_login_without_password(cloud: FakeXiaomiCloud, http: object, tmp_path: Path) -> None:
    # A passToken is bound to the login device id it was issued for (as Xiaomi does): get one
    # on this data dir, then log in on a fresh token file with only that passToken.
    first = make_account(cloud, http, tmp_path, password=PASSWORD)
    await first.login((MINA_SID,))
    pass_token = json.loads((tmp_path / "xiaomi" / USER / "tokens.json").read_text())["pass_token"]
    (tmp_path / "xiaomi" / USER / "tokens.json").unlink()
    cloud.logins.clear()
    account = make_account(cloud, http, tmp_path, pass_token=pass_token)
    await account.login()
    assert cloud.logins == [(USER, MINA_SID, "pass_token"), (USER, MIOT_SID, "pass_token")]
    # The passToken from another device id is refused, with advice rather than a loop.
    other = tmp_path / "other"
    with pytest.raises(PassTokenRejected, match="passToken"):
        await make_account(cloud, http, other, pass_token=pass_token).login()


async def test_wrong_password(cloud: FakeXiaomiCloud, http: object, tmp_path: Path) -> None:
    with pytest.raises(WrongPassword, match="70016"):
        await make_account(cloud, http, tmp_path, password="nope").login()
    assert cloud.logins == []


async def test_no_credentials_at_all(cloud: FakeXiaomiCloud, http: object, tmp_path: Path) -> None:
    with pytest.raises(NoCredentials, match="server.xiaomi login"):
        await MinaService(make_account(cloud, http, tmp_path)).device_list()


async def test_verification_answer_names_the_url_and_the_pass_token_way(cloud: FakeXiaomiCloud, http: object,
                                                                         tmp_path: Path) -> None:
    cloud.accounts[USER].login_mode = "verify"
    with pytest.raises(VerificationRequired) as err:
        await make_account(cloud, http, tmp_path, password=PASSWORD).login()
    assert err.value.notification_url.startswith(cloud.url + "/account/identity/authStart?sid=micoapi")
    assert "passToken" in str(err.value) and err.value.notification_url in str(err.value)


async def test_captcha_answer(cloud: FakeXiaomiCloud, http: object, tmp_path: Path) -> None:
    cloud.accounts[USER].login_mode = "captcha"
    with pytest.raises(CaptchaRequired, match="captcha"):
        await make_account(cloud, http, tmp_path, password=PASSWORD).login()


async def test_login_device_id_survives_errors_and_restarts(cloud: FakeXiaomiCloud, http: object,
                                                            tmp_path: Path) -> None:
    """Xiaomi asks to verify a login device id it has not seen. Other clients regenerate the id
    after the failure and so never get past it; ours keeps it, so approving it once is enough."""
    cloud.accounts[USER].login_mode = "new_device"
    account = make_account(cloud, http, tmp_path, password=PASSWORD)
    device_id = account.device_id
    assert len(device_id) == 16 and device_id.isalnum() and device_id.isupper()
    for _ in range(2):  # errors (verification, wrong password) leave the id and its file alone
        with pytest.raises(VerificationRequired):
            await make_account(cloud, http, tmp_path, password=PASSWORD).login()
    with pytest.raises(WrongPassword):
        await make_account(cloud, http, tmp_path, password="bad").login()
    assert (tmp_path / "xiaomi" / USER / "device_id").read_text().strip() == device_id
    cloud.approve_device(USER, device_id)  # the user verified in a browser
    restarted = make_account(cloud, http, tmp_path, password=PASSWORD)
    assert restarted.device_id == device_id
    await restarted.login()
    assert len(cloud.logins) == 2


async def test_401_relogs_in_once_then_backs_off(cloud: FakeXiaomiCloud, http: object, tmp_path: Path) -> None:
    clock = [1000.0]
    account = XiaomiAccount(http, AccountStore(tmp_path, USER), Endpoints(**cloud.endpoints()),  # type: ignore[arg-type]
                            password=PASSWORD, clock=lambda: clock[0])
    mina = MinaService(account)
    await mina.device_list()
    cloud.expire_tokens(USER)
    assert len(await mina.device_list()) == 2  # 401 -> re-login with the stored passToken -> retried
    assert cloud.logins[-1] == (USER, MINA_SID, "pass_token")

    # Now the passToken is revoked and the password changed: the re-login fails once...
    cloud.expire_tokens(USER)
    cloud.revoke_pass_tokens(USER)
    cloud.accounts[USER].password = "changed"
    before = len(cloud.requests)
    with pytest.raises(WrongPassword):
        await mina.device_list()
    assert len(cloud.requests) - before == 3  # the refused call, serviceLogin, serviceLoginAuth2
    # ...and further calls do not hammer the login until the backoff has passed.
    with pytest.raises(WrongPassword):
        await mina.device_list()
    assert len(cloud.requests) - before == 3
    assert account.backoff.blocked_until == pytest.approx(1030.0)
    clock[0] += 31
    cloud.accounts[USER].password = PASSWORD
    assert len(await mina.device_list()) == 2
    assert account.backoff.failures == 0


async def test_unreadable_token_file_is_kept_and_login_happens_again(cloud: FakeXiaomiCloud, http: object,
                                                                      tmp_path: Path) -> None:
    folder = tmp_path / "xiaomi" / USER
    folder.mkdir(parents=True)
    (folder / "tokens.json").write_text("{not json")
    account = make_account(cloud, http, tmp_path, password=PASSWORD)
    await MinaService(account).device_list()
    assert list(folder.glob("tokens.unreadable-*.json"))
    assert json.loads((folder / "tokens.json").read_text())["user_id"] == USER


async def test_network_error_is_clear(http: object, tmp_path: Path) -> None:
    from server.xiaomi.errors import CloudUnavailable

    account = XiaomiAccount(http, AccountStore(tmp_path, USER), Endpoints(account="http://127.0.0.1:9"),  # type: ignore[arg-type]
                            password=PASSWORD)
    with pytest.raises(CloudUnavailable, match="cannot reach"):
        await account.login()
    assert (tmp_path / "xiaomi" / USER / "device_id").exists()


# -- MiNA, conversation, MIoT -------------------------------------------------------------------


async def test_ubus_commands_reach_the_speaker(cloud: FakeXiaomiCloud, http: object, tmp_path: Path) -> None:
    account = make_account(cloud, http, tmp_path, password=PASSWORD)
    mina = MinaService(account)
    living = cloud.accounts[USER].speaker("客厅")
    await mina.text_to_speech(living.device_id, "你好呀")
    assert (await mina.play_status(living.device_id)).playing
    assert [e.text for e in living.spoken()] == ["你好呀"]
    await mina.pause(living.device_id)
    assert not (await mina.play_status(living.device_id)).playing
    await mina.set_volume(living.device_id, 130)
    assert living.volume == 100
    living.online = False
    with pytest.raises(SpeakerOffline, match="3012"):
        await mina.text_to_speech(living.device_id, "hello")


async def test_silent_model_and_missing_play_status(cloud: FakeXiaomiCloud, http: object, tmp_path: Path) -> None:
    """X08E: MiNA TTS answers ok but nothing is heard; its MIoT TTS action speaks."""
    account = make_account(cloud, http, tmp_path, password=PASSWORD)
    bedroom = cloud.accounts[USER].speaker("卧室")
    await MinaService(account).text_to_speech(bedroom.device_id, "听不见")
    assert bedroom.spoken() == [] and bedroom.spoken("silent_tts")[0].text == "听不见"
    profile, known = model_table().profile("X08E")
    assert known and not profile.mina_tts and not profile.play_status and profile.tts_action == (7, 3)
    await MiotService(account).action(bedroom.miot_did, *profile.tts_action, ["听得见"])
    assert [e.text for e in bedroom.spoken()] == ["听得见"]


async def test_conversation_records_appear_with_lag(cloud: FakeXiaomiCloud, http: object, tmp_path: Path) -> None:
    account = make_account(cloud, http, tmp_path, password=PASSWORD)
    living = cloud.accounts[USER].speaker("客厅")
    api = ConversationApi(account)
    cloud.say(living, "请讲个笑话", lag_s=0.3, native_answer="好的，我给你讲")
    assert await api.latest(living.device_id, living.hardware) == []
    await asyncio.sleep(0.35)
    (record,) = await api.latest(living.device_id, living.hardware)
    assert record.query == "请讲个笑话" and record.answer_types == ("TTS",) and record.answer_text == "好的，我给你讲"
    assert len(record.request_id) == 32
    # A wrong deviceId cookie gets the HTML 401 page, which reads as an expired token.
    with pytest.raises(AuthExpired):
        await api.latest("not-a-speaker", "LX06")


def test_parse_records_tolerates_odd_shapes() -> None:
    assert parse_records("") == [] and parse_records(None) == []
    data = json.dumps({"records": [{"time": "x"}, {"time": 5, "query": " hi ", "answers": []}, "junk"]})
    (r,) = parse_records(data)
    assert r.query == "hi" and r.answer_types == ()
    with pytest.raises(BadResponse):
        parse_records("{oops")


async def test_miot_signed_requests_and_auth_errors(cloud: FakeXiaomiCloud, http: object, tmp_path: Path) -> None:
    account = make_account(cloud, http, tmp_path, password=PASSWORD)
    miot = MiotService(account)
    living = cloud.accounts[USER].speaker("客厅")
    listing = await miot.device_list()
    assert {d.did for d in listing} == {s.miot_did for s in cloud.accounts[USER].speakers}
    await miot.set_prop(living.miot_did, 2, 1, 55)
    assert living.volume == 55 and await miot.get_prop(living.miot_did, 2, 1) == 55
    await miot.action(living.miot_did, 5, 3)
    assert living.wakes == 1
    # "auth err" with code 0 and no result (the real shape) also triggers one re-login.
    for style in ("code0", "401"):
        cloud.miot_auth_style = style
        cloud.expire_tokens(USER)
        logins = len(cloud.logins)
        assert len(await miot.device_list()) == 2
        assert len(cloud.logins) == logins + 1


async def test_miot_bad_signature_is_refused(cloud: FakeXiaomiCloud, http: object, tmp_path: Path) -> None:
    """The fake really checks the signature: a wrong ssecurity gets "invalid signature", which
    the client treats like an expired token (one re-login, then the call succeeds)."""
    account = make_account(cloud, http, tmp_path, password=PASSWORD)
    await account.login()
    token = await account.token(MIOT_SID)
    token.ssecurity = base64.b64encode(os.urandom(16)).decode()
    logins = len(cloud.logins)
    assert "list" in await MiotService(account).request("/home/device_list", {})
    assert len(cloud.logins) == logins + 1 and (await account.token(MIOT_SID)).ssecurity != token.ssecurity
    # Without the re-login the answer is the real shape: code 0, no result, "invalid signature".
    good = await account.token(MIOT_SID)
    form = wire.miot_form("/home/device_list", base64.b64encode(os.urandom(16)).decode(), {})
    reply = await exchange(http, "POST", cloud.endpoints()["miot"] + "/home/device_list", what="t", form=form,  # type: ignore[arg-type]
                           cookies={"userId": USER, "serviceToken": good.service_token})
    assert reply.json("t") == {"code": 0, "message": "invalid signature"}


async def test_list_and_find_speakers(cloud: FakeXiaomiCloud, http: object, tmp_path: Path) -> None:
    account = make_account(cloud, http, tmp_path, password=PASSWORD)
    speakers = await list_speakers(MinaService(account), MiotService(account))
    living = cloud.accounts[USER].speaker("客厅")
    for key in ("客厅", "客厅音箱", living.device_id, living.miot_did, living.serial_number):
        found = find_speaker(speakers, key)
        assert found is not None and found.mina.device_id == living.device_id
    assert find_speaker(speakers, "厨房") is None


def test_model_table_covers_the_spec_and_overrides_apply() -> None:
    table = model_table()
    for hw in ("OH2P", "LX06", "S12", "L15A", "LX5A", "LX05", "X10A", "L17A", "L06A", "LX01", "L05B", "L05C",
               "L09A", "LX04", "X4B", "X6A", "X08E", "X8F", "L07A", "X08C"):
        assert hw in table.models, hw
    assert table.profile("L15A")[0].playing_prop == (3, 1, 1)
    assert table.profile("L05C")[0].play_api == "play_music"
    assert not table.profile("SM4")[0].supported
    unknown, known = table.profile("ZZZ9")
    assert not known and unknown.tts_action == (5, 1)
    changed, _ = table.profile("LX06", ModelOverrides(mina_tts=False, tts_action=(7, 3)))
    assert not changed.mina_tts and changed.tts_action == (7, 3) and changed.wake_action == (5, 3)


# -- command line -------------------------------------------------------------------------------


async def _cli(cloud: FakeXiaomiCloud, root: Path, *args: str, stdin: str = "") -> tuple[int, str, str]:
    override = root / "override.yaml"
    override.write_text(json.dumps({"xiaomi": {"endpoints": cloud.endpoints()}, "data_dir": str(root / "data")}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server.xiaomi", "--config", str(override), *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=env, cwd=str(ROOT))
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), timeout=60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_cli_login_and_devices(cloud: FakeXiaomiCloud, tmp_path: Path) -> None:
    code, out, err = await _cli(cloud, tmp_path, "login", "--user-id", USER, "--stdin", stdin=PASSWORD + "\n")
    assert code == 0, err
    assert "登录成功" in out and "Logged in" in out
    living = cloud.accounts[USER].speaker("客厅")
    assert living.device_id in out and living.miot_did in out and "LX06" in out and "小爱音箱 Pro" in out
    assert "MIoT 播报" in out  # the X08E hint
    cloud.logins.clear()
    code, out, err = await _cli(cloud, tmp_path, "devices")
    assert code == 0, err
    assert "卧室" in out and cloud.logins == []  # the stored tokens were enough


async def test_cli_wrong_password_and_verification(cloud: FakeXiaomiCloud, tmp_path: Path) -> None:
    code, _, err = await _cli(cloud, tmp_path, "login", "--user-id", USER, "--stdin", stdin="bad\n")
    assert code == 3 and "wrong password" in err
    cloud.accounts[USER].login_mode = "verify"
    code, _, err = await _cli(cloud, tmp_path, "login", "--user-id", USER, "--stdin", stdin=PASSWORD + "\n")
    assert code == 3 and "/identity/authStart" in err and "--pass-token" in err
    device_id = (tmp_path / "data" / "xiaomi" / USER / "device_id").read_text().strip()
    assert device_id in err
    code, _, err = await _cli(cloud, tmp_path, "login", "--user-id", "138xxxx", "--stdin", stdin="x\n")
    assert code == 2 and "小米ID" in err


async def test_cli_pass_token_login(cloud: FakeXiaomiCloud, tmp_path: Path) -> None:
    code, _, err = await _cli(cloud, tmp_path, "login", "--user-id", USER, "--stdin", stdin=PASSWORD + "\n")
    assert code == 0, err
    tokens = tmp_path / "data" / "xiaomi" / USER / "tokens.json"
    pass_token = json.loads(tokens.read_text())["pass_token"]
    tokens.unlink()  # a new machine with the same data/xiaomi/<id>/device_id, and only a passToken
    cloud.logins.clear()
    code, out, err = await _cli(cloud, tmp_path, "login", "--user-id", USER, "--pass-token", "--stdin",
                                stdin=pass_token + "\n")
    assert code == 0, err
    assert cloud.logins == [(USER, "micoapi", "pass_token"), (USER, "xiaomiio", "pass_token")]
    assert "客厅" in out
