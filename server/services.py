"""Process-wide things every session shares: config, loaded providers, caches, metrics.

Built once at startup (`build_services`); sessions only hold a reference. Nothing in here keeps
per-device state.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.audio.opus import OpusEncoder
from server.audio.pcm import StreamResampler
from server.config.schema import AppConfig
from server.memory.manager import MemoryManager
from server.pipeline.dialogue import Dialogue, system_prompt, time_context
from server.providers.base import LLMRequest, ProviderContext, ProviderUnavailable
from server.providers.fallback import CHAINS
from server.providers.registry import build_provider
from server.session.metrics import MetricsLog

log = logging.getLogger("server.services")

ENCODE_SLICE_MS = 240


@dataclass
class Services:
    config: AppConfig
    root_dir: Path
    vad: Any
    asr: Any
    llm: Any
    tts: Any
    metrics: MetricsLog = field(default_factory=MetricsLog)
    # Opus encoding and resampling of replies: small CPU jobs kept off the event loop.
    codec_pool: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="codec"))
    _phrases: dict[str, list[bytes]] = field(default_factory=dict)
    _phrase_locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    sessions: set[Any] = field(default_factory=set)
    memory: MemoryManager | None = None
    # Process-wide tool sources (plugins, external MCP servers); sessions add their device's own.
    tool_sources: list[Any] = field(default_factory=list)
    # Builders of per-session device tool sources (device MCP, legacy IoT), set at startup.
    device_tools_factory: Any = None
    iot_tools_factory: Any = None
    vision: Any = None  # VisionHandler for /mcp/vision/explain
    state: Any = None  # StateBackend (server/state): memory store, leases, fleet bus
    fleet: Any = None  # FleetNode (server/fleet/node.py), set by app.py
    _http: Any = None
    _closers: list[Any] = field(default_factory=list)

    def http(self) -> Any:
        """One shared aiohttp session for plugins (connection reuse, one place to close)."""
        if self._http is None:
            import aiohttp

            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30), trust_env=True)
        return self._http

    @property
    def data_dir(self) -> Path:
        return self.root_dir / self.config.data_dir

    def new_encoder(self) -> OpusEncoder:
        a = self.config.audio_out
        return OpusEncoder(sample_rate=a.sample_rate, frame_ms=a.frame_duration_ms, bitrate=a.bitrate,
                           complexity=a.complexity)

    async def speak(self, text: str, on_first_chunk: Any = None) -> AsyncIterator[bytes]:
        """Synthesize `text` and yield Opus packets at the downlink rate and frame length."""
        chunks = self.tts.synthesize(text)

        async def pcm() -> AsyncIterator[tuple[bytes, int]]:
            nonlocal on_first_chunk
            async for chunk in chunks:
                if on_first_chunk is not None:
                    on_first_chunk()
                    on_first_chunk = None
                yield chunk.pcm, chunk.sample_rate

        try:
            async for packet in self._encode(pcm()):
                yield packet
        finally:
            await chunks.aclose()

    async def encode_stream(self, chunks: AsyncIterator[bytes], sample_rate: int) -> AsyncIterator[bytes]:
        """PCM16 mono chunks at `sample_rate` (e.g. music from a tool) -> downlink Opus packets."""

        async def pcm() -> AsyncIterator[tuple[bytes, int]]:
            async for chunk in chunks:
                yield chunk, sample_rate

        async for packet in self._encode(pcm()):
            yield packet

    async def _encode(self, source: AsyncIterator[tuple[bytes, int]]) -> AsyncIterator[bytes]:
        """Resample and Opus-encode off the event loop, in slices so the first frame leaves as
        soon as its own slice is ready rather than after a whole sentence was encoded."""
        loop = asyncio.get_running_loop()
        encoder = self.new_encoder()
        resampler: StreamResampler | None = None
        out_rate = self.config.audio_out.sample_rate

        def encode(pcm: bytes, src_rate: int, last: bool) -> list[bytes]:
            nonlocal resampler
            if resampler is None:
                resampler = StreamResampler(src_rate, out_rate)
            packets = encoder.encode(resampler.process(pcm, last=last))
            if last:
                packets += encoder.flush()
            return packets

        rate = out_rate
        async for data, rate in source:
            step = rate * 2 * ENCODE_SLICE_MS // 1000
            for i in range(0, len(data), step):
                for packet in await loop.run_in_executor(self.codec_pool, encode, data[i:i + step], rate, False):
                    yield packet
        for packet in await loop.run_in_executor(self.codec_pool, encode, b"", rate, True):
            yield packet

    async def phrase_frames(self, text: str) -> list[bytes]:
        """Opus packets for a fixed phrase (goodbye, apology, wake reply), synthesized once."""
        if text in self._phrases:
            return self._phrases[text]
        lock = self._phrase_locks.setdefault(text, asyncio.Lock())
        async with lock:
            if text not in self._phrases:
                self._phrases[text] = [p async for p in self.speak(text)]
        return self._phrases[text]

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
        for provider in (self.vad, self.asr, self.llm, self.tts):
            try:
                await provider.close()
            except Exception:  # noqa: BLE001 - shutting down anyway
                log.exception("closing %s", getattr(provider, "name", provider))
        self.codec_pool.shutdown(wait=False, cancel_futures=True)


async def build_services(config: AppConfig, root_dir: Path, auth: Any = None) -> Services:
    """Construct and load every configured provider, in parallel. Raises ProviderUnavailable with
    the provider's own advice when one cannot run."""
    ctx = ProviderContext(root_dir=root_dir, data_dir=root_dir / config.data_dir,
                          models_dir=root_dir / config.models_dir,
                          output_sample_rate=config.audio_out.sample_rate)
    def build(kind: str) -> Any:
        settings = config.provider(kind)
        if isinstance(settings, list):
            chain = [build_provider(kind, s, ctx, name=f"{kind}.{s.type}") for s in settings]
            return CHAINS[kind](chain) if len(chain) > 1 else chain[0]
        return build_provider(kind, settings, ctx)

    providers = {kind: build(kind) for kind in ("vad", "asr", "llm", "tts")}
    for llm in getattr(providers["llm"], "providers", [providers["llm"]]):
        if hasattr(llm, "language"):
            llm.language = config.assistant.language

    async def load(kind: str, provider: Any) -> None:
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
    services = Services(config=config, root_dir=root_dir, **providers)
    try:
        from server.state import open_state

        services.state = await open_state(config.state, services.data_dir, config.memory.db)
        services._closers.append(services.state.close)
        services.memory = MemoryManager(config.memory, services.state.memory, services.llm,
                                        config.assistant.language)
        if config.plugins:
            from server.tools.plugins import PluginTools

            services.tool_sources.append(PluginTools.from_config(config.plugins))
        await _start_device_tools(services, auth)
        if config.mcp_servers:
            from server.mcp_ext import ExternalMcpManager

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

    def device_tools(session: Any) -> Any:
        url, token = ("", "")
        if vision is not None:
            url, token = vision.device_capability(session.device.device_id, session.device.client_id,
                                                  host_header=session.device.host,
                                                  http_port=config.server.http_port)
        return DeviceMcpClient.from_config(session.send_mcp, dcfg, vision_url=url, vision_token=token,
                                           tag=session.tag)

    services.device_tools_factory = device_tools if dcfg.mcp else None
    services.iot_tools_factory = (lambda s: IotTools(s.send_iot_commands, tag=s.tag)) if dcfg.iot else None


async def warm_up(services: Services) -> None:
    """One tiny request through each local model: first calls are slow (allocations, kernel
    selection, prompt-prefix evaluation); better at startup than on the first user's turn."""
    cfg = services.config.assistant
    t0 = time.monotonic()
    try:
        if getattr(services.asr, "local", False):
            await services.asr.transcribe(b"\x00\x00" * 8000)
        if getattr(services.llm, "local", False):
            request = LLMRequest(messages=Dialogue().messages(system_prompt(cfg.prompt, cfg.name, cfg.language),
                                                              "Hi", context=time_context(cfg.language)),
                                 max_tokens=1)
            async for _ in services.llm.stream(request):
                pass
        if getattr(services.tts, "local", False):
            async for _ in services.tts.synthesize("Hello."):
                pass
    except Exception as exc:  # noqa: BLE001 - a failed warm-up is not fatal; real turns will tell
        log.warning("warm-up failed: %s", exc)
        return
    log.info("warmed up local models in %.1f s", time.monotonic() - t0)
