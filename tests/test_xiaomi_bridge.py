"""The Xiaomi bridge end to end: the real server (a child process) with `xiaomi.enabled`, the
fake Xiaomi cloud and a fake OpenAI-compatible LLM/TTS in this process, all on 127.0.0.1.

A "user" speaks to a fake XiaoAi speaker (`cloud.say`): XiaoAi starts its own answer at once and
the record shows up in the conversation API after a lag. The server must poll it, mute XiaoAi,
run the query through the same conversation core as a board, and speak the reply sentence by
sentence, waiting for each to finish, in XiaoAi's voice or as our own audio by URL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from harness.devsim import SimDevice
from harness.devsim.identity import DeviceIdentity
from harness.devsim.server_process import ServerProcess, start_server
from harness.fakes.openai_server import ChatReply, FakeOpenAIServer, SpeechReply
from harness.fakes.xiaomi_cloud import AudioEvent, FakeSpeaker, FakeXiaomiCloud, audio_seconds

pytestmark = pytest.mark.e2e

USER_A = "1111111111"
USER_B = "2222222222"
SCALE = 0.05  # the fake's speakers talk 20x faster than real ones...
RATE = 1 / SCALE  # ...and the bridge is told so (model speech_rate), so its estimates match
BOARD = DeviceIdentity()


def speakers() -> dict[str, FakeSpeaker]:
    return {s.name: s for s in (
        FakeSpeaker("客厅", "LX06", alias="客厅音箱"),      # keyword mode, XiaoAi's voice, has play status
        FakeSpeaker("卧室", "X08E"),                        # always, silent MiNA TTS -> MIoT, estimate waits
        FakeSpeaker("书房", "L05C"),                        # server_audio with play_music
        FakeSpeaker("厨房", "LX06"),                        # server_audio with play_url, continuous
        FakeSpeaker("阳台", "S12"),                         # shares memory with the board
        FakeSpeaker("车库", "LX06"),                        # goes offline
        FakeSpeaker("儿童房", "LX06"),                      # second account
    )}


SPEAKERS = speakers()


def speaker_cfg(match: str, **kw: Any) -> dict[str, Any]:
    return {"match": match, "model": {"speech_rate": RATE}, **kw}


@pytest.fixture(scope="module")
async def fakes() -> AsyncIterator[tuple[FakeXiaomiCloud, FakeOpenAIServer]]:
    cloud = FakeXiaomiCloud(speech_scale=SCALE, record_lag_s=0.3, native_answer_s=3.0)
    s = SPEAKERS
    cloud.add_account(USER_A, "pw-a", s["客厅"], s["卧室"], s["书房"], s["厨房"], s["阳台"], s["车库"])
    cloud.add_account(USER_B, "pw-b", s["儿童房"])
    async with cloud, FakeOpenAIServer() as llm:
        yield cloud, llm


@pytest.fixture(scope="module")
async def server(fakes: tuple[FakeXiaomiCloud, FakeOpenAIServer]) -> AsyncIterator[ServerProcess]:
    cloud, llm = fakes
    openai = {"base_url": llm.base_url, "api_key": "k", "timeout_s": 3, "retries": 0}
    overrides = {
        "assistant": {"language": "zh"},
        "llm": {"type": "openai", "model": "fake-model", "first_token_timeout_s": 3, **openai},
        "tts": {"type": "openai", "model": "tts-1", "voice": "alloy", "response_format": "pcm", **openai},
        "asr": {"type": "openai", "model": "whisper-1", **openai},
        "memory": {"mode": "history", "identities": {BOARD.mac: "lin"}},
        "xiaomi": {
            "enabled": True, "poll_interval_s": 0.2, "fast_poll_interval_s": 0.2,
            "audio_base_url": "http://127.0.0.1:{http_port}",
            "endpoints": cloud.endpoints(),
            "accounts": [
                {"user_id": USER_A, "password": "pw-a", "speakers": [
                    speaker_cfg("客厅音箱", mode="keyword"),
                    speaker_cfg("卧室", mode="always"),
                    speaker_cfg("书房", mode="always", reply_via="server_audio"),
                    speaker_cfg("厨房", mode="keyword", reply_via="server_audio", continuous=True,
                                followup_timeout_s=5),
                    speaker_cfg(SPEAKERS["阳台"].miot_did, mode="always", identity="lin"),
                    speaker_cfg("车库", mode="always"),
                    speaker_cfg("不存在", mode="always"),
                ]},
                {"user_id": USER_B, "password": "pw-b", "speakers": [speaker_cfg("儿童房", mode="always")]},
            ],
        },
    }
    async with start_server(overrides) as proc:
        # A speaker's first poll marks what is already there as history: wait for it everywhere.
        await wait_until(lambda: all(cloud.polls.get(s.device_id, 0) >= 2 for s in SPEAKERS.values()),
                         timeout=30, what="every speaker polled")
        yield proc


async def wait_until(cond: Callable[[], bool], timeout: float = 10, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def ours(sp: FakeSpeaker) -> list[AudioEvent]:
    """What the speaker said for us (our sentences, in XiaoAi's voice or as our audio)."""
    return sp.spoken("tts", "miot_tts", "url")


async def reply_done(sp: FakeSpeaker, n: int, timeout: float = 15) -> list[AudioEvent]:
    await wait_until(lambda: len(ours(sp)) >= n and not sp.playing(), timeout, f"{n} sentences on {sp.name}")
    await asyncio.sleep(0.3)  # nothing more comes
    return ours(sp)


def reset(sp: FakeSpeaker) -> None:
    sp.events.clear()
    sp.commands.clear()
    sp.overlaps = 0


async def test_unmatched_speaker_is_reported_with_what_the_account_has(server: ServerProcess) -> None:
    await wait_until(lambda: "不存在" in server.log_text(), what="the log line")
    line = next(x for x in server.log_lines if "'不存在'" in x)
    assert "no speaker on Xiaomi account" in line and "'客厅'" in line and "'卧室'" in line


async def test_keyword_mode_mutes_xiaoai_and_streams_sentences(server: ServerProcess, fakes: Any) -> None:
    cloud, llm = fakes
    sp = SPEAKERS["客厅"]
    reset(sp)
    # Not ours: XiaoAi keeps it; no LLM call, no command to the speaker.
    chats = len(llm.chat_requests())
    cloud.say(sp, "打开客厅灯", native_answer="好的，客厅灯已打开")
    await asyncio.sleep(1.2)
    assert len(llm.chat_requests()) == chats and sp.commands == []
    assert sp.events[0].cut_at is None  # XiaoAi's answer played to the end

    # Ours: three sentences, streamed slowly by the LLM.
    reset(sp)
    llm.chat_script.append(ChatReply(chunks=["第一句话。", "第二句话在这里。", "第三句，也是最后一句。"],
                                     chunk_delay_s=0.4))
    record = cloud.say(sp, "请讲个故事", native_answer="好的，我给你讲一个故事，从前有座山")
    said = await reply_done(sp, 3)
    assert [e.text for e in said] == ["第一句话。", "第二句话在这里。", "第三句，也是最后一句。"]
    assert llm.chat_requests()[-1].body["messages"][-1]["content"] == "请讲个故事"
    # XiaoAi was muted before our first sentence...
    native = sp.events[0]
    first_pause = sp.first_command("player_play_operation")
    first_speak = sp.first_command("text_to_speech")
    assert native.kind == "native" and native.cut_at is not None
    assert first_pause is not None and first_speak is not None and first_pause.at < first_speak.at
    assert native.cut_at <= first_speak.at
    # ...the first sentence went out before the LLM had finished (streamed, not after the whole answer)...
    assert first_speak.at < llm.chat_requests()[-1].received_at + 0.8 + 0.5
    # ...and each sentence waited for the previous one to finish playing.
    assert sp.overlaps == 0
    for a, b in zip(said, said[1:], strict=False):
        assert b.start >= a.end - 0.05, (a, b)
    assert record["requestId"]


async def test_xiaoai_taking_over_ends_our_reply(server: ServerProcess, fakes: Any) -> None:
    cloud, llm = fakes
    sp = SPEAKERS["客厅"]
    reset(sp)
    llm.chat_script.append(ChatReply(chunks=["第一句。", "第二句。", "第三句。", "第四句。"], chunk_delay_s=1.0))
    cloud.say(sp, "请讲个长故事")
    await wait_until(lambda: len(ours(sp)) >= 1, what="our first sentence")
    cloud.say(sp, "现在几点", native_answer="现在是下午四点")  # not ours: the user moved on
    n = len(sp.commands)
    await asyncio.sleep(3.5)
    assert len(ours(sp)) < 4  # the rest of our reply was dropped
    assert not [c for c in sp.commands[n:] if c.name in ("text_to_speech", "player_play_operation")]
    native = [e for e in sp.events if e.kind == "native"][-1]
    assert native.text == "现在是下午四点" and native.cut_at is None  # XiaoAi's answer is left alone


async def test_always_mode_silent_model_speaks_by_miot_with_estimated_waits(server: ServerProcess,
                                                                            fakes: Any) -> None:
    cloud, llm = fakes
    sp = SPEAKERS["卧室"]
    reset(sp)
    llm.chat_script.append(ChatReply(text="好的。客厅灯我帮你看过了，已经打开。还有别的吗？"))
    cloud.say(sp, "打开客厅灯")
    said = await reply_done(sp, 3)
    assert [e.kind for e in said] == ["miot_tts"] * 3  # X08E: MiNA TTS is silent, MIoT 7-3 speaks
    assert sp.spoken("silent_tts") == []
    assert all(c.name in ("action 7-3", "player_play_operation") for c in sp.commands)
    assert sp.overlaps == 0  # no play status on this model: the estimates kept sentences apart


async def test_always_mode_leaves_music_and_device_commands_to_xiaoai(server: ServerProcess, fakes: Any) -> None:
    cloud, llm = fakes
    sp = SPEAKERS["卧室"]
    reset(sp)
    chats = len(llm.chat_requests())
    music = [{"type": "TTS", "tts": {"text": "好的"}}, {"type": "AUDIO", "audio": {"audioInfoList": []}}]
    cloud.say(sp, "播放周杰伦的歌", answers=music)
    cloud.say(sp, "音量调大一点", answers=[])
    await asyncio.sleep(1.2)
    assert len(llm.chat_requests()) == chats and sp.commands == []


async def test_records_from_before_the_start_and_repeats_are_ignored(server: ServerProcess, fakes: Any) -> None:
    cloud, llm = fakes
    sp = SPEAKERS["卧室"]
    reset(sp)
    chats = len(llm.chat_requests())
    old = cloud.say(sp, "请回答一个很久以前的问题", lag_s=0)
    old["time"] -= 3600_000  # said an hour ago (visible now)
    await asyncio.sleep(1.0)
    assert len(llm.chat_requests()) == chats
    # Each record is answered once, however many polls see it.
    cloud.say(sp, "你好", lag_s=0)
    await reply_done(sp, 2)
    await asyncio.sleep(1.0)
    assert len(llm.chat_requests()) == chats + 1


async def test_server_audio_is_served_fetched_and_decoded(server: ServerProcess, fakes: Any) -> None:
    cloud, llm = fakes
    sp = SPEAKERS["书房"]
    reset(sp)
    llm.chat_script.append(ChatReply(text="This is our own voice. It comes from the server."))
    cloud.say(sp, "hello there")
    said = await reply_done(sp, 2)
    assert [e.kind for e in said] == ["url", "url"]
    assert all(c.name != "player_play_url" for c in sp.commands)  # L05C: play_music only
    for event in said:
        assert f"127.0.0.1:{server.http_port}/xiaomi/audio/" in event.text
        assert audio_seconds(event.audio) > 0.5  # the speaker fetched real MP3 speech
    # The URLs are not guessable and are gone once expired or unknown.
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.http_url}/xiaomi/audio/{'A' * 32}.mp3") as r:
            assert r.status == 404
        async with http.get(said[0].text) as r:  # still valid: the TTL is minutes
            assert r.status == 200 and r.headers["Content-Type"] == "audio/mpeg"
    assert sp.overlaps == 0


