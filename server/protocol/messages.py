"""Every xiaozhi JSON text message, both directions, as dataclasses.

The firmware (78/xiaozhi-esp32) is the contract: field names, value sets and which fields are
required follow what it parses and what it builds. `decode_message` turns a text frame into one
of these classes or raises `ProtocolError` with a reason a human can read; `encode_message` is
the exact inverse for every class. Nothing here does I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from server.protocol.errors import ProtocolError
from server.protocol.safe_json import loads_limited

LISTEN_STATES = ("start", "stop", "detect")
LISTEN_MODES = ("auto", "manual", "realtime")
TTS_STATES = ("start", "stop", "sentence_start")

# The emotion names the firmware's emoji sets know (unknown names fall back to neutral there).
EMOTIONS = (
    "neutral", "happy", "laughing", "funny", "sad", "angry", "crying", "loving", "embarrassed",
    "surprised", "shocked", "thinking", "winking", "cool", "relaxed", "delicious", "kissy",
    "confident", "sleepy", "silly", "confused",
)


@dataclass(slots=True)
class AudioParams:
    format: str = "opus"
    sample_rate: int = 16000
    channels: int = 1
    frame_duration: int = 60

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "frame_duration": self.frame_duration,
        }

    @classmethod
    def from_obj(cls, obj: Any, where: str) -> AudioParams:
        if not isinstance(obj, dict):
            raise ProtocolError(f"{where} must be an object")
        fmt = obj.get("format", "opus")
        rate = obj.get("sample_rate", 16000)
        channels = obj.get("channels", 1)
        duration = obj.get("frame_duration", 60)
        if not isinstance(fmt, str):
            raise ProtocolError(f"{where}.format must be a string")
        for name, value in (("sample_rate", rate), ("channels", channels), ("frame_duration", duration)):
            if not _is_int(value) or value <= 0:
                raise ProtocolError(f"{where}.{name} must be a positive integer")
        return cls(format=fmt, sample_rate=int(rate), channels=int(channels), frame_duration=int(duration))


def _is_int(value: Any) -> bool:
    # JSON numbers arrive as int or float; bool is an int subclass and never a valid number here.
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and value.is_integer()


def _opt_str(obj: dict[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"{where}.{key} must be a string")
    return value


def _req_str(obj: dict[str, Any], key: str, where: str) -> str:
    value = _opt_str(obj, key, where)
    if value is None:
        raise ProtocolError(f"{where}.{key} is required")
    return value


def _opt_obj(obj: dict[str, Any], key: str, where: str) -> dict[str, Any] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolError(f"{where}.{key} must be an object")
    return value


@dataclass(slots=True)
class Message:
    """Base of all text messages. `session_id` is optional on every message."""

    TYPE: ClassVar[str] = ""
    session_id: str | None = field(default=None, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.session_id is not None:
            out["session_id"] = self.session_id
        out["type"] = self.TYPE
        for f in fields(self):
            if f.name == "session_id":
                continue
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = value.to_dict() if isinstance(value, AudioParams) else value
        return out

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Message:  # pragma: no cover - overridden
        raise NotImplementedError


@dataclass(slots=True)
class Hello(Message):
    """Both directions. Device: version, features, audio_params (uplink). Server: transport,
    session_id, audio_params (downlink). The firmware dereferences `transport` unchecked, so the
    server side always sets it."""

    TYPE: ClassVar[str] = "hello"
    version: int | None = None
    transport: str | None = None
    features: dict[str, Any] | None = None
    audio_params: AudioParams | None = None
    text_font: dict[str, Any] | None = None
    udp: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Hello:
        version = obj.get("version")
        if version is not None and not _is_int(version):
            raise ProtocolError("hello.version must be an integer")
        features = _opt_obj(obj, "features", "hello")
        params = obj.get("audio_params")
        return cls(
            session_id=_opt_str(obj, "session_id", "hello"),
            version=int(version) if version is not None else None,
            transport=_opt_str(obj, "transport", "hello"),
            features=features,
            audio_params=AudioParams.from_obj(params, "hello.audio_params") if params is not None else None,
            text_font=_opt_obj(obj, "text_font", "hello"),
            udp=_opt_obj(obj, "udp", "hello"),
        )


@dataclass(slots=True)
class Listen(Message):
    TYPE: ClassVar[str] = "listen"
    state: str = "start"
    mode: str | None = None
    text: str | None = None

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Listen:
        state = _req_str(obj, "state", "listen")
        if state not in LISTEN_STATES:
            raise ProtocolError(f"listen.state must be one of {', '.join(LISTEN_STATES)}, got {state!r}")
        mode = _opt_str(obj, "mode", "listen")
        if mode is not None and mode not in LISTEN_MODES:
            raise ProtocolError(f"listen.mode must be one of {', '.join(LISTEN_MODES)}, got {mode!r}")
        return cls(session_id=_opt_str(obj, "session_id", "listen"), state=state, mode=mode,
                   text=_opt_str(obj, "text", "listen"))


@dataclass(slots=True)
class Abort(Message):
    TYPE: ClassVar[str] = "abort"
    reason: str | None = None

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Abort:
        return cls(session_id=_opt_str(obj, "session_id", "abort"), reason=_opt_str(obj, "reason", "abort"))


@dataclass(slots=True)
class Mcp(Message):
    """JSON-RPC 2.0 envelope, both directions."""

    TYPE: ClassVar[str] = "mcp"
    payload: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Mcp:
        payload = _opt_obj(obj, "payload", "mcp")
        if payload is None:
            raise ProtocolError("mcp.payload is required")
        return cls(session_id=_opt_str(obj, "session_id", "mcp"), payload=payload)


@dataclass(slots=True)
class Goodbye(Message):
    TYPE: ClassVar[str] = "goodbye"

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Goodbye:
        return cls(session_id=_opt_str(obj, "session_id", "goodbye"))


@dataclass(slots=True)
class Iot(Message):
    """Legacy (firmware <= 1.7) IoT: device sends descriptors/states, server sends commands."""

    TYPE: ClassVar[str] = "iot"
    update: bool | None = None
    descriptors: list[dict[str, Any]] | None = None
    states: list[dict[str, Any]] | None = None
    commands: list[dict[str, Any]] | None = None

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Iot:
        lists: dict[str, list[dict[str, Any]] | None] = {}
        for key in ("descriptors", "states", "commands"):
            value = obj.get(key)
            if value is not None and (not isinstance(value, list) or not all(isinstance(v, dict) for v in value)):
                raise ProtocolError(f"iot.{key} must be a list of objects")
            lists[key] = value
        update = obj.get("update")
        if update is not None and not isinstance(update, bool):
            raise ProtocolError("iot.update must be a boolean")
        return cls(session_id=_opt_str(obj, "session_id", "iot"), update=update, **lists)


@dataclass(slots=True)
class Ping(Message):
    """Application-level ping some simulators send; answered with Pong."""

    TYPE: ClassVar[str] = "ping"

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Ping:
        return cls(session_id=_opt_str(obj, "session_id", "ping"))


@dataclass(slots=True)
class Pong(Message):
    TYPE: ClassVar[str] = "pong"
    timestamp: int | None = None

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Pong:
        ts = obj.get("timestamp")
        return cls(session_id=_opt_str(obj, "session_id", "pong"), timestamp=int(ts) if _is_int(ts) else None)


@dataclass(slots=True)
class Stt(Message):
    TYPE: ClassVar[str] = "stt"
    text: str = ""

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Stt:
        return cls(session_id=_opt_str(obj, "session_id", "stt"), text=_req_str(obj, "text", "stt"))


@dataclass(slots=True)
class Llm(Message):
    TYPE: ClassVar[str] = "llm"
    emotion: str = "neutral"
    text: str | None = None

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Llm:
        return cls(session_id=_opt_str(obj, "session_id", "llm"), emotion=_req_str(obj, "emotion", "llm"),
                   text=_opt_str(obj, "text", "llm"))


@dataclass(slots=True)
class Tts(Message):
    TYPE: ClassVar[str] = "tts"
    state: str = "start"
    text: str | None = None

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Tts:
        state = _req_str(obj, "state", "tts")
        if state not in TTS_STATES:
            raise ProtocolError(f"tts.state must be one of {', '.join(TTS_STATES)}, got {state!r}")
        text = _opt_str(obj, "text", "tts")
        if state == "sentence_start" and text is None:
            raise ProtocolError("tts.text is required with sentence_start")
        return cls(session_id=_opt_str(obj, "session_id", "tts"), state=state, text=text)


@dataclass(slots=True)
class System(Message):
    TYPE: ClassVar[str] = "system"
    command: str = "reboot"

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> System:
        return cls(session_id=_opt_str(obj, "session_id", "system"), command=_req_str(obj, "command", "system"))


@dataclass(slots=True)
class Alert(Message):
    """The firmware ignores an alert unless all three fields are strings."""

    TYPE: ClassVar[str] = "alert"
    status: str = ""
    message: str = ""
    emotion: str = "neutral"

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Alert:
        return cls(session_id=_opt_str(obj, "session_id", "alert"), status=_req_str(obj, "status", "alert"),
                   message=_req_str(obj, "message", "alert"), emotion=_req_str(obj, "emotion", "alert"))


@dataclass(slots=True)
class Custom(Message):
    TYPE: ClassVar[str] = "custom"
    payload: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Custom:
        payload = _opt_obj(obj, "payload", "custom")
        if payload is None:
            raise ProtocolError("custom.payload is required")
        return cls(session_id=_opt_str(obj, "session_id", "custom"), payload=payload)


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (Hello, Listen, Abort, Mcp, Goodbye, Iot, Ping, Pong, Stt, Llm, Tts, System, Alert, Custom)
}


def decode_message(text: str | bytes) -> Message:
    """Parse one text frame. Raises ProtocolError naming what is wrong."""
    obj = loads_limited(text)
    if not isinstance(obj, dict):
        raise ProtocolError(f"expected a JSON object, got {type(obj).__name__}")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("missing string field 'type'")
    cls = MESSAGE_TYPES.get(kind)
    if cls is None:
        raise ProtocolError(f"unknown message type {kind!r}")
    return cls.from_dict(obj)


def encode_message(message: Message) -> str:
    # ensure_ascii=False keeps Chinese readable on the wire and in captures; the firmware's cJSON
    # handles UTF-8 either way.
    return json.dumps(message.to_dict(), ensure_ascii=False, separators=(",", ":"))
