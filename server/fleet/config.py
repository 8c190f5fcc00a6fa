"""The `prometheus` config section (kept free of aiohttp so loading the config stays light)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, field_validator


class PrometheusConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # host:port of the private metrics listener (GET /metrics), e.g. 127.0.0.1:9100. Empty: off.
    listen: str = ""

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        v = v.strip()
        if v:
            parse_listen(v)
        return v


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be host:port, e.g. 127.0.0.1:9100")
    return host.strip("[]") or "0.0.0.0", int(port)
