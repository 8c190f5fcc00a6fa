"""The validated shape of config.yaml.

Every model forbids unknown keys: a typo in an override file stops the server with a line that
names the key, instead of being ignored the way the reference server ignores `tts_timeout`.
Provider sections (`vad`, `asr`, `llm`, `tts`) are validated in a second step against the chosen
provider's own Settings model (see loader.py), so each provider documents and checks its keys.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, field_validator

from server.devices.mcp_client import DeviceToolsConfig
from server.fleet.config import PrometheusConfig
from server.memory.manager import MemoryConfig
from server.pairing.config import PairingConfig
from server.providers.base import ProviderSettings
from server.state.config import StateConfig
from server.tools.remote_mcp.config import McpServerConfig
from server.xiaomi.config import XiaomiConfig


class Strict(BaseModel):
    # Frozen: a validated config is read, never patched (a copy with changes is a new model,
    # validated again, see loader.with_ports).
    model_config = ConfigDict(extra="forbid", frozen=True)


class AuthConfig(Strict):
    enabled: bool = False
    allowed_devices: list[str] = Field(default_factory=list)
    token_ttl_days: float = Field(default=30, gt=0)
    # Empty: a random secret is generated once and kept in <data_dir>/auth_secret, so tokens
    # survive restarts.
    secret: str = ""
    # With auth on, only devices the owner paired get tokens (codes shown on the device).
    pairing: PairingConfig = Field(default_factory=PairingConfig)

    @field_validator("allowed_devices")
    @classmethod
    def _lower(cls, v: list[str]) -> list[str]:
        return [d.strip().lower() for d in v if d.strip()]


class LimitsConfig(Strict):
    """Limits on the ways in (0 = no limit). Addresses are client addresses: the socket peer, or
    the forwarded address when the peer is one of `server.trusted_proxies`."""

    max_connections: int = Field(default=500, ge=0)
    max_connections_per_address: int = Field(default=20, ge=0)
    # Requests per client address per minute (the firmware calls OTA once per boot, and polls
    # activate every 3 s while it shows a pairing code).
    ota_per_minute: int = Field(default=30, ge=0)
    activate_per_minute: int = Field(default=60, ge=0)
    # Address tables (rate limits) forget the least recently seen addresses beyond this.
    max_tracked_addresses: int = Field(default=10000, ge=100)
    # Messages to one device waiting to be sent (it stopped reading); beyond this, or when one
    # send waits longer than send_timeout_s, the connection is closed.
    max_pending_sends: int = Field(default=64, ge=4)
    send_timeout_s: float = Field(default=30, gt=0)


class ServerConfig(Strict):
    host: str = "0.0.0.0"
    port: int = Field(default=8000, ge=0, le=65535)
    http_port: int = Field(default=8003, ge=0, le=65535)
    # The WebSocket URL the OTA endpoint hands to devices. Empty: derived from the Host header of
    # each OTA request (the address the device used to reach us) plus `port` and `ws_path`.
    websocket_url: str = ""
    ws_path: str = "/xiaozhi/v1/"
    # Binary framing the OTA endpoint asks devices to use (websocket.version): 1 raw Opus,
    # 2 with a 16-byte header (timestamps for server AEC), 3 with a 4-byte header.
    framing_version: Literal[1, 2, 3] = 1
    timezone_offset_minutes: int = Field(default=480, ge=-720, le=840)
    max_message_bytes: int = Field(default=128 * 1024, ge=4096)
    firmware_dir: str = "data/firmware"
    auth: AuthConfig = Field(default_factory=AuthConfig)
    # Browser origins (e.g. "http://192.168.1.10:8080") allowed to call the OTA endpoint (CORS)
    # and to open device WebSockets. Empty: none; requests without an Origin header (devices)
    # are not affected.
    allowed_origins: list[str] = Field(default_factory=list)
    # Addresses of reverse proxies in front of this server: their X-Forwarded-For names the
    # client, and /metrics is no longer open to loopback without a token.
    trusted_proxies: list[str] = Field(default_factory=list)
    # Bearer token for /metrics. Empty: only loopback clients, and only without trusted proxies.
    metrics_token: str = ""
    limits: LimitsConfig = Field(default_factory=LimitsConfig)

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        return [o.strip().rstrip("/").lower() for o in v if o.strip()]


class SessionConfig(Strict):
    hello_timeout_s: float = Field(default=10, gt=0)
    # No voice for this long: say a short goodbye and close (the firmware gives up at 120 s).
    idle_timeout_s: float = Field(default=120, gt=0)
    exit_phrases: list[str] = Field(default_factory=lambda: ["退出", "再见", "拜拜", "goodbye", "bye bye"])
    # Wake words recognised in `listen detect`, typed text and transcripts: one alone never becomes
    # a question. Includes the reference server's defaults, so its clients' wake texts (the
    # browser page sends 嘿，你好呀 after hello) are recognised.
    wake_words: list[str] = Field(default_factory=lambda: [
        "你好小智", "你好小志", "小爱同学", "你好小鑫", "嗨小智", "hi esp", "hey esp", "alexa", "jarvis",
        "hi lexin", "hey wanda", "hi joy",
        "嘿你好呀", "你好小新", "小美同学", "小龙小龙", "喵喵同学", "小滨小滨", "小冰小冰",
    ])
    # Spoken right after a wake word (pre-rendered once per process, so it costs no LLM time).
    # Empty: no reply; the firmware plays its own wake sound.
    wake_reply: str = ""
    max_utterance_s: float = Field(default=30, gt=1)
    # Inbound audio frames waiting for VAD/ASR; beyond this the oldest are dropped (a client
    # flooding faster than real time cannot grow our memory).
    uplink_queue_frames: int = Field(default=100, ge=10)
    # Typed chat (`listen detect` with text, py-xiaozhi and browser pages): longest text, and
    # turns per minute per session; beyond either the message is ignored (and logged).
    max_text_chars: int = Field(default=1000, ge=10)
    text_turns_per_minute: int = Field(default=20, ge=1)


class AudioOutConfig(Strict):
    sample_rate: Literal[8000, 12000, 16000, 24000, 48000] = 24000
    frame_duration_ms: Literal[20, 40, 60] = 60
    bitrate: int = Field(default=24000, ge=6000, le=128000)
    complexity: int = Field(default=5, ge=0, le=10)
    # Frames sent ahead of real time at the start of a reply (and kept ahead afterwards). The
    # firmware drops anything beyond 40 queued frames; a few are enough to ride out jitter.
    prebuffer_frames: int = Field(default=5, ge=1, le=20)
    # Each reply ends with this much silence before `tts stop` (0: stop right after the last
    # frame has played). The firmware plays what it queued even after the stop, but clients
    # written for the reference server (its browser page, py-xiaozhi in auto mode) clear their
    # playback buffer on `tts stop` and play later than on arrival; the page also holds back the
    # last < 240 ms until more audio comes. Measured choice: docs/tts-stop-grace.md.
    tts_stop_grace_ms: int = Field(default=420, ge=0, le=3000)


class AssistantConfig(Strict):
    language: Literal["en", "zh"] = "en"
    name: str = "Xiaozhi"
    prompt: str = (
        "You are {name}, a friendly voice assistant on a small speaker. Answer in one or two short "
        "spoken sentences, without lists, markdown or emoji."
    )
    max_history_turns: int = Field(default=8, ge=0, le=100)
    # Dialogue history sent to the LLM is cut (oldest first) to about this many tokens.
    history_token_budget: int = Field(default=1500, ge=0, le=100000)


class IntentConfig(Strict):
    # function_call: tools go into the one streaming LLM call (no extra hop; needs a model with
    #   tool calling, e.g. any OpenAI-compatible API model).
    # intent_llm: a separate small classification call picks a tool first (models without tool
    #   calling); nointent: no tools at all.
    mode: Literal["function_call", "intent_llm", "nointent"] = "function_call"
    max_tool_rounds: int = Field(default=3, ge=1, le=10)
    tool_timeout_s: float = Field(default=10, gt=0, le=300)
    # How long a turn waits for a freshly connected device to finish listing its MCP tools.
    device_tools_wait_s: float = Field(default=1.0, ge=0, le=10)


class LogConfig(Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Also write the log here (relative to data_dir); empty: console only.
    file: str = ""


class VisionConfig(Strict):
    """`vision:` section of config.yaml. The endpoint is enabled when `model` and `base_url` are set."""

    # An OpenAI-compatible chat completions API with image input, e.g. https://api.openai.com/v1
    # (gpt-4o-mini), https://dashscope.aliyuncs.com/compatible-mode/v1 (qwen-vl-plus),
    # https://open.bigmodel.cn/api/paas/v4 (glm-4v-flash), or a local Ollama/vLLM /v1.
    base_url: str = ""
    api_key: str = ""
    model: str = ""
    timeout_s: float = Field(default=20, gt=0, le=120)
    max_image_bytes: int = Field(default=5 * 1024 * 1024, ge=1024, le=50 * 1024 * 1024)
    max_tokens: int = Field(default=300, ge=16, le=4096)
    # System prompt sent with every photo: short spoken answers in the question's language.
    prompt: str = ("You see a photo taken by a small voice assistant's camera. Answer the question about it "
                   "briefly and concretely, in the language of the question, in plain text without markdown.")
    # The URL handed to devices in the MCP initialize. Empty: http://<host the device used to
    # reach us>:<server.http_port>/mcp/vision/explain.
    url: str = ""
    # Lifetime of the per-session vision token (a new one is minted at each connection).
    token_ttl_s: float = Field(default=24 * 3600, gt=60)
    # Uploads analysed at once; more wait (each is a paid, slow model call).
    max_concurrent: int = Field(default=4, ge=1, le=64)
    # Photos per device (per vision token) per minute; more get HTTP 429. An upload takes its
    # concurrency slot before its body is read, so waiting uploads hold no image in memory.
    requests_per_minute: int = Field(default=10, ge=1, le=600)
    # Longest time an upload may take to arrive.
    upload_timeout_s: float = Field(default=20, gt=0, le=300)

    @property
    def enabled(self) -> bool:
        return bool(self.model and self.base_url)


class AppConfig(Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    session: SessionConfig = Field(default_factory=SessionConfig)
    audio_out: AudioOutConfig = Field(default_factory=AudioOutConfig)
    assistant: AssistantConfig = Field(default_factory=AssistantConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    intent: IntentConfig = Field(default_factory=IntentConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    # plugin module name (a file in plugins/) -> its settings, with `enabled`.
    plugins: dict[str, dict[str, Any]] = Field(default_factory=dict)
    device_tools: DeviceToolsConfig = Field(default_factory=DeviceToolsConfig)
    vision: VisionConfig = Field(default_factory=VisionConfig)
    # External MCP servers by name (server.tools.remote_mcp.config; the loader validates them
    # with errors that name the server).
    mcp_servers: dict[str, McpServerConfig] = Field(default_factory=dict)
    # Where memory, leases and presence live: embedded SQLite (default) or a shared PostgreSQL.
    state: StateConfig = Field(default_factory=StateConfig)
    prometheus: PrometheusConfig = Field(default_factory=PrometheusConfig)
    # XiaoAi speakers through the Xiaomi cloud (server/xiaomi/).
    xiaomi: XiaomiConfig = Field(default_factory=XiaomiConfig)
    data_dir: str = "data"
    models_dir: str = "models"
    # Provider sections: in config.yaml a mapping with `type` plus that provider's own keys (or a
    # list of them, a fallback chain). The loader validates each against the chosen provider's
    # Settings model and builds AppConfig from those models (see loader.validate). None only in
    # a config built in code without providers (tests that bring their own).
    # SerializeAsAny: a dump (the benchmark records the config) keeps each provider's own keys,
    # not only the base class's `type`.
    vad: SerializeAsAny[ProviderSettings] | None = None
    asr: SerializeAsAny[ProviderSettings] | list[SerializeAsAny[ProviderSettings]] | None = None
    llm: SerializeAsAny[ProviderSettings] | list[SerializeAsAny[ProviderSettings]] | None = None
    tts: SerializeAsAny[ProviderSettings] | list[SerializeAsAny[ProviderSettings]] | None = None

    def provider(self, kind: str) -> ProviderSettings | list[ProviderSettings]:
        """The validated settings of a provider section, or a list of them (fallback chain)."""
        value: ProviderSettings | list[ProviderSettings] | None = getattr(self, kind)
        if value is None:
            raise ValueError(f"{kind}: no provider configured")
        return value


PROVIDER_KINDS = ("vad", "asr", "llm", "tts")
