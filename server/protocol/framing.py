"""Binary audio framing, versions 1, 2 and 3, exactly as the firmware builds and parses them.

v1: the WebSocket binary message is one raw Opus packet.
v2: 16-byte header, big-endian: u16 version(=2), u16 type (0 opus, 1 json), u32 reserved,
    u32 timestamp (ms, for server-side AEC), u32 payload_size; then the payload.
v3: 4-byte header: u8 type (0 opus), u8 reserved, u16 payload_size (big-endian); then the payload.

The firmware trusts `payload_size` without bounds checks, so we always write it exactly, and we
reject frames whose declared size disagrees with what arrived rather than guessing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from server.protocol.errors import FramingError

SUPPORTED_VERSIONS = (1, 2, 3)
PAYLOAD_OPUS = 0
PAYLOAD_JSON = 1

_V2 = struct.Struct(">HHIII")
_V3 = struct.Struct(">BBH")
V2_HEADER_SIZE = _V2.size  # 16
V3_HEADER_SIZE = _V3.size  # 4


@dataclass(slots=True, frozen=True)
class BinaryFrame:
    payload: bytes
    timestamp: int = 0
    payload_type: int = PAYLOAD_OPUS


def negotiate_version(header_value: str | int | None, hello_version: int | None = None) -> int:
    """Pick the framing version: the hello's `version` wins over the header (the firmware sends
    the same value in both); anything unknown falls back to 1, which every client speaks."""
    for candidate in (hello_version, header_value):
        if candidate is None:
            continue
        try:
            value = int(str(candidate).strip())
        except ValueError:
            continue
        if value in SUPPORTED_VERSIONS:
            return value
    return 1


def pack(version: int, payload: bytes, timestamp: int = 0, payload_type: int = PAYLOAD_OPUS) -> bytes:
    if version == 1:
        return bytes(payload)
    if version == 2:
        return _V2.pack(2, payload_type, 0, timestamp & 0xFFFFFFFF, len(payload)) + payload
    if version == 3:
        if len(payload) > 0xFFFF:
            raise FramingError(f"v3 payload of {len(payload)} bytes exceeds 65535")
        return _V3.pack(payload_type, 0, len(payload)) + payload
    raise FramingError(f"unsupported framing version {version}")


def unpack(version: int, data: bytes) -> BinaryFrame:
    if version == 1:
        return BinaryFrame(bytes(data))
    if version == 2:
        if len(data) < V2_HEADER_SIZE:
            raise FramingError(f"v2 frame of {len(data)} bytes is shorter than its 16-byte header")
        _ver, ptype, _reserved, timestamp, size = _V2.unpack_from(data)
        if size != len(data) - V2_HEADER_SIZE:
            raise FramingError(f"v2 header says {size} payload bytes, frame carries {len(data) - V2_HEADER_SIZE}")
        return BinaryFrame(bytes(data[V2_HEADER_SIZE:]), timestamp, ptype)
    if version == 3:
        if len(data) < V3_HEADER_SIZE:
            raise FramingError(f"v3 frame of {len(data)} bytes is shorter than its 4-byte header")
        ptype, _reserved, size = _V3.unpack_from(data)
        if size != len(data) - V3_HEADER_SIZE:
            raise FramingError(f"v3 header says {size} payload bytes, frame carries {len(data) - V3_HEADER_SIZE}")
        return BinaryFrame(bytes(data[V3_HEADER_SIZE:]), 0, ptype)
    raise FramingError(f"unsupported framing version {version}")


def audio_payload(version: int, data: bytes) -> bytes | None:
    """The Opus payload of an audio frame; None for a JSON one (v2/v3). The hot path of every
    microphone frame, so no BinaryFrame for v1; raises FramingError like `unpack`."""
    if version == 1:
        return data
    frame = unpack(version, data)
    return None if frame.payload_type == PAYLOAD_JSON else frame.payload
