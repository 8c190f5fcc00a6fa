"""Several real server processes sharing one PostgreSQL behind a real HAProxy, on 127.0.0.1:
what docs/deployment.md describes, shrunk onto one machine for tests and benchmarks.

The servers use the fake OpenAI server (harness/fakes) for ASR, LLM and TTS so that a process
starts in seconds and the turns are scripted; everything between the device and those providers
is the production code (balancer, WebSocket server, sessions, PostgreSQL store, presence bus).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from harness.devsim.server_process import ServerProcess, start_server
from harness.fakes.openai_server import FakeOpenAIServer
from harness.fleet.engines import Backend, HAProxy, free_port, haproxy, in_thread

NODE_NAMES = "abcdefgh"


def fake_providers(fake: FakeOpenAIServer) -> dict[str, Any]:
    common = {"base_url": fake.base_url, "api_key": "fleet-key"}
    return {
        "asr": {"type": "openai", **common, "model": "fake-asr", "timeout_s": 10, "retries": 0},
        "llm": {"type": "openai", **common, "model": "fake-model", "timeout_s": 10, "first_token_timeout_s": 10,
                "retries": 0},
        "tts": {"type": "openai", **common, "model": "fake-tts", "voice": "alloy", "response_format": "pcm",
                "timeout_s": 10},
    }


@dataclass
class Fleet:
    servers: list[ServerProcess]
    balancer: HAProxy
    state_url: str
    secret: str
    prometheus_ports: list[int]
    names: list[str] = field(default_factory=list)

    def server(self, name: str) -> ServerProcess:
        return self.servers[self.names.index(name)]

    def prometheus_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.prometheus_ports[self.names.index(name)]}/metrics"


@contextlib.asynccontextmanager
async def fleet(state_url: str, fake: FakeOpenAIServer | None, *, nodes: int = 2, redis_url: str = "",
                overrides: dict[str, Any] | None = None, echo: bool = False) -> AsyncIterator[Fleet]:
    """`nodes` server processes on `state_url` behind HAProxy; the OTA answer names the balancer.
    With `fake`, ASR, LLM and TTS are the fake OpenAI server; otherwise `overrides` decide."""
    secret = secrets.token_urlsafe(24)
    ws_port, http_port = free_port(), free_port()
    prom_ports = [free_port() for _ in range(nodes)]
    names = list(NODE_NAMES[:nodes])
    async with contextlib.AsyncExitStack() as stack:
        servers: list[ServerProcess] = []
        for i in range(nodes):
            config: dict[str, Any] = {
                "server": {"websocket_url": f"ws://127.0.0.1:{ws_port}/xiaozhi/v1/",
                           # Pairing off: these devices get tokens from the OTA answer at once
                           # (a test that pairs turns it on through `overrides`).
                           "auth": {"enabled": True, "secret": secret, "pairing": {"enabled": False}},
                           # The balancer forwards the client address (option forwardfor)...
                           "trusted_proxies": ["127.0.0.1"],
                           # ...but every simulated device is 127.0.0.1 too: no per-address caps.
                           "limits": {"ota_per_minute": 0, "activate_per_minute": 0,
                                      "max_connections_per_address": 0}},
                "state": {"url": state_url, "redis_url": redis_url, "lease_ttl_s": 3},
                "prometheus": {"listen": f"127.0.0.1:{prom_ports[i]}"},
            }
            if fake is not None:
                config.update(fake_providers(fake))
                config["memory"] = {"mode": "history", "history_turns": 6}
            _merge(config, overrides or {})
            servers.append(await stack.enter_async_context(start_server(config, echo=echo)))
        backends = [Backend(n, s.ws_port, s.http_port) for n, s in zip(names, servers, strict=True)]
        balancer = await stack.enter_async_context(in_thread(haproxy(backends, ws_port, http_port)))
        yield Fleet(servers, balancer, state_url, secret, prom_ports, names)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
