"""Every message class and every framing version round-trips on bytes alone; bad input gives a
ProtocolError/FramingError naming the problem."""

from __future__ import annotations

import json
import struct

import pytest

from server.protocol import (
    MESSAGE_TYPES,
    Abort,
    Alert,
    AudioParams,
    Custom,
    FramingError,
    Goodbye,
    Hello,
    Iot,
    Listen,
    Llm,
    Mcp,
    Ping,
    Pong,
    ProtocolError,
    Stt,
    System,
    Tts,
    decode_message,
    encode_message,
    negotiate_version,
    pack,
    unpack,
)

FIRMWARE_HELLO = ('{"type":"hello","version":1,"features":{"mcp":true,"glyph_push":false},"transport":"websocket",'
                  '"audio_params":{"format":"opus","sample_rate":16000,"channels":1,"frame_duration":60}}')

EXAMPLES = [
    Hello(version=3, transport="websocket", features={"mcp": True, "aec": True},
          audio_params=AudioParams(sample_rate=16000, frame_duration=60)),
    Hello(transport="websocket", session_id="s-1", audio_params=AudioParams(sample_rate=24000)),
    Listen(state="start", mode="auto", session_id="s"),
    Listen(state="start", mode="manual"),
    Listen(state="start", mode="realtime"),
    Listen(state="stop"),
    Listen(state="detect", text="你好小智"),
    Abort(),
    Abort(reason="wake_word_detected", session_id="x"),
    Mcp(payload={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"cursor": ""}}),
    Goodbye(session_id="abc"),
    Iot(update=True, descriptors=[{"name": "Speaker", "methods": {}}]),
    Iot(commands=[{"name": "Speaker", "method": "SetVolume", "parameters": {"volume": 50}}]),
    Ping(),
    Pong(timestamp=1700000000000),
    Stt(text="今天天气怎么样"),
    Llm(emotion="happy", text="🙂"),
    Tts(state="start"),
    Tts(state="sentence_start", text="It is sunny."),
    Tts(state="stop"),
    System(command="reboot"),
    Alert(status="Warning", message="Battery low", emotion="sad"),
    Custom(payload={"message": "anything"}),
]


def test_every_message_type_has_an_example() -> None:
    assert {type(m).TYPE for m in EXAMPLES} == set(MESSAGE_TYPES)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: f"{m.TYPE}")
def test_round_trip(message) -> None:
    text = encode_message(message)
    again = decode_message(text)
    assert again == message
    assert encode_message(again) == text
    assert json.loads(text)["type"] == message.TYPE


def test_firmware_hello_parses_exactly() -> None:
    hello = decode_message(FIRMWARE_HELLO)
    assert isinstance(hello, Hello)
    assert hello.version == 1 and hello.transport == "websocket"
    assert hello.features == {"mcp": True, "glyph_push": False}
    assert hello.audio_params == AudioParams("opus", 16000, 1, 60)


def test_server_hello_always_carries_transport_and_session() -> None:
    obj = json.loads(encode_message(Hello(transport="websocket", session_id="s", audio_params=AudioParams(
        sample_rate=24000, frame_duration=60))))
    assert obj["transport"] == "websocket" and obj["session_id"] == "s"
    assert obj["audio_params"] == {"format": "opus", "sample_rate": 24000, "channels": 1, "frame_duration": 60}


def test_chinese_text_is_not_escaped() -> None:
    assert "今天" in encode_message(Stt(text="今天"))


@pytest.mark.parametrize("text,fragment", [
    ("not json", "not JSON"),
    ("[1,2]", "JSON object"),
    ("42", "JSON object"),
    ('{"state":"start"}', "type"),
    ('{"type":5}', "type"),
    ('{"type":"teleport"}', "unknown message type"),
    ('{"type":"listen","state":"dance"}', "listen.state"),
    ('{"type":"listen","state":"start","mode":"turbo"}', "listen.mode"),
    ('{"type":"listen","state":7}', "listen.state"),
    ('{"type":"listen"}', "listen.state is required"),
    ('{"type":"hello","version":"one"}', "hello.version"),
    ('{"type":"hello","audio_params":{"sample_rate":"fast"}}', "sample_rate"),
    ('{"type":"hello","audio_params":[]}', "audio_params"),
    ('{"type":"hello","features":true}', "hello.features"),
    ('{"type":"mcp"}', "mcp.payload"),
    ('{"type":"mcp","payload":"x"}', "mcp.payload"),
    ('{"type":"tts","state":"sentence_start"}', "tts.text"),
    ('{"type":"alert","status":"a","message":1,"emotion":"x"}', "alert.message"),
    ('{"type":"iot","descriptors":{}}', "iot.descriptors"),
    ('{"type":"abort","reason":3}', "abort.reason"),
    ('{"type":"listen","state":"start","session_id":9}', "session_id"),
])
def test_bad_text_is_rejected_with_a_reason(text: str, fragment: str) -> None:
    with pytest.raises(ProtocolError) as err:
        decode_message(text)
    assert fragment in str(err.value)


def test_bool_is_not_a_number() -> None:
    with pytest.raises(ProtocolError):
        decode_message('{"type":"hello","version":true}')


OPUS = bytes(range(120))


def test_v1_is_raw() -> None:
    assert pack(1, OPUS) == OPUS
    assert unpack(1, OPUS).payload == OPUS


def test_v2_bytes_match_the_firmware_struct() -> None:
    data = pack(2, OPUS, timestamp=0x1234)
    assert data[:16] == bytes.fromhex("00020000000000000000123400000078")
    frame = unpack(2, data)
    assert frame.payload == OPUS and frame.timestamp == 0x1234 and frame.payload_type == 0


def test_v3_bytes_match_the_firmware_struct() -> None:
    data = pack(3, OPUS)
    assert data[:4] == bytes.fromhex("00000078")
    assert unpack(3, data).payload == OPUS


@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("size", [0, 1, 3, 500, 4000])
def test_framing_round_trip(version: int, size: int) -> None:
    payload = bytes((i * 7) & 0xFF for i in range(size))
    assert unpack(version, pack(version, payload, timestamp=99)).payload == payload


@pytest.mark.parametrize("version,data,fragment", [
    (2, b"\x00\x02\x00\x00", "shorter than its 16-byte header"),
    (2, struct.pack(">HHIII", 2, 0, 0, 0, 10) + b"abc", "says 10 payload bytes, frame carries 3"),
    (2, struct.pack(">HHIII", 2, 0, 0, 0, 1) + b"abc", "says 1 payload bytes"),
    (3, b"\x00", "shorter than its 4-byte header"),
    (3, struct.pack(">BBH", 0, 0, 50) + b"x" * 10, "says 50 payload bytes, frame carries 10"),
    (7, b"abc", "unsupported"),
])
def test_bad_frames_are_rejected(version: int, data: bytes, fragment: str) -> None:
    with pytest.raises(FramingError) as err:
        unpack(version, data)
    assert fragment in str(err.value)


def test_v3_cannot_carry_more_than_64k() -> None:
    with pytest.raises(FramingError):
        pack(3, b"x" * 70000)


@pytest.mark.parametrize("header,hello,expected", [
    ("1", None, 1), ("2", None, 2), ("3", None, 3), (None, 2, 2), ("3", 2, 2),
    ("9", None, 1), ("abc", None, 1), (None, None, 1), ("2", 7, 2),
])
def test_version_negotiation(header, hello, expected) -> None:
    assert negotiate_version(header, hello) == expected
