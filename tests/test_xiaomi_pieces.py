"""The bridge's pieces that need no conversation: trigger matching and continuous mode, record
de-duplication, playback waits, the served-audio store, and SpeakerControl against the fake
cloud (muting XiaoAi, speaking per model, waking)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from harness.fakes.net_guard import block_internet
from harness.fakes.xiaomi_cloud import FakeSpeaker, FakeXiaomiCloud, audio_seconds
from server.xiaomi.account import Endpoints, XiaomiAccount
from server.xiaomi.audio_store import AudioStore, encode_mp3
from server.xiaomi.conversation import ConversationRecord, parse_records
from server.xiaomi.devices import find_speaker, list_speakers
from server.xiaomi.http import new_http_session
from server.xiaomi.mina import MinaService
from server.xiaomi.miot import MiotService
from server.xiaomi.models import model_table
from server.xiaomi.playback import PlaybackTiming, speech_seconds, wait_playback
from server.xiaomi.records import RecordFilter
from server.xiaomi.speaker import SpeakerControl
from server.xiaomi.store import AccountStore
from server.xiaomi.trigger import TriggerPolicy

USER = "2233445566"
FAST = PlaybackTiming(poll_s=0.02, scale=0.05, min_s=0.6)


def policy(mode: str = "keyword", continuous: bool = False) -> TriggerPolicy:
    return TriggerPolicy(mode=mode, keywords=("请", "你", "帮我"), continuous=continuous,  # type: ignore[arg-type]
                         followup_timeout_s=20, exit_phrases=("退出", "再见"))


def test_keyword_mode_answers_only_keyword_queries() -> None:
    p = policy()
    assert p.decide("请讲个笑话", 0).action == "answer"
    assert p.decide("你叫什么名字", 0).text == "你叫什么名字"
    assert p.decide("帮我查一下天气", 0).action == "answer"
    assert p.decide("打开客厅灯", 0).action == "ignore"
    assert p.decide("现在几点", 0).action == "ignore"
    assert p.decide("小爱同学，请讲个故事", 0).text == "请讲个故事"
    assert p.decide("   ", 0).action == "ignore"


def test_always_mode_answers_everything_xiaoai_did_not_act_on() -> None:
    p = policy("always")
    assert p.decide("打开客厅灯", 0).action == "answer"
    assert p.decide("退出", 0).action == "answer"  # no conversation to exit: just a query
    assert p.decide("播放周杰伦的歌", 0, xiaoai_acted=True).action == "ignore"  # XiaoAi plays it
    assert p.decide("请播放周杰伦的歌", 0, xiaoai_acted=True).action == "answer"  # asked for us


def test_records_tell_what_xiaoai_did() -> None:
    music = parse_records(json.dumps({"records": [
        {"time": 1, "query": "播放音乐", "requestId": "a", "answers": [
            {"type": "TTS", "tts": {"text": "好的"}}, {"type": "AUDIO", "audio": {"audioInfoList": []}}]},
        {"time": 2, "query": "音量调大", "requestId": "b", "answers": []},
        {"time": 3, "query": "讲个笑话", "requestId": "c", "answers": [{"type": "LLM", "llm": {"text": "从前"}}]},
    ]}))
    assert [r.xiaoai_acted for r in music] == [True, True, False]
    assert music[2].answer_text == "从前"


def test_continuous_mode_followups_exit_and_timeout() -> None:
    p = policy(continuous=True)
    assert p.decide("请讲个笑话", 100).action == "answer"
    assert p.answered(101) is True
    assert p.decide("再来一个", 105).action == "answer"  # no keyword needed while following
    p.answered(106)
    assert p.decide("再见。", 107).action == "exit"
    assert p.decide("再来一个", 108).action == "ignore"
    p.decide("请继续", 200)
    p.answered(200)
    assert p.decide("再来一个", 221).action == "ignore"  # 20 s of silence ended it
    assert policy().answered(0) is False


def _rec(t: int, q: str, rid: str = "") -> ConversationRecord:
    return ConversationRecord(request_id=rid or f"r{t}", time_ms=t, query=q)


def test_record_filter_dedupes_and_ignores_old_records() -> None:
    f = RecordFilter(started_ms=1000)
    assert f.new([_rec(900, "old")]) == []
    got = f.new([_rec(1200, "b"), _rec(1100, "a")])  # newest first, as the API sends
    assert [r.query for r in got] == ["a", "b"]
    assert f.new([_rec(1200, "b"), _rec(1100, "a")]) == []
    assert [r.query for r in f.new([_rec(1300, "c"), _rec(1200, "b")])] == ["c"]
    assert f.new([_rec(1400, "")]) == []  # an empty query (a button press) is nothing to answer
    same_time = f.new([_rec(1500, "x", "id1"), _rec(1500, "y", "id2")])
    assert {r.query for r in same_time} == {"x", "y"}


def test_speech_estimate() -> None:
    t = PlaybackTiming()
    assert speech_seconds("你好你好你好你好你", t) == pytest.approx(2.0 + t.tail_s)
    assert speech_seconds("你好，你好。", t) == pytest.approx(4 / 4.5 + 2 * t.pause_s + t.tail_s)
    assert speech_seconds("one two three", t) == pytest.approx(3 / 2.6 + t.tail_s)
    assert speech_seconds("好", t) == t.min_s


async def test_wait_playback_by_status_estimate_and_stuck() -> None:
    timing = PlaybackTiming(poll_s=0.01)
    states = iter([False, True, True, False])  # not started yet, playing, playing, done

    async def probe() -> bool:
        return next(states)

    assert await wait_playback(5.0, probe, timing) == "status"
    t0 = time.monotonic()
    assert await wait_playback(0.1, None, timing) == "estimate"
    assert time.monotonic() - t0 >= 0.09

    async def always() -> bool:
        return True

    stuck = PlaybackTiming(poll_s=0.01, stuck_extra_s=0.05)
    assert await wait_playback(0.05, always, stuck) == "stuck"

    async def broken() -> bool:
        raise RuntimeError("no status")

    assert await wait_playback(0.02, broken, timing) == "estimate"


def test_audio_store_urls_are_unguessable_and_expire() -> None:
    now = [0.0]
    store = AudioStore(ttl_s=10, clock=lambda: now[0])
    path = store.add(b"mp3")
    token = path.rsplit("/", 1)[1].removesuffix(".mp3")
    assert path.startswith("/xiaomi/audio/") and len(token) >= 32
    assert store.get(path.rsplit("/", 1)[1]) == b"mp3"
    assert store.get("x" * 32 + ".mp3") is None
    assert store.add(b"other") != path
    now[0] = 11
    assert store.get(path.rsplit("/", 1)[1]) is None and len(store) == 0


def test_encode_mp3_round_trip() -> None:
    rate = 24000
    tone = (np.sin(np.arange(rate) * 2 * np.pi * 440 / rate) * 8000).astype(np.int16).tobytes()
    mp3 = encode_mp3(tone, rate)
    assert mp3[:3] == b"ID3" or mp3[0] == 0xFF
    assert audio_seconds(mp3) == pytest.approx(1.0, abs=0.1)


# -- SpeakerControl against the fake cloud ---------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_internet(monkeypatch: pytest.MonkeyPatch) -> None:
    block_internet(monkeypatch)


@pytest.fixture
async def cloud() -> AsyncIterator[FakeXiaomiCloud]:
    fake = FakeXiaomiCloud(speech_scale=0.05, record_lag_s=0.0, native_answer_s=5.0)
    fake.add_account(USER, "pw", FakeSpeaker("客厅", "LX06"), FakeSpeaker("卧室", "X08E"), FakeSpeaker("书房", "L05C"))
    async with fake:
        yield fake


async def control(cloud: FakeXiaomiCloud, tmp_path: Path, http: object, name: str,
                  store: AudioStore | None = None) -> SpeakerControl:
    account = XiaomiAccount(http, AccountStore(tmp_path, USER), Endpoints(**cloud.endpoints()), password="pw")  # type: ignore[arg-type]
    mina, miot = MinaService(account), MiotService(account)
    speaker = find_speaker(await list_speakers(mina, miot), name)
    assert speaker is not None
    profile, _ = model_table().profile(speaker.mina.hardware)
    return SpeakerControl(speaker, profile, mina, miot, timing=FAST, audio_store=store,
                          audio_base_url=cloud.url.replace("127.0.0.1", "127.0.0.1"))


async def test_muting_cuts_xiaoai_and_keeps_repeating_until_we_speak(cloud: FakeXiaomiCloud, tmp_path: Path) -> None:
    async with new_http_session() as http:
        ctl = await control(cloud, tmp_path, http, "客厅")
        living = cloud.accounts[USER].speaker("客厅")
        cloud.say(living, "请讲个笑话", native_answer="好的")
        assert living.playing()
        ctl.start_muting()
        await asyncio.sleep(0.05)
        assert not living.playing()
        assert living.events[0].kind == "native" and living.events[0].cut_at is not None
        await asyncio.sleep(0.4)  # the repeats continue (XiaoAi may start talking late)
        await ctl.stop_muting()
        pauses = [c for c in living.commands if c.name == "player_play_operation"]
        assert len(pauses) >= 2
        await ctl.say_text("第一句")
        n = len(living.commands)
        await asyncio.sleep(0.15)
        assert len(living.commands) == n  # no pause lands on our own sentence
        (ours,) = living.spoken()
        assert ours.text == "第一句" and ours.cut_at is None


async def test_silent_mina_model_speaks_through_miot_and_waits_by_estimate(cloud: FakeXiaomiCloud,
                                                                           tmp_path: Path) -> None:
    async with new_http_session() as http:
        ctl = await control(cloud, tmp_path, http, "卧室")
        bedroom = cloud.accounts[USER].speaker("卧室")
        assert ctl.probe() is None  # X08E reports no play status
        expected = await ctl.say_text("今天天气很好，适合出去走走。")
        t0 = time.monotonic()  # the speaker starts talking when the command is through
        assert [e.kind for e in bedroom.events] == ["miot_tts"]
        assert bedroom.commands[0].name == "action 7-3"
        assert await ctl.wait_done(expected, t0) == "estimate"
        assert not bedroom.playing()  # the estimate covered the real playback
        await ctl.wake()
        assert bedroom.wakes == 1 and bedroom.commands[-1].name == "action 7-1"


async def test_status_model_waits_for_the_player(cloud: FakeXiaomiCloud, tmp_path: Path) -> None:
    async with new_http_session() as http:
        ctl = await control(cloud, tmp_path, http, "客厅")
        living = cloud.accounts[USER].speaker("客厅")
        t0 = time.monotonic()
        expected = await ctl.say_text("这是一句比较长的话，用来测试播放状态的等待。")
        assert await ctl.wait_done(expected, t0) == "status"
        assert not living.playing() and living.events[-1].end <= time.monotonic()
        await ctl.set_volume(33)
        assert living.volume == 33 and await ctl.volume() == 33


async def test_server_audio_is_served_fetched_and_decoded(cloud: FakeXiaomiCloud, tmp_path: Path) -> None:
    from aiohttp import web

    store = AudioStore(ttl_s=60)
    app = web.Application()
    store.add_routes(app)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    rate = 24000
    tone = (np.sin(np.arange(rate // 2) * 2 * np.pi * 300 / rate) * 8000).astype(np.int16).tobytes()
    try:
        async with new_http_session() as http:
            for name, method in (("客厅", "player_play_url"), ("书房", "player_play_music")):
                ctl = await control(cloud, tmp_path, http, name, store)
                ctl.audio_base_url = f"http://127.0.0.1:{port}"
                sp = cloud.accounts[USER].speaker(name)
                t0 = time.monotonic()
                expected = await ctl.play_audio(encode_mp3(tone, rate), 0.5)
                assert sp.commands[-1].name == method  # L05C's play_url is silent: play_music
                assert await ctl.wait_done(expected, t0) in ("status", "estimate")
                (event,) = sp.spoken("url")
                assert audio_seconds(event.audio) == pytest.approx(0.5, abs=0.08)
    finally:
        await runner.cleanup()


async def test_offline_speaker_is_reported(cloud: FakeXiaomiCloud, tmp_path: Path) -> None:
    from server.xiaomi.errors import SpeakerOffline

    async with new_http_session() as http:
        ctl = await control(cloud, tmp_path, http, "客厅")
        cloud.accounts[USER].speaker("客厅").online = False
        with pytest.raises(SpeakerOffline):
            await ctl.say_text("你好")


ISSUE_YAML = """
xiaomi:
  enabled: false
  poll_interval_s: 1.0
  audio_base_url: ""
  endpoints:
    account: https://account.xiaomi.com
    mina: https://api2.mina.mi.com
    userprofile: https://userprofile.mina.mi.com
    miot: https://api.io.mi.com/app
  accounts:
    - user_id: "123456789"
      password: ${MI_PASSWORD:-}
      pass_token: ${MI_PASS_TOKEN:-}
      speakers:
        - match: 客厅
          mode: keyword
          keywords: [请, 你, 帮我]
          continuous: false
          reply_via: speaker
          identity: ""
