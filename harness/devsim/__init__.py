"""Simulated xiaozhi-esp32 device and test-speech generator, shared by the test suite and the
performance tester. Nothing here is imported by the server itself."""

from harness.devsim.codec import UplinkEncoder, opus_packet_duration_ms
from harness.devsim.device import (
    DeviceClosed,
    DeviceConfig,
    DeviceConnectError,
    DeviceState,
    HelloTimeout,
    ListenMode,
    SimDevice,
)
from harness.devsim.events import DeviceEvent, SentRecord, TurnResult
from harness.devsim.firmware import Firmware
from harness.devsim.identity import DeviceIdentity, OtaError
from harness.devsim.mcp_device import (
    DeviceMcpServer,
    DeviceStatus,
    McpProperty,
    McpRequest,
    McpTool,
    default_tools,
    filler_tools,
)
from harness.devsim.playback import MAX_DECODE_PACKETS_IN_QUEUE, PlaybackQueueModel
from harness.devsim.speech import (
    EspeakNotFound,
    SpeechSynthesisError,
    pad,
    silence,
    synthesize_speech,
)
from harness.devsim.state import AudioStateMachine

__all__ = [
    "MAX_DECODE_PACKETS_IN_QUEUE", "AudioStateMachine", "DeviceClosed", "DeviceConfig", "DeviceConnectError",
    "DeviceEvent", "DeviceIdentity", "DeviceMcpServer", "DeviceState", "DeviceStatus", "EspeakNotFound",
    "Firmware", "HelloTimeout", "ListenMode", "McpProperty", "McpRequest", "McpTool", "OtaError",
    "PlaybackQueueModel", "SentRecord", "SimDevice", "SpeechSynthesisError", "TurnResult", "UplinkEncoder",
    "default_tools", "filler_tools", "opus_packet_duration_ms", "pad", "silence", "synthesize_speech",
]
