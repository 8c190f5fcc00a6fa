"""The simulated device's firmware on a virtual clock, without a socket: what the server's frames
do to its session, its audio state machine and its decode queue (harness/devsim/firmware.py and
state.py). The socket-level behaviour is in test_devsim.py."""

from __future__ import annotations

import asyncio
import json

import pytest

from harness.clock import VirtualClock
from harness.devsim import DeviceConfig, DeviceMcpServer, UplinkEncoder, silence
from harness.devsim.firmware import Firmware
from server.protocol import pack


class Sent(list[str]):
    async def __call__(self, text: str) -> float:
        self.append(text)
        return 0.0


def make(**config: object) -> tuple[Firmware, VirtualClock, Sent]:
    clock, sent = VirtualClock(), Sent()
    cfg = DeviceConfig(**config)  # type: ignore[arg-type]
    firmware = Firmware(cfg, DeviceMcpServer.with_defaults(), sent, clock=clock, sleep=clock.sleep)
    firmware.channel_opening(protocol_version=1)
    return firmware, clock, sent


HELLO = json.dumps({"type": "hello", "transport": "websocket", "session_id": "s-1",
                    "audio_params": {"format": "opus", "sample_rate": 24000, "frame_duration": 60}})


@pytest.fixture(scope="module")
def opus_60ms() -> bytes:
    return UplinkEncoder(60, dtx=False).encode_all(silence(60))[0]


async def test_hello_sets_the_session() -> None:
    fw, _, _ = make()
    await fw.on_frame(HELLO)
    assert fw.session_id == "s-1" and fw.server_hello is not None
    assert fw.hello_arrived is not None and fw.hello_arrived.is_set()
    assert fw.violations == [] and fw.message({"type": "abort"}) == '{"session_id":"s-1","type":"abort"}'


async def test_a_hello_without_transport_is_a_violation() -> None:
    fw, _, _ = make()
    await fw.on_frame(json.dumps({"type": "hello"}))
    assert fw.server_hello is None and "transport" in fw.violations[0]


async def test_audio_counts_only_while_speaking(opus_60ms: bytes) -> None:
    fw, clock, _ = make()
    await fw.on_frame(HELLO)
    fw.audio.listening("auto")
    await fw.on_frame(pack(1, opus_60ms))
    assert fw.dropped_not_speaking == 1 and fw.events[-1].drop_reason == "not_speaking"
    await fw.on_frame(json.dumps({"type": "tts", "state": "start"}))
    assert fw.audio.state == "speaking" and not fw.audio.mic_on  # auto mode: the mic stops
    for _ in range(3):
        await fw.on_frame(pack(1, opus_60ms))
    accepted = [e for e in fw.events if e.accepted]
    assert len(accepted) == 3 and all(len(e.pcm or b"") == 24000 * 60 // 1000 * 2 for e in accepted)
    # Arriving at once, they queue up: played back to back from the first arrival on.
    assert fw.audio.playback.drained_at() == pytest.approx(clock.now + 0.18)


async def test_a_device_that_only_times_replies_plays_them_without_decoding(opus_60ms: bytes) -> None:
    fw, clock, _ = make(decode_replies=False)
    await fw.on_frame(HELLO)
    fw.audio.listening("auto")
    await fw.on_frame(json.dumps({"type": "tts", "state": "start"}))
    for _ in range(3):
        await fw.on_frame(pack(1, opus_60ms))
    accepted = [e for e in fw.events if e.accepted]
    # Same playback model and timing (what the load ramp measures), no PCM.
    assert len(accepted) == 3 and all(e.pcm is None and e.duration_ms == 60 for e in accepted)
    assert fw.audio.playback.drained_at() == pytest.approx(clock.now + 0.18)


async def test_state_changes_wait_for_the_main_loop() -> None:
    fw, clock, _ = make(state_change_delay_ms=50)
    fw.audio.listening("manual")
    await fw.on_frame(json.dumps({"type": "tts", "state": "start"}))
    assert fw.audio.state == "listening"  # not yet: the firmware applies it on its main loop
    clock.now += 0.05
    assert fw.audio.state == "speaking"
    await fw.on_frame(json.dumps({"type": "tts", "state": "stop"}))
    clock.now += 0.05
    assert fw.audio.state == "idle" and not fw.audio.mic_on  # manual mode goes idle


async def test_auto_mode_listens_again_once_playback_drained(opus_60ms: bytes) -> None:
    fw, clock, sent = make()
    await fw.on_frame(HELLO)
    fw.audio.listening("auto")
    fw.audio.take_new_mic_stream()
    await fw.on_frame(json.dumps({"type": "tts", "state": "start"}))
    for _ in range(5):
        await fw.on_frame(pack(1, opus_60ms))
    drained = fw.audio.playback.drained_at()
    await fw.on_frame(json.dumps({"type": "tts", "state": "stop"}))
    assert fw.audio.state == "listening" and not fw.audio.mic_on
    await fw.audio.wait_relisten()
    assert drained is not None and clock.now == pytest.approx(drained)  # not before the reply was heard
    assert [json.loads(t) for t in sent] == [{"session_id": "s-1", "type": "listen", "state": "start",
                                             "mode": "auto"}]
    assert fw.audio.mic_on and fw.audio.take_new_mic_stream() and not fw.audio.take_new_mic_stream()


async def test_mcp_request_is_answered_through_send_text() -> None:
    fw, _, sent = make()
    await fw.on_frame(HELLO)
    await fw.on_frame(json.dumps({"type": "mcp", "payload": {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}}))
    reply = json.loads(sent[-1])
    assert reply["type"] == "mcp" and reply["session_id"] == "s-1" and reply["payload"]["id"] == 1
    assert reply["payload"]["result"]["tools"]


async def test_a_closed_channel_goes_idle_and_wakes_the_hello_wait() -> None:
    fw, _, _ = make()
    fw.audio.listening("realtime")
    fw.channel_closed(1000, "bye")
    assert fw.audio.state == "idle" and fw.events[-1].kind == "close"
    assert fw.hello_arrived is not None and fw.hello_arrived.is_set()
    await asyncio.sleep(0)
