"""The runtime every conversation shares: config, loaded providers, voice, memory, metrics.

Built once at startup (`build_services`); sessions and conversations only hold a reference.
Nothing in here keeps per-device state.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp

from server.audio.voice import OpusVoice
from server.config.schema import AppConfig
from server.conversation.metrics import MetricsLog
from server.memory.manager import MemoryManager
from server.pipeline.dialogue import Dialogue, system_prompt, time_context
from server.providers.base import (
    ASRProvider,
    LLMProvider,
    LLMRequest,
    Loadable,
    ProviderContext,
    ProviderUnavailable,
    TTSProvider,
    VADProvider,
)
from server.providers.fallback import CHAINS
from server.providers.registry import build_provider
from server.tools.base import ToolSource

if TYPE_CHECKING:
    from server.session.device import DeviceInfo

log = logging.getLogger("server.runtime")


class VisionService(Protocol):
    """The camera endpoint the device's vision tool uploads to (server/transport/vision.py)."""

    async def close(self) -> None: ...


class DeviceTools(ToolSource, Protocol):
    """A device's own tools, fed by the device's messages (legacy IoT: descriptors, states)."""

    def on_message(self, payload: dict[str, Any]) -> None: ...


class McpDeviceTools(DeviceTools, Protocol):
    """The device's MCP server, reached over its session (server/devices/mcp_client.py)."""

    @property
    def ready(self) -> bool: ...

    async def wait_ready(self, timeout: float) -> bool: ...

    async def start(self) -> None: ...

    def close(self) -> None: ...


class DeviceToolsOwner(Protocol):
    """What a device tool factory reads from the session it builds tools for."""

    tag: str
    device: DeviceInfo

    async def send_mcp(self, payload: dict[str, Any]) -> None: ...

    async def send_iot_commands(self, commands: list[dict[str, Any]]) -> None: ...


def _codec_threads() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores))


@dataclass(slots=True, frozen=True)
class ListeningPorts:
    """Where the server really listens. Port 0 in the config asks the OS for a free port; the OTA
    answer and the vision URL must name the bound one, and the config itself is never changed."""

    websocket: int
    http: int


@dataclass
class Services:
    """The runtime: typed providers, the reply voice, memory, tool sources, metrics."""

    config: AppConfig
    root_dir: Path
    vad: VADProvider
    asr: ASRProvider
    llm: LLMProvider
    tts: TTSProvider
    metrics: MetricsLog = field(default_factory=MetricsLog)
    # Opus encoding and resampling of replies: small CPU jobs kept off the event loop, on a
    # thread per core (libopus runs without the GIL; one thread was the limit at ~40 talking
    # devices: every reply's frames queued behind the others').
    codec_pool: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(max_workers=_codec_threads(),
                                                                      thread_name_prefix="codec"))
    # Live sessions (anything with `async close(reason)`), for /health and shutdown.
    sessions: set[Any] = field(default_factory=set)
    memory: MemoryManager | None = None
    # Process-wide tool sources (plugins, external MCP servers); sessions add their device's own.
    tool_sources: list[ToolSource] = field(default_factory=list)
    # Builders of per-session device tool sources (device MCP, legacy IoT), set at startup.
    device_tools_factory: Callable[[DeviceToolsOwner], McpDeviceTools] | None = None
    iot_tools_factory: Callable[[DeviceToolsOwner], DeviceTools] | None = None
    vision: VisionService | None = None  # VisionHandler for /mcp/vision/explain
    state: Any = None  # StateBackend (server/state): memory store, leases, fleet bus
    fleet: Any = None  # FleetNode (server/fleet/node.py), set by app.py
    # The configured ports until the listeners are bound (app.running_server sets the real ones).
    ports: ListeningPorts = ListeningPorts(0, 0)
    _http: aiohttp.ClientSession | None = None
    _closers: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)
    _voice: OpusVoice | None = None

    def http(self) -> aiohttp.ClientSession:
        """One shared aiohttp session for plugins (connection reuse, one place to close)."""
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30), trust_env=True)
        return self._http

    @property
    def data_dir(self) -> Path:
        return self.root_dir / self.config.data_dir

    @property
    def voice(self) -> OpusVoice:
        """Our voice as xiaozhi downlink Opus (shared: its phrase cache serves every board)."""
        if self._voice is None:
            a = self.config.audio_out
            self._voice = OpusVoice(self.tts, self.codec_pool, sample_rate=a.sample_rate,
                                    frame_ms=a.frame_duration_ms, bitrate=a.bitrate, complexity=a.complexity)
        return self._voice

    async def close(self) -> None:
        if self.memory is not None:
            await self.memory.drain(timeout=10)
        for closer in reversed(self._closers):
            try:
                await closer()
            except Exception:  # noqa: BLE001 - shutting down anyway
                log.exception("closing %s", closer)
        if self._http is not None:
            await self._http.close()
        providers: tuple[Loadable, ...] = (self.vad, self.asr, self.llm, self.tts)
        for provider in providers:
            try:
                await provider.close()
            except Exception:  # noqa: BLE001 - shutting down anyway
                log.exception("closing %s", provider.name)
        self.codec_pool.shutdown(wait=False, cancel_futures=True)


