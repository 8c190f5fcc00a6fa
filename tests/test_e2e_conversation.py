"""A firmware-faithful device over a real socket talks to the real server running the embedded
offline models: spoken questions in, spoken answers out, checked by transcribing them back."""

from __future__ import annotations

import asyncio
import time

import pytest

from harness.devsim import SimDevice
from harness.devsim.server_process import ServerProcess
from tests.conftest import matches_subtitles, similarity, speech, transcribe, words

pytestmark = pytest.mark.e2e

QUESTION = "What is the capital of France?"


def check_reply(result, whisper, *, declared_rate: int = 24000) -> str:
    """Everything a firmware device needs from one answered turn."""
    assert result.completed, result.error
    assert result.t_tts_start is not None and result.t_first_audio is not None
    assert result.t_tts_start < result.t_first_audio < result.t_tts_stop
    assert result.sentences and all(s.strip() for s in result.sentences)
    assert result.emotions, "an llm emotion message is sent with every answer"
    assert result.frames_received > 5 and result.frames_played == result.frames_received
    assert result.dropped_not_speaking == 0 and result.overflow_drops == 0
    assert result.max_queue_depth <= 40
    assert result.reply_sample_rate == declared_rate
    # Every frame decoded at the declared rate into exactly 60 ms of audio.
    assert len(result.reply_pcm) == result.frames_played * declared_rate * 60 // 1000 * 2
    heard = transcribe(whisper, result.reply_pcm, result.reply_sample_rate)
    assert len(words(heard)) >= 2, f"reply audio is not speech: {heard!r} (sentences {result.sentences})"
    # What we heard is what the subtitles said (the audio belongs to this turn's text).
    assert matches_subtitles(heard, result.sentences), (heard, result.sentences)
    return heard


@pytest.mark.parametrize("version", [1, 2, 3])
async def test_spoken_question_auto_mode(server: ServerProcess, whisper, version: int) -> None:
    async with SimDevice() as dev:
        ota = await dev.ota(server.http_url)
        assert ota["websocket"]["url"] == server.ws_url
        hello = await dev.connect(protocol_version=version)
        assert hello["transport"] == "websocket" and hello["session_id"]
        assert hello["audio_params"]["sample_rate"] == 24000 and hello["audio_params"]["frame_duration"] == 60
        result = await dev.ask_audio(await speech(QUESTION), mode="auto")
        assert similarity(result.stt_text, QUESTION) >= 0.8, result.stt_text
        check_reply(result, whisper)
        assert not dev.violations, dev.violations


async def test_spoken_question_manual_mode(device: SimDevice, whisper) -> None:
    result = await device.ask_audio(await speech("Tell me a fun fact about the moon."), mode="manual")
    assert similarity(result.stt_text, "Tell me a fun fact about the moon.") >= 0.7, result.stt_text
    check_reply(result, whisper)
    assert not device.violations


async def test_typed_text_via_listen_detect(device: SimDevice, whisper) -> None:
    result = await device.ask_text("What color is the sky?")
    assert result.stt_text == "What color is the sky?"
    check_reply(result, whisper)


async def test_py_xiaozhi_style_client(server: ServerProcess, whisper) -> None:
    """20 ms uplink frames, hello without session echo, features mcp only."""
    async with SimDevice(py_xiaozhi=True, frame_duration=20) as dev:
        await dev.ota(server.http_url)
        await dev.connect()
        result = await dev.ask_audio(await speech(QUESTION), mode="auto")
        assert similarity(result.stt_text, QUESTION) >= 0.8, result.stt_text
        check_reply(result, whisper)


async def test_wake_word_audio_is_not_part_of_the_question(device: SimDevice, whisper) -> None:
    await device.send_wake_word(await speech("Hey there, wake up"), wake_word="你好小智")
    result = await device.ask_audio(await speech(QUESTION), mode="auto")
    assert similarity(result.stt_text, QUESTION) >= 0.8, result.stt_text
    assert "wake" not in result.stt_text.lower()
    check_reply(result, whisper)


