"""The light listening devices of the idle benchmark (bench/listeners.py) speak the protocol the
server expects: frames a real WebSocket parser accepts, the firmware's handshake and hello, MCP
answered, microphone frames counted by the server, a clean close."""

from __future__ import annotations

import asyncio
import os

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from bench.idle import clip_packets
from bench.listeners import OP_BINARY, ListenerPacer, masked_frame, open_listener
from bench.server_metrics import get_json
from harness.devsim.server_process import ServerProcess

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 126, 300, 65535, 70000])
def test_masked_frames_parse_as_client_frames(size: int) -> None:
    payload = os.urandom(size)
    reader = StreamReader()
    reader.feed_data(masked_frame(OP_BINARY, payload))
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=True)
    with pytest.raises(StopIteration) as done:
        next(parser)
    frame = done.value.value
    assert frame.opcode is Opcode.BINARY and frame.fin and frame.data == payload


async def test_listeners_connect_answer_mcp_and_stream(server: ServerProcess) -> None:
    before = (await get_json(server.http_url + "/metrics"))["counters"].get("uplink_dtx_frames", 0)
    listeners = await asyncio.gather(*(open_listener(i, server.ws_url) for i in range(3)))
    try:
        assert len({lst.device_id for lst in listeners}) == 3
        assert all(lst.session_id for lst in listeners)
        pacer = ListenerPacer.for_packets(clip_packets("silence"))
        for lst in listeners:
            pacer.add(lst)
        await asyncio.sleep(1.5)
        await pacer.stop()
        # The server asks every device with the mcp feature for initialize and tools/list.
        assert all(lst.stats.mcp_answered >= 2 for lst in listeners), [lst.stats for lst in listeners]
        assert pacer.sent >= 3 * 20  # 1.5 s of 60 ms frames each, give or take a slot
        await asyncio.sleep(0.3)
        after = (await get_json(server.http_url + "/metrics"))["counters"].get("uplink_dtx_frames", 0)
        assert after - before >= pacer.sent * 0.8  # digital silence arrives as DTX frames
        assert not any(lst.closed for lst in listeners)
    finally:
        await asyncio.gather(*(lst.close() for lst in listeners))
    assert all(lst.closed for lst in listeners)