async def build_services(config: AppConfig, root_dir: Path, auth: Any = None) -> Services:
    """Construct and load every configured provider, in parallel. Raises ProviderUnavailable with
    the provider's own advice when one cannot run."""
    ctx = ProviderContext(root_dir=root_dir, data_dir=root_dir / config.data_dir,
                          models_dir=root_dir / config.models_dir,
                          output_sample_rate=config.audio_out.sample_rate)
    def build(kind: str) -> Any:  # a provider or a FallbackChain of them
        settings = config.provider(kind)
        if isinstance(settings, list):
            chain = [build_provider(kind, s, ctx, name=f"{kind}.{s.type}") for s in settings]
            return CHAINS[kind](chain) if len(chain) > 1 else chain[0]
        return build_provider(kind, settings, ctx)

    providers = {kind: build(kind) for kind in ("vad", "asr", "llm", "tts")}
    providers["llm"].set_language(config.assistant.language)

    async def load(kind: str, provider: Loadable) -> None:
        t0 = time.monotonic()
        try:
            await provider.load()
        except ProviderUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - any load failure is reported the same way
            raise ProviderUnavailable(f"{provider.name}: failed to load: {exc}") from exc
        log.info("loaded %s in %.1f s", provider.name, time.monotonic() - t0)

    results = await asyncio.gather(*(load(k, p) for k, p in providers.items()), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for p in providers.values():
            await p.close()
        raise errors[0]
    services = Services(config=config, root_dir=root_dir, **providers,
                        ports=ListeningPorts(config.server.port, config.server.http_port))
    try:
        from server.state import open_state

        services.state = await open_state(config.state, services.data_dir, config.memory.db,
                                          max_exchanges_per_user=config.memory.max_exchanges_per_user)
        services._closers.append(services.state.close)
        services.memory = MemoryManager(config.memory, services.state.memory, services.llm,
                                        config.assistant.language)
        if config.plugins:
            from server.tools.plugins import PluginTools

            services.tool_sources.append(PluginTools.from_config(config.plugins))
        await _start_device_tools(services, auth)
        if config.mcp_servers:
            from server.tools.remote_mcp import ExternalMcpManager

            mcp = ExternalMcpManager(config.mcp_servers)
            services._closers.append(mcp.close)
            await mcp.start()
            services.tool_sources.append(mcp)
        await warm_up(services)
    except BaseException:
        await services.close()
        raise
    return services


async def _start_device_tools(services: Services, auth: Any) -> None:
    """Factories for the per-session device tool sources (device MCP, legacy IoT) and the vision
    endpoint the device's camera tool uploads to."""
    from server.devices import DeviceMcpClient, IotTools
    from server.transport.vision import VisionHandler

    config = services.config
    dcfg = config.device_tools
    vision = VisionHandler(config.vision, auth) if auth is not None else None
    services.vision = vision
    if vision is not None:
        services._closers.append(vision.close)

    def device_tools(session: DeviceToolsOwner) -> McpDeviceTools:
        url, token = ("", "")
        if vision is not None:
            url, token = vision.device_capability(session.device.device_id, session.device.client_id,
                                                  host_header=session.device.host,
                                                  http_port=services.ports.http,
                                                  generation=getattr(session.device, "auth_generation", None))
        return DeviceMcpClient.from_config(session.send_mcp, dcfg, vision_url=url, vision_token=token,
                                           tag=session.tag)

    services.device_tools_factory = device_tools if dcfg.mcp else None
    def iot_tools(session: DeviceToolsOwner) -> DeviceTools:
        return IotTools(session.send_iot_commands, tag=session.tag, max_things=dcfg.max_iot_things,
                        max_bytes=dcfg.max_iot_bytes)

    services.iot_tools_factory = iot_tools if dcfg.iot else None


def warm_up_tools(services: Services) -> list[dict[str, Any]]:
    """The process-wide tools (plugins, MCP servers), in the order every session's toolbox lists
    them before the device's own: a local model with tools in its prompt (llama.cpp chat
    templates put them right after the persona) then has that prefix evaluated and cached
    before the first user, whose first turn would otherwise evaluate ~700 more tokens."""
    if not services.llm.supports_tools or services.config.intent.mode != "function_call":
        return []
    from server.tools.base import ToolContext
    from server.tools.toolbox import Toolbox

    language = services.config.assistant.language
    toolbox = Toolbox(lambda: ToolContext("", "", "", language))  # listing only: no tool runs here
    for source in services.tool_sources:
        toolbox.add(source)
    try:
        return toolbox.openai_tools()
    except Exception:  # noqa: BLE001 - warm-up is best effort
        return []


async def warm_up(services: Services) -> None:
    """One tiny request through each local model: first calls are slow (allocations, kernel
    selection, prompt-prefix evaluation); better at startup than on the first user's turn."""
    cfg = services.config.assistant
    t0 = time.monotonic()
    try:
        if services.asr.local:
            await services.asr.transcribe(b"\x00\x00" * 8000)
        if services.llm.local:
            request = LLMRequest(messages=Dialogue().messages(system_prompt(cfg.prompt, cfg.name, cfg.language),
                                                              "Hi", context=time_context(cfg.language)),
                                 tools=warm_up_tools(services), max_tokens=1)
            async for _ in services.llm.stream(request):
                pass
        if services.tts.local:
            async for _ in services.tts.synthesize("Hello."):
                pass
    except Exception as exc:  # noqa: BLE001 - a failed warm-up is not fatal; real turns will tell
        log.warning("warm-up failed: %s", exc)
        return
    log.info("warmed up local models in %.1f s", time.monotonic() - t0)
