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
    # Decode each reply frame the device plays (its PCM lands in TurnResult.reply_pcm). A load
    # test that only times frames turns it off: with 80 devices the tester's own Opus decoding
    # was a third of its event loop, and its lag read as the server's jitter.
    decode_replies: bool = True
    tools: Sequence[McpTool] | None = None  # replaces the default MCP tools
    extra_tools: Sequence[McpTool] = ()  # appended after the default tools
    volume: int = 70
    # Clients other than the firmware (third-party clients written for the reference server).
    # The firmware plays every queued frame even after `tts stop`; the reference server's
    # browser page and py-xiaozhi (auto mode) clear their playback buffer on `tts stop`, and both
    # play later than on arrival (Firmware._clear_unplayed; docs/tts-stop-grace.md).
    clear_on_stop: bool = False
    playback_delay_ms: float = 0.0  # audio plays this long after the firmware model says
    hold_back_ms: float = 0.0  # the end of a reply shorter than this waits for more audio
    # Source address of the device's connections (e.g. 127.0.0.7: another "host" on the
    # loopback network, for per-address limits); empty: the OS picks.
    local_address: str = ""
    # A board with an eFuse serial number (Activation-Version 2) signs the activation challenge
    # with the eFuse HMAC key (hex here; the firmware's key is the raw bytes). py-xiaozhi signs
    # with its efuse.json `hmac_key` text instead; empty: the simulator's derived key for it.
    efuse_hmac_key: str = ""
    serial_number: str = ""