async def test_continuous_mode_wakes_the_speaker_and_follows_up(server: ServerProcess, fakes: Any) -> None:
    cloud, llm = fakes
    sp = SPEAKERS["厨房"]
    reset(sp)
    llm.chat_script.append(ChatReply(text="Fine thanks."))
    cloud.say(sp, "你好吗")
    await reply_done(sp, 1)
    await wait_until(lambda: sp.wakes >= 1, what="the wake action")
    assert sp.first_command("action 5-3") is not None  # LX06's wake-up action
    # A follow-up without any keyword is ours now.
    llm.chat_script.append(ChatReply(text="Sure, here it is."))
    cloud.say(sp, "再说一遍")
    await reply_done(sp, 2)
    assert llm.chat_requests()[-1].body["messages"][-1]["content"] == "再说一遍"
    # An exit phrase ends it (a goodbye, no LLM call), and XiaoAi gets non-keyword queries again.
    chats = len(llm.chat_requests())
    wakes = sp.wakes
    cloud.say(sp, "退出")
    await reply_done(sp, 3)
    cloud.say(sp, "现在几点")
    await asyncio.sleep(1.2)
    assert len(llm.chat_requests()) == chats
    assert sp.wakes == wakes


async def test_two_speakers_and_two_accounts_answer_at_the_same_time(server: ServerProcess, fakes: Any) -> None:
    cloud, llm = fakes
    a, b, c = SPEAKERS["卧室"], SPEAKERS["客厅"], SPEAKERS["儿童房"]  # a and b: one account; c: another
    for sp in (a, b, c):
        reset(sp)
    cloud.say(a, "卧室的问题")
    cloud.say(b, "请回答客厅的问题")
    cloud.say(c, "儿童房的问题")
    said = await asyncio.gather(reply_done(a, 2), reply_done(b, 2), reply_done(c, 2))
    for events, query in zip(said, ("卧室的问题", "请回答客厅的问题", "儿童房的问题"), strict=True):
        assert query in events[0].text  # each speaker got the answer to its own question
    starts = [events[0].start for events in said]
    assert max(starts) - min(starts) < 1.0  # nobody waited for another's reply


