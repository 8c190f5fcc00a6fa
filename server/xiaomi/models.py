"""The per-model table (models.yaml) as typed profiles, with per-speaker overrides."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

TABLE = Path(__file__).with_name("models.yaml")


class ModelProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "unknown model"
    tts_action: tuple[int, int] = (5, 1)
    wake_action: tuple[int, int] = (5, 3)
    wake_args: tuple[str | int, ...] = ()
    mina_tts: bool = True
    play_status: bool = True
    playing_prop: tuple[int, int, int] | None = None
    play_api: Literal["play_url", "play_music"] = "play_url"
    speech_rate: float = Field(default=1.0, gt=0, le=100)
    supported: bool = True


class ModelOverrides(BaseModel):
    """The same keys, all optional: what config.yaml may change for one speaker."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    tts_action: tuple[int, int] | None = None
    wake_action: tuple[int, int] | None = None
    wake_args: tuple[str | int, ...] | None = None
    mina_tts: bool | None = None
    play_status: bool | None = None
    playing_prop: tuple[int, int, int] | None = None
    play_api: Literal["play_url", "play_music"] | None = None
    speech_rate: float | None = Field(default=None, gt=0, le=100)
    supported: bool | None = None


class ModelTable(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default: ModelProfile
    models: dict[str, ModelOverrides] = Field(default_factory=dict)

    def profile(self, hardware: str, overrides: ModelOverrides | None = None) -> tuple[ModelProfile, bool]:
        """The profile of `hardware` with `overrides` on top; the flag says whether the model is
        in the table (unknown models get the defaults, which fit most recent speakers)."""
        entry = self.models.get(hardware.upper())
        merged: dict[str, Any] = self.default.model_dump()
        for layer in (entry, overrides):
            if layer is not None:
                merged.update(layer.model_dump(exclude_unset=True))
        return ModelProfile.model_validate(merged), entry is not None


@functools.cache
def model_table() -> ModelTable:
    return ModelTable.model_validate(yaml.safe_load(TABLE.read_text(encoding="utf-8")))
