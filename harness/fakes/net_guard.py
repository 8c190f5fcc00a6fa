"""Keep tests off the internet: an aiohttp resolver that refuses every hostname (IP literals such
as 127.0.0.1 do not go through it), and no proxies from the developer's environment."""

from __future__ import annotations

from typing import Any

import pytest

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "WS_PROXY", "WSS_PROXY", "ALL_PROXY")


class NoDNS:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[dict[str, Any]]:
        raise OSError(f"test guard: DNS lookup of {host!r} refused (tests never use the internet)")

    async def close(self) -> None:
        pass


def block_internet(monkeypatch: pytest.MonkeyPatch) -> None:
    import aiohttp.connector

    monkeypatch.setattr(aiohttp.connector, "DefaultResolver", NoDNS)
    # edge-tts opens its session with trust_env=True: keep a developer's proxy out of the way.
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)