async def test_board_and_speaker_share_memory(server: ServerProcess, fakes: Any) -> None:
    cloud, llm = fakes
    sp = SPEAKERS["阳台"]
    reset(sp)
    dev = SimDevice(identity=BOARD)
    await dev.ota(server.http_url)
    await dev.connect()
    try:
        result = await dev.ask_text("My name is Lin.")
        assert result.completed, result.error
    finally:
        await dev.close()
    await asyncio.sleep(0.5)
    cloud.say(sp, "What is my name?")
    await reply_done(sp, 2)  # the whole reply: the exchange is recorded when the turn ends
    await asyncio.sleep(0.5)
    request = llm.chat_requests()[-1].body["messages"]
    assert request[-1]["content"] == "What is my name?"
    assert any("My name is Lin." in str(m.get("content")) for m in request[:-1]), request
    # And back: the board, as the same user, sees what was said on the speaker.
    dev = SimDevice(identity=BOARD)
    await dev.ota(server.http_url)
    await dev.connect()
    try:
        await dev.ask_text("And what did I ask the speaker?")
    finally:
        await dev.close()
    request = llm.chat_requests()[-1].body["messages"]
    assert any("What is my name?" in str(m.get("content")) for m in request[:-1]), request


async def test_llm_failure_is_spoken_as_an_apology_and_nothing_stays_muted(server: ServerProcess,
                                                                          fakes: Any) -> None:
    cloud, llm = fakes
    sp = SPEAKERS["客厅"]
    reset(sp)
    llm.chat_script.append(ChatReply(status=500))
    cloud.say(sp, "请讲个笑话")
    (apology,) = await reply_done(sp, 1)
    assert "抱歉" in apology.text
    n = len(sp.commands)
    await asyncio.sleep(2.5)  # the mute repeats are over: nothing pauses the speaker any more
    assert [c.name for c in sp.commands[n:]] == []