async def test_conversation_continues_over_several_turns(device: SimDevice, whisper) -> None:
    first = await device.ask_text("My name is Alice.")
    check_reply(first, whisper)
    second = await device.ask_audio(await speech("What is two plus two?"), mode="auto")
    assert similarity(second.stt_text, "What is two plus two?") >= 0.6, second.stt_text
    check_reply(second, whisper)


async def test_abort_stops_audio_within_100ms(device: SimDevice) -> None:
    await device.listen_start("manual")
    await device.listen_detect("Describe a long summer holiday at the sea in detail.")
    first = await device.wait_for(lambda e: e.kind == "binary", timeout=30)
    await asyncio.sleep(0.1)
    sent_at = await device.abort()
    stop = await device.wait_for(lambda e: e.is_msg("tts", "stop"), timeout=5, start=device.events.index(first))
    assert stop.t - sent_at < 0.1, f"tts stop came {1000 * (stop.t - sent_at):.0f} ms after abort"
    await asyncio.sleep(1.0)  # anything still in flight would arrive by now
    after = [e for e in device.events if e.kind == "binary" and e.t > stop.t]
    assert after == [], f"{len(after)} frames of the aborted turn arrived after tts stop"
    # The session is still fine.
    result = await device.ask_text("Hello again.")
    assert result.completed


async def test_abort_without_a_turn_still_answers_tts_stop(device: SimDevice) -> None:
    sent = await device.abort()
    stop = await device.wait_for(lambda e: e.is_msg("tts", "stop"), timeout=5)
    assert stop.t - sent < 0.1


async def test_two_devices_at_once_get_only_their_own_audio_and_text(server: ServerProcess, whisper) -> None:
    questions = ["What is the capital of France?", "How many legs does a spider have?"]
    devices = [SimDevice(), SimDevice()]
    try:
        for dev in devices:
            await dev.ota(server.http_url)
            await dev.connect()
        clips = [await speech(q) for q in questions]
        results = await asyncio.gather(*(d.ask_audio(c) for d, c in zip(devices, clips, strict=True)))
        for dev, question, result in zip(devices, questions, results, strict=True):
            assert similarity(result.stt_text, question) >= 0.7, (question, result.stt_text)
            check_reply(result, whisper)
            stts = dev.messages("stt")
            assert len(stts) == 1 and stts[0]["text"] == result.stt_text
            assert all(m.get("session_id") == dev.session_id for m in dev.messages())
        assert results[0].sentences != results[1].sentences
    finally:
        for dev in devices:
            await dev.close()


async def test_exit_phrase_says_goodbye_and_closes(device: SimDevice, whisper) -> None:
    result = await device.ask_text("goodbye")
    assert result.completed
    heard = transcribe(whisper, result.reply_pcm, result.reply_sample_rate)
    assert "bye" in heard.lower()
    closed = await device.wait_for(lambda e: e.kind == "close", timeout=5)
    assert closed.close_code == 1000


async def test_realtime_barge_in(device: SimDevice) -> None:
    await device.listen_start("realtime")
    await device.listen_detect("Tell me a very long story about a dragon and a knight.")
    await device.wait_for(lambda e: e.kind == "binary", timeout=30)
    # The user talks over the reply: the mic keeps streaming in realtime mode.
    t0 = time.monotonic()
    stream = asyncio.create_task(device.stream_audio(await speech(QUESTION) + bytes(32000)))
    try:
        stop = await device.wait_for(lambda e: e.is_msg("tts", "stop") and e.t > t0, timeout=10)
        stt = await device.wait_for(lambda e: e.is_msg("stt") and e.t > stop.t, timeout=20)
    finally:
        await stream
    assert similarity(stt.get("text"), QUESTION) >= 0.7
    # Nothing from the interrupted reply after its tts stop, until the new reply's tts start.
    new_start = await device.wait_for(lambda e: e.is_msg("tts", "start") and e.t > stop.t, timeout=20)
    stray = [e for e in device.events if e.kind == "binary" and stop.t < e.t < new_start.t]
    assert stray == []
