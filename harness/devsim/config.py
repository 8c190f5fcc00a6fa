"""How a simulated device is set up: which firmware it imitates and how it behaves."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from harness.devsim.identity import DeviceIdentity
from harness.devsim.mcp_device import McpTool
from harness.devsim.playback import MAX_DECODE_PACKETS_IN_QUEUE

HELLO_TIMEOUT_S = 10.0  # WebsocketProtocol::OpenAudioChannel waits 10 s for the server hello


@dataclass(slots=True)
class DeviceConfig:
    identity: DeviceIdentity = field(default_factory=DeviceIdentity)
    frame_duration: int = 60  # uplink Opus frame; py-xiaozhi on x86 uses 20
    py_xiaozhi: bool = False  # empty session_id, features {"mcp": true}, WS pings, decode at 24 kHz
    glyph_push_feature: bool = True  # v2.4.2 always sends features.glyph_push (false)
    aec_feature: bool = False  # features.aec (server-side AEC build)
    hello_timeout: float = HELLO_TIMEOUT_S
    auto_relisten: bool = True  # auto mode: send listen start again once playback drained
    state_change_delay_ms: float = 0.0  # the firmware applies tts start/stop on its main loop
    decode_queue_capacity: int = MAX_DECODE_PACKETS_IN_QUEUE
    tools: Sequence[McpTool] | None = None  # replaces the default MCP tools
    extra_tools: Sequence[McpTool] = ()  # appended after the default tools
    volume: int = 70
    # Source address of the device's connections (e.g. 127.0.0.7: another "host" on the
    # loopback network, for per-address limits); empty: the OS picks.
    local_address: str = ""
