"""Third-party clients that work with the reference server work with ours (issue 7): the
simulated device behaves as each client did when tried against this server.

- The reference server's browser page (main/digital-human): sends `listen detect` "嘿，你好呀"
  right after hello as its wake word, types questions as `listen detect` text while earlier
  replies may still run, plays late (it buffers before playing, in 120 ms blocks) and clears
  everything unplayed when `tts stop` arrives.
- py-xiaozhi 2.1.1 (CLI): empty session_id, `Device-Id: None` with `--skip-activation` on a fresh
  config, `listen start` (its `r` key) while a reply plays, without an abort first.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from websockets.asyncio.client import connect

from harness.devsim import SimDevice
from harness.devsim.identity import DeviceIdentity
from harness.devsim.server_process import ServerProcess
from server.pipeline.tool_access import cannot_act_reply
from tests.conftest import http_json

pytestmark = pytest.mark.e2e

# The browser page, as measured (docs/tts-stop-grace.md): plays ~60 ms after our pacing model
# and holds back up to 240 ms (it plays in 120 ms blocks once 240 ms are decoded).
PAGE = {"clear_on_stop": True, "playback_delay_ms": 60, "hold_back_ms": 240}
# Generous: the e2e suite shares a 2-core machine; these tests are about order, not speed.
TURN_S = 180
LONG_QUESTION = "Tell me a long story about a brave little cat who sails around the world."


def tts_states(dev: SimDevice, start: int = 0) -> list[str]:
    return [e.get("state") for e in dev.events[start:] if e.is_msg("tts") and e.get("state") in ("start", "stop")]


async def turns_of(server: ServerProcess, device_id: str) -> list[dict]:
    data = await http_json(server.http_url + "/metrics")
    return [t for t in data["turns"] if t.get("device_id") == device_id]


async def test_page_wake_text_after_hello_is_not_a_question(server: ServerProcess) -> None:
    async with SimDevice(**PAGE) as dev:
        await dev.ota(server.http_url)
        await dev.connect()
        start = len(dev.events)
        await dev.listen_detect("嘿，你好呀")
        await dev.listen_start("auto")
        await asyncio.sleep(3.0)
        assert not [e for e in dev.events[start:] if e.is_msg("stt") or e.is_msg("tts")], \
            [e.message for e in dev.events[start:]]
        assert await turns_of(server, dev.identity.mac) == []
        # A wake word in front of a question: the question is answered, without the wake word.
        result = await dev.ask_text("你好小智，what is the capital of France?", timeout=TURN_S)
        assert result.completed and result.stt_text == "what is the capital of France?"


async def test_replaced_turn_ends_with_tts_stop_before_the_next_starts(server: ServerProcess) -> None:
    """Typed text while a reply is thinking or speaking (the page saw 23 stt + tts start pairs
    and no stop): every tts start is closed by a tts stop before the next one."""
    async with SimDevice(**PAGE) as dev:
        await dev.ota(server.http_url)
        await dev.connect()
        await dev.listen_start("auto")
        start = len(dev.events)
        await dev.listen_detect(LONG_QUESTION)
        await dev.wait_for(lambda e: e.is_msg("tts", "start"), TURN_S, start)
        await dev.listen_detect("What is the capital of France?")  # replaces the first turn
        second = await dev.wait_for(lambda e: e.is_msg("stt") and "France" in str(e.get("text")), TURN_S, start)
        result = await dev.wait_for(lambda e: e.is_msg("tts", "stop") and e.t > second.t, TURN_S, start)
        assert result is not None
        states = tts_states(dev, start)
        assert states == ["start", "stop", "start", "stop"], states
        # The old turn's stop came before anything of the new one.
        first_stop = next(e for e in dev.events[start:] if e.is_msg("tts", "stop"))
        assert first_stop.t <= second.t
        # And typed text in manual mode (py-xiaozhi): two replacements in a row, never two starts
        # without a stop between them.
    async with SimDevice(py_xiaozhi=True) as dev:
        await dev.ota(server.http_url)
        await dev.connect()
        start = len(dev.events)
        await dev.listen_start("manual")
        await dev.listen_detect(LONG_QUESTION)
        await dev.wait_for(lambda e: e.is_msg("tts", "start"), TURN_S, start)
        await dev.listen_detect("Tell me about the moon.")
        await dev.listen_detect("What is two plus two?")
        last = await dev.wait_for(lambda e: e.is_msg("stt") and "two" in str(e.get("text")), TURN_S, start)
        await dev.wait_for(lambda e: e.is_msg("tts", "stop") and e.t > last.t, TURN_S, start)
        states = tts_states(dev, start)
        assert all(a != b for a, b in zip(states, states[1:], strict=False)), states
        assert states[-1] == "stop"


async def test_listen_start_during_a_reply_takes_the_floor(server: ServerProcess) -> None:
    """py-xiaozhi's `r` while a reply plays: the reply stops at once, and no tts stop follows
    that would move the (manual-mode) client from listening to idle and lose the recording."""
    async with SimDevice(py_xiaozhi=True) as dev:
        await dev.ota(server.http_url)
        await dev.connect()
        assert json.loads(dev.sent[0].data)["type"] == "hello"
        start = len(dev.events)
        await dev.listen_start("manual")
        await dev.listen_detect(LONG_QUESTION)
        await dev.wait_for(lambda e: e.kind == "binary", TURN_S, start)
        await asyncio.sleep(0.5)
        pressed = await dev.listen_start("manual")  # the user takes the floor, no abort
        await asyncio.sleep(3.0)
        late_frames = [e for e in dev.events[start:] if e.kind == "binary" and e.t > pressed + 0.3]
        assert late_frames == [], f"{len(late_frames)} frames after the user took the floor"
        assert not [e for e in dev.events[start:] if e.is_msg("tts", "stop") and e.t > pressed]
        assert dev.state == "listening" and dev.mic_on
        # The recording the user makes now is answered normally.
        from tests.conftest import speech

        await dev.stream_audio(await speech("What is the capital of France?"))
        stopped = await dev.listen_stop()
        stt = await dev.wait_for(lambda e: e.is_msg("stt") and e.t > stopped, TURN_S, start)
        assert "france" in str(stt.get("text")).lower()
        await dev.wait_for(lambda e: e.is_msg("tts", "stop") and e.t > stt.t, TURN_S, start)


async def test_routine_relisten_after_stop_does_not_cancel_the_next_reply(server: ServerProcess) -> None:
    """The firmware (auto mode) re-sends listen start once its playback drained after tts stop;
    that one is not the user taking the floor, even if the next reply is already speaking."""
    async with SimDevice() as dev:
        await dev.ota(server.http_url)
        await dev.connect()
        await dev.listen_start("auto")
        first = await dev.ask_text("Say hello.", timeout=TURN_S)
        assert first.completed
        result = await dev.ask_text("What is the capital of France?", timeout=TURN_S)
        assert result.completed and result.frames_played > 5 and result.sentences


async def test_device_id_none_never_shares_an_identity(server: ServerProcess) -> None:
    """py-xiaozhi --skip-activation with a fresh config sends `Device-Id: None`."""
    seen: list[str] = []
    for client_id in ("", "web_test_client"):
        async with SimDevice(identity=DeviceIdentity(mac="None", client_id=client_id), py_xiaozhi=True) as dev:
            await dev.connect(url=server.ws_url)
            result = await dev.ask_text("Say hello.", timeout=TURN_S)
            assert result.completed, result.error
    data = await http_json(server.http_url + "/metrics")
    seen = [t["device_id"] for t in data["turns"] if t.get("kind") == "text"][-2:]
    assert len(set(seen)) == 2 and not {"none", "None", "", "web_test_client"} & set(seen), seen
    # With a UUID client id (py-xiaozhi always has one) the identity is stable: the client id.
    client = str(uuid.uuid4())
    for _ in range(2):
        async with SimDevice(identity=DeviceIdentity(mac="None", client_id=client), py_xiaozhi=True) as dev:
            await dev.connect(url=server.ws_url)
            assert (await dev.ask_text("Say hello.", timeout=TURN_S)).completed
    assert len(await turns_of(server, client)) == 2
    # A browser-style query string with an encoded line break (%0A) in the id: accepted under an
    # identity of its own, and the raw value never reaches the log as a line of its own.
    async with connect(server.ws_url + "?device-id=x%0D%0AINFO%20forged&client-id=web", compression=None) as ws:
        await ws.send(json.dumps({"type": "hello", "version": 1, "transport": "websocket"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "hello"
    assert await server.wait_for_log("x\\r\\nINFO forged")  # logged escaped, once
    assert not [line for line in server.log_text().splitlines() if line.startswith("INFO forged")]


async def test_page_playback_keeps_the_end_of_every_reply(server: ServerProcess) -> None:
    """A client that plays late and clears on stop loses no speech with the default grace."""
    async with SimDevice(**PAGE) as dev:
        await dev.ota(server.http_url)
        await dev.connect()
        for question in ("What is the capital of France?", "Say something nice."):
            result = await dev.ask_text(question, timeout=TURN_S)
            assert result.completed and result.frames_played > 5
            assert result.speech_lost_ms == 0, result.speech_lost_ms
            assert len(result.emotions) == 1


async def test_a_client_holding_back_more_than_the_grace_loses_speech(server: ServerProcess) -> None:
    """The control for the test above (the loss is measured, not assumed away): a client that
    holds back more than the default grace does lose the end of the reply."""
    async with SimDevice(clear_on_stop=True, playback_delay_ms=60, hold_back_ms=1500) as dev:
        await dev.ota(server.http_url)
        await dev.connect()
        result = await dev.ask_text("What is the capital of France?", timeout=TURN_S)
        assert result.completed and result.speech_lost_ms > 0


async def test_device_action_without_tools_gets_an_honest_answer(server: ServerProcess) -> None:
    """The embedded model cannot call tools: "set the volume to 30" is not claimed as done."""
    async with SimDevice(py_xiaozhi=True) as dev:
        await dev.ota(server.http_url)
        await dev.connect()
        result = await dev.ask_text("Set the volume to 30.", timeout=TURN_S)
        assert result.completed
        assert " ".join(result.sentences) == cannot_act_reply("en")
        assert dev.mcp.status.volume == 70 and not [c for c in dev.mcp_calls if c.method == "tools/call"]
        assert result.emotions == ["sad"]


async def test_no_marker_after_an_interrupted_turn(server: ServerProcess) -> None:
    async with SimDevice(py_xiaozhi=True) as dev:
        await dev.ota(server.http_url)
        await dev.connect()
        start = len(dev.events)
        await dev.listen_start("manual")
        await dev.listen_detect(LONG_QUESTION)
        await dev.wait_for(lambda e: e.is_msg("stt"), TURN_S, start)
        await dev.abort()
        await dev.wait_for(lambda e: e.is_msg("tts", "stop"), 10, start)
        for question in ("What did you want to say?", "Go on."):
            result = await dev.ask_text(question, timeout=TURN_S)
            assert result.completed
            spoken = " ".join(result.sentences).lower()
            assert "interrupted" not in spoken and "[" not in spoken, result.sentences