async def test_tts_failure_falls_back_to_the_speakers_voice(server: ServerProcess, fakes: Any) -> None:
    cloud, llm = fakes
    sp = SPEAKERS["书房"]
    reset(sp)
    llm.chat_script.append(ChatReply(text="Only one sentence."))
    llm.speech_script.append(SpeechReply(status=500))
    cloud.say(sp, "hello again")
    said = await reply_done(sp, 2)
    assert "抱歉" in said[0].text and said[1].text == "Only one sentence."
    assert [e.kind for e in said] == ["miot_tts", "miot_tts"]  # L05C: silent MiNA TTS -> MIoT


async def test_offline_speaker_does_not_disturb_the_others(server: ServerProcess, fakes: Any) -> None:
    cloud, llm = fakes
    off, other = SPEAKERS["车库"], SPEAKERS["卧室"]
    reset(off)
    reset(other)
    off.online = False
    try:
        cloud.say(off, "请回答")
        cloud.say(other, "请回答")
        await reply_done(other, 2)
        await wait_until(lambda: "车库" in server.log_text() and "does not answer" in server.log_text(),
                         what="the offline log line")
        assert ours(off) == []
    finally:
        off.online = True
    # Back online: it works again without a restart.
    cloud.say(off, "又在线了")
    await reply_done(off, 2)


async def test_expired_token_relogs_in_and_polling_goes_on(server: ServerProcess, fakes: Any) -> None:
    cloud, llm = fakes
    sp = SPEAKERS["儿童房"]
    reset(sp)
    logins = len(cloud.logins)
    cloud.expire_tokens(USER_B)
    cloud.say(sp, "令牌过期以后")
    await reply_done(sp, 2)
    assert len(cloud.logins) > logins and cloud.logins[-1][0] == USER_B


async def test_speaker_tools_and_plugins_reach_the_llm(server: ServerProcess, fakes: Any) -> None:
    from harness.fakes.openai_server import ToolCallSpec

    cloud, llm = fakes
    sp = SPEAKERS["卧室"]
    reset(sp)
    llm.chat_script.extend([ChatReply(tool_calls=[ToolCallSpec("speaker_set_volume", {"volume": 30})]),
                            ChatReply(text="音量已调到三十。")])
    cloud.say(sp, "把音量调到三十")
    (said,) = await reply_done(sp, 1)
    assert said.text == "音量已调到三十。" and sp.volume == 30
    first, second = llm.chat_requests()[-2:]
    names = {t["function"]["name"] for t in first.body.get("tools") or []}
    assert {"speaker_set_volume", "speaker_stop"} <= names
    assert len(names) > 3  # the plugins' tools are offered too, as on a board
    assert any(m.get("role") == "tool" and "30" in str(m.get("content")) for m in second.body["messages"])


async def test_the_server_log_has_no_tracebacks(server: ServerProcess) -> None:
    assert "Traceback" not in server.log_text(), server.log_text()[-3000:]
