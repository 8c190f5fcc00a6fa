"""Microphone frames read straight off the socket, without websockets' general frame parser.

A listening device sends about 17 binary frames a second; with a thousand of them, parsing each
frame through websockets' generator-based parser was a third of the event loop's time. Most
chunks the socket hands us are exactly one small, complete, masked, unfragmented, uncompressed
binary frame, which takes a dozen byte operations to read. `take_frames` reads such frames off
the front of a chunk and hands each payload to `take`; everything else (text, control frames,
fragments, compressed frames, a frame cut across two chunks, anything odd) stops it, and the
rest of the chunk goes to websockets as usual.

It only runs when websockets' parser stands exactly between two frames with nothing buffered
(`at_frame_boundary`): then bytes we consume are bytes it never needed to see, and bytes we
leave start a frame for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from websockets.frames import apply_mask  # the C speed-up where websockets has one
from websockets.protocol import State
from websockets.streams import StreamReader

_AT_EOF = StreamReader.at_eof.__code__
_OPCODE_BINARY = 0x2


def at_frame_boundary(protocol: Any) -> bool:
    """True when websockets' receiving side is open, outside any fragmented message, has no
    bytes buffered and its parser waits for the first byte of a new frame."""
    # `current_size` (websockets 16+) / `cur_size` (15): set while a fragmented message is open.
    in_message = getattr(protocol, "current_size", getattr(protocol, "cur_size", 0))
    if protocol.state is not State.OPEN or in_message is not None or protocol.reader.buffer:
        return False
    # The parser is a generator delegating (`yield from`) to others: the innermost one it waits
    # in must be the reader's end-of-stream check at the top of the frame loop.
    waiting_in = protocol.parser
    for _ in range(4):
        inner = getattr(waiting_in, "gi_yieldfrom", None)
        if inner is None:
            break
        waiting_in = inner
    return getattr(waiting_in, "gi_code", None) is _AT_EOF


def size_limit(protocol: Any) -> int | None:
    """The largest frame websockets would accept on this connection (None: no limit)."""
    limits = [getattr(protocol, name, None) for name in ("max_message_size", "max_fragment_size", "max_size")]
    sizes = [limit for limit in limits if isinstance(limit, int)]
    return min(sizes) if sizes else None


def take_frames(data: bytes, take: Callable[[bytes], bool], max_size: int | None) -> int:
    """Read complete masked binary frames (no fragmentation, no RSV bits, payload under 64 KiB
    and within `max_size`) off the front of `data`; hand each payload to `take`, stopping at the
    first one it declines (which is left unread). Returns how many bytes were consumed."""
    pos = 0
    end = len(data)
    while end - pos >= 6:
        first, second = data[pos], data[pos + 1]
        if first != 0x80 | _OPCODE_BINARY or not second & 0x80:
            break  # not FIN+binary with no RSV bits, or unmasked (a protocol error for websockets)
        length = second & 0x7F
        head = pos + 2
        if length == 126:
            if end - head < 2:
                break
            length = (data[head] << 8) | data[head + 1]
            head += 2
        elif length == 127:
            break  # never an audio frame
        if max_size is not None and length > max_size:
            break  # websockets closes with 1009
        body = head + 4
        if body + length > end:
            break  # the rest arrives in a later chunk
        payload = apply_mask(data[body:body + length], data[head:body])
        if not take(payload):
            break
        pos = body + length
    return pos