"""


def _config(text: str, env: dict[str, str] | None = None) -> object:
    import yaml

    from server.config.loader import DEFAULT_CONFIG, deep_merge, expand_env, read_yaml, validate

    return validate(expand_env(deep_merge(read_yaml(DEFAULT_CONFIG), yaml.safe_load(text)), env=env or {}))


def test_the_issue_config_validates_as_written() -> None:
    cfg = _config(ISSUE_YAML, {"MI_PASSWORD": "secret"}).xiaomi  # type: ignore[attr-defined]
    (account,) = cfg.accounts
    assert account.user_id == "123456789" and account.password == "secret" and account.pass_token == ""
    (speaker,) = account.speakers
    assert (speaker.match, speaker.mode, speaker.reply_via) == ("客厅", "keyword", "speaker")
    assert speaker.keywords == ["请", "你", "帮我"]
    assert cfg.poll_interval_s == 1.0 and not cfg.enabled
    assert _config("{}").xiaomi.accounts == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(("change", "message"), [
    ("        - match: 客厅\n          volume: 3\n", "unknown key"),
    ("        - match: 客厅\n          mode: sometimes\n", "mode"),
    ("        - match: 客厅\n          model: {mina_tts: maybe}\n", "mina_tts"),
])
def test_bad_xiaomi_config_names_the_key(change: str, message: str) -> None:
    from server.config.loader import ConfigError

    text = ("xiaomi:\n  accounts:\n    - user_id: 123456789\n      speakers:\n" + change)
    with pytest.raises(ConfigError, match=message):
        _config(text)


def test_server_audio_needs_a_base_url_and_user_id_must_be_numeric() -> None:
    from server.config.loader import ConfigError

    with pytest.raises(ConfigError, match="audio_base_url"):
        _config("xiaomi:\n  enabled: true\n  accounts:\n    - user_id: '1234'\n      speakers:\n"
                "        - {match: x, reply_via: server_audio}\n")
    with pytest.raises(ConfigError, match="user_id"):
        _config("xiaomi:\n  accounts:\n    - user_id: 'lin@example.com'\n")
