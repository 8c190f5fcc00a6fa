"""The microphone-frame shortcut past websockets' parser (server/transport/fast_frames.py).

A real websockets client protocol writes the bytes (masked, as a device does); they reach a real
websockets server protocol in random chunks, exactly as CountedConnection.data_received hands
them over: whatever `take_frames` reads off the front while the parser stands between frames,
the rest to websockets. Every message must come out once, in order, whichever way it went.
"""

from __future__ import annotations

import random

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from server.transport.fast_frames import at_frame_boundary, size_limit, take_frames


def open_pair() -> tuple[ClientProtocol, ServerProtocol]:
    from websockets.uri import parse_uri

    client = ClientProtocol(parse_uri("ws://127.0.0.1/xiaozhi/v1/"))
    server = ServerProtocol(max_size=1 << 17)
    request = client.connect()
    client.send_request(request)
    server.receive_data(b"".join(client.data_to_send()))
    [req] = server.events_received()
    response = server.accept(req)
    server.send_response(response)
    client.receive_data(b"".join(server.data_to_send()))
    client.events_received()
    assert client.state is State.OPEN and server.state is State.OPEN
    return client, server


def messages(rng: random.Random) -> list[tuple[str, bytes]]:
    """Audio-sized binary frames mostly; text, JSON-in-binary, pings, fragmented messages and
    a few large binary frames in between."""
    out: list[tuple[str, bytes]] = []
    for i in range(300):
        kind = rng.choices(["audio", "json", "text", "ping", "fragmented", "big"], [30, 3, 3, 2, 2, 1])[0]
        if kind == "audio" and rng.random() < 0.2:
            # A payload that is itself a well-formed masked frame: read from the wrong offset
            # (mid-frame), it would pass for one.
            inner = Frame(Opcode.BINARY, rng.randbytes(rng.choice([3, 40]))).serialize(mask=True)
            out.append(("binary", inner))
        elif kind == "audio":
            out.append(("binary", rng.randbytes(rng.choice([1, 2, 3, 40, 125, 126, 200]))))
        elif kind == "json":
            out.append(("binary", b'{"type":"listen","n":%d}' % i))
        elif kind == "text":
            out.append(("text", b'{"type":"abort","n":%d}' % i))
        elif kind == "ping":
            out.append(("ping", b"p%d" % i))
        elif kind == "fragmented":
            out.append(("fragmented", rng.randbytes(300)))
        else:
            out.append(("binary", rng.randbytes(rng.choice([4000, 70000 - 1]))))  # 127-length header
    return out


def wire_bytes(client: ClientProtocol, msgs: list[tuple[str, bytes]]) -> list[bytes]:
    """The bytes of each message as the client writes it."""
    out = []
    for kind, data in msgs:
        if kind == "binary":
            client.send_binary(data)
        elif kind == "text":
            client.send_text(data)
        elif kind == "ping":
            client.send_ping(data)
        else:
            client.send_binary(data[:100], fin=False)
            client.send_continuation(data[100:], fin=True)
        out.append(b"".join(client.data_to_send()))
    return out


def chunks(rng: random.Random, writes: list[bytes]) -> list[bytes]:
    """How the socket may hand the bytes over: mostly a write or a few at a time (a device
    writes one frame per send), sometimes cut anywhere."""
    data = b"".join(writes)
    ends = [0]
    for w in writes:
        ends.append(ends[-1] + len(w))
    out, pos = [], 0
    while pos < len(data):
        if rng.random() < 0.7:
            nxt = next(e for e in ends if e > pos)
            later = [e for e in ends if e > nxt][:2]
            end = rng.choice([nxt, *later])
        else:
            end = pos + rng.choice([1, 2, 3, 6, 8, 50, 200, 1000])  # 6 and 8: a whole header
        out.append(data[pos:end])
        pos += len(out[-1])
    return out


def test_every_message_once_in_order_whatever_the_chunking() -> None:
    rng = random.Random(11)
    fast = 0  # frames the shortcut took
    for trial in range(30):
        client, server = open_pair()
        msgs = messages(rng)
        writes = wire_bytes(client, msgs)
        received: list[tuple[str, bytes]] = []
        taken: list[bytes] = []

        def take(payload: bytes, taken: list[bytes] = taken, received: list = received) -> bool:
            if payload[:1] == b"{":
                return False  # JSON in a binary frame: the receive loop's business
            received.append(("binary", bytes(payload)))
            taken.append(payload)
            return True

        partial: list[bytes] = []
        for chunk in chunks(rng, writes):
            if at_frame_boundary(server):
                used = take_frames(chunk, take, size_limit(server))
                chunk = chunk[used:]
                if not chunk:
                    continue
            server.receive_data(chunk)
            for event in server.events_received():
                assert isinstance(event, Frame)
                if event.opcode is Opcode.PING:
                    continue
                if event.opcode is Opcode.TEXT:
                    received.append(("text", bytes(event.data)))
                elif event.opcode is Opcode.BINARY and event.fin:
                    received.append(("binary", bytes(event.data)))
                else:
                    partial.append(bytes(event.data))
                    if event.fin:
                        received.append(("fragmented", b"".join(partial)))
                        partial.clear()
        assert server.parser_exc is None, trial
        assert received == [(k, d) for k, d in msgs if k != "ping"], trial
        fast += len(taken)
    assert fast > 30 * 100  # a good share of the audio (a cut chunk sends the rest to websockets)


def test_anything_unusual_is_left_to_websockets() -> None:
    taken: list[bytes] = []

    def take(payload: bytes) -> bool:
        taken.append(payload)
        return True

    mask = b"\x01\x02\x03\x04"
    # Unmasked (a protocol error websockets must see), RSV1 set, text, a 64-bit length, over max_size.
    for frame in (b"\x82\x03abc", b"\xc2\x83" + mask + b"abc", b"\x81\x83" + mask + b"abc",
                  b"\x82\xff" + b"\x00" * 8 + mask, b"\x82\xfe\x01\x00" + mask + b"\x00" * 256):
        assert take_frames(frame, take, 200) == 0
    # A frame cut short: nothing consumed until the whole of it is there.
    whole = Frame(Opcode.BINARY, b"hello").serialize(mask=True)
    assert take_frames(whole[:-1], take, None) == 0
    assert take_frames(whole + whole[:3], take, None) == len(whole) and taken == [b"hello"]


def test_boundary_only_between_frames() -> None:
    client, server = open_pair()
    assert at_frame_boundary(server)
    client.send_binary(b"x" * 300)
    data = b"".join(client.data_to_send())
    server.receive_data(data[:3])  # header read, payload pending
    assert not at_frame_boundary(server)
    server.receive_data(data[3:])
    assert at_frame_boundary(server)
    client.send_binary(b"y" * 10, fin=False)  # a fragmented message has begun
    server.receive_data(b"".join(client.data_to_send()))
    assert not at_frame_boundary(server)
