"""Simulated xiaozhi-esp32 device and test-speech generator, shared by the test suite and the
performance tester. Nothing here is imported by the server itself."""

from server.devsim.codec import UplinkEncoder, opus_packet_duration_ms
from server.devsim.device import (
    DeviceClosed,
    DeviceConfig,
    DeviceConnectError,
    DeviceState,
    HelloTimeout,
    ListenMode,
    SimDevice,
)
from server.devsim.events import DeviceEvent, SentRecord, TurnResult
from server.devsim.identity import DeviceIdentity, OtaError
from server.devsim.mcp_device import (
    DeviceMcpServer,
    DeviceStatus,
    McpProperty,
    McpRequest,
    McpTool,
    default_tools,
    filler_tools,
)
from server.devsim.playback import MAX_DECODE_PACKETS_IN_QUEUE, PlaybackQueueModel
from server.devsim.speech import (
    EspeakNotFound,
    SpeechSynthesisError,
    pad,
    silence,
    synthesize_speech,
)

__all__ = [
    "MAX_DECODE_PACKETS_IN_QUEUE", "DeviceClosed", "DeviceConfig", "DeviceConnectError", "DeviceEvent",
    "DeviceIdentity", "DeviceMcpServer", "DeviceState", "DeviceStatus", "EspeakNotFound", "HelloTimeout",
    "ListenMode", "McpProperty", "McpRequest", "McpTool", "OtaError", "PlaybackQueueModel", "SentRecord",
    "SimDevice", "SpeechSynthesisError", "TurnResult", "UplinkEncoder", "default_tools", "filler_tools",
    "opus_packet_duration_ms", "pad", "silence", "synthesize_speech",
]
