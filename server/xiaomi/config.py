"""The `xiaomi:` section of config.yaml (documented there, key by key)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from server.xiaomi.models import ModelOverrides


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class XiaomiEndpoints(_Strict):
    account: str = "https://account.xiaomi.com"
    mina: str = "https://api2.mina.mi.com"
    userprofile: str = "https://userprofile.mina.mi.com"
    miot: str = "https://api.io.mi.com/app"


class SpeakerConfig(_Strict):
    # name, alias, MiNA deviceID, MIoT did or serial number of the speaker on this account
    match: str = Field(min_length=1)
    mode: Literal["keyword", "always"] = "keyword"
    keywords: list[str] = Field(default_factory=lambda: ["请", "你", "帮我"])
    continuous: bool = False
    # Continuous mode ends after this long without a new query, or on an exit phrase.
    followup_timeout_s: float = Field(default=20.0, gt=0, le=600)
    exit_phrases: list[str] = Field(default_factory=lambda: ["退出", "再见", "结束对话", "停止对话"])
    reply_via: Literal["speaker", "server_audio"] = "speaker"
    identity: str = ""
    # Per-speaker changes to the model table (server/xiaomi/models.yaml), e.g. {mina_tts: false}.
    model: ModelOverrides = Field(default_factory=ModelOverrides)

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, v: list[str]) -> list[str]:
        return [k.strip() for k in v if k.strip()]


class AccountConfig(_Strict):
    user_id: str = Field(pattern=r"^\d{3,20}$", description="the numeric Xiaomi ID (小米ID)")
    password: str = ""
    pass_token: str = ""
    speakers: list[SpeakerConfig] = Field(default_factory=list)

    @field_validator("user_id", mode="before")
    @classmethod
    def _as_text(cls, v: object) -> object:
        return str(v).strip() if isinstance(v, int | str) else v


class XiaomiConfig(_Strict):
    enabled: bool = False
    poll_interval_s: float = Field(default=1.0, ge=0.2, le=60)
    # Poll this fast for a while after a turn, when a follow-up is likely.
    fast_poll_interval_s: float = Field(default=0.5, ge=0.1, le=60)
    fast_poll_window_s: float = Field(default=30.0, ge=0, le=600)
    audio_base_url: str = ""
    # How long a served reply audio URL stays valid.
    audio_url_ttl_s: float = Field(default=300.0, ge=10, le=3600)
    endpoints: XiaomiEndpoints = Field(default_factory=XiaomiEndpoints)
    accounts: list[AccountConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> XiaomiConfig:
        seen: set[str] = set()
        for account in self.accounts:
            if account.user_id in seen:
                raise ValueError(f"account {account.user_id} is listed twice")
            seen.add(account.user_id)
        if self.enabled:
            needs_url = [s.match for a in self.accounts for s in a.speakers if s.reply_via == "server_audio"]
            if needs_url and not self.audio_base_url:
                raise ValueError(f"speakers {needs_url} use reply_via: server_audio; set xiaomi.audio_base_url "
                                 "to the address the speakers reach our HTTP port at, e.g. http://192.168.1.10:8003")
        return self
