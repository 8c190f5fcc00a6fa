"""Pure xiaozhi protocol: JSON messages and binary framing. Imports nothing else of ours."""

from server.protocol.errors import FramingError, ProtocolError
from server.protocol.framing import BinaryFrame, negotiate_version, pack, unpack
from server.protocol.messages import (
    EMOTIONS,
    MESSAGE_TYPES,
    Abort,
    Alert,
    AudioParams,
    Custom,
    Goodbye,
    Hello,
    Iot,
    Listen,
    Llm,
    Mcp,
    Message,
    Ping,
    Pong,
    Stt,
    System,
    Tts,
    decode_message,
    encode_message,
)

__all__ = [
    "EMOTIONS", "MESSAGE_TYPES", "Abort", "Alert", "AudioParams", "BinaryFrame", "Custom", "FramingError",
    "Goodbye", "Hello", "Iot", "Listen", "Llm", "Mcp", "Message", "Ping", "Pong", "ProtocolError", "Stt",
    "System", "Tts", "decode_message", "encode_message", "negotiate_version", "pack", "unpack",
]
