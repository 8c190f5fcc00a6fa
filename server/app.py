"""Start everything: providers, the device WebSocket server and the HTTP (OTA) server."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from websockets.asyncio.server import Server, serve

from server.config.schema import AppConfig
from server.fleet.node import FleetNode
from server.loop_lag import watch_loop_lag
from server.pairing import DeviceRegistry, Pairing, SqliteDeviceRegistry
from server.pairing.memory_identity import MemoryIdentities
from server.runtime import ListeningPorts, Services, build_services
from server.state.datadir_lock import DataDirLock
from server.transport.auth import TokenAuth, load_or_create_secret
from server.transport.http_server import HttpApi
from server.transport.websocket_server import DeviceServer

log = logging.getLogger("server")


def make_auth(config: AppConfig, data_dir: Path) -> TokenAuth:
    a = config.server.auth
    secret = a.secret.encode() if a.secret else load_or_create_secret(data_dir / "auth_secret")
    return TokenAuth(secret=secret, ttl_seconds=a.token_ttl_days * 86400, enabled=a.enabled,
                     allowed_devices=frozenset(a.allowed_devices))


def embedded_data_lock(config: AppConfig, data_dir: Path) -> DataDirLock | None:
    """One process per embedded data directory (a fleet shares PostgreSQL, not data/)."""
    if config.state.shared:
        return None
    lock = DataDirLock(data_dir)
    lock.acquire()
    return lock


def _async(fn: Any) -> Any:
    async def call() -> None:
        fn()
    return call


async def open_registry(config: AppConfig, data_dir: Path, state: Any = None) -> DeviceRegistry:
    """The device registry, always (with auth off it still decides whose memory a device id's
    connection gets): in the shared PostgreSQL of a fleet (state.url), else SQLite in data_dir."""
    registry: Any
    if state is not None and state.shared:
        from server.state.pg_registry import PgDeviceRegistry

        registry = PgDeviceRegistry(state.extras["pg_pool"])
    else:
        registry = SqliteDeviceRegistry(data_dir / config.server.auth.pairing.db)
    await registry.open()
    return registry  # type: ignore[no-any-return]


async def open_pairing(config: AppConfig, data_dir: Path, state: Any = None,
                       registry: DeviceRegistry | None = None) -> Pairing | None:
    """Pairing on the registry when auth with pairing is on (None otherwise)."""
    a = config.server.auth
    if not (a.enabled and a.pairing.enabled):
        return None
    if registry is None:
        registry = await open_registry(config, data_dir, state)
    return Pairing(registry, a.pairing)


def _is_loopback_host(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def security_warnings(config: AppConfig) -> list[str]:
    s = config.server
    out = []
    if not s.auth.enabled and not _is_loopback_host(s.host):
        out.append(
            f"AUTH IS OFF and the server listens on {s.host}: anyone who can reach ports {s.port}/{s.http_port} "
            "can talk to it. Set server.auth.enabled: true (devices get tokens from the OTA endpoint) "
            "or bind server.host to 127.0.0.1.")
    return out


@dataclass
class RunningServer:
    services: Services
    ws: Server
    http: web.AppRunner
    ws_port: int
    http_port: int
    pairing: Pairing | None = None
    background: list[asyncio.Task[None]] | None = None
    xiaomi: Any = None  # the Xiaomi speaker bridge (server/xiaomi/), when enabled
    registry: DeviceRegistry | None = None

    async def close(self) -> None:
        for task in self.background or []:
            task.cancel()
        if self.xiaomi is not None:
            await self.xiaomi.close()
        self.ws.close()
        for session in list(self.services.sessions):
            await session.close("server shutting down")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.wait_closed(), timeout=5)
        await self.http.cleanup()
        await self.services.close()
        if self.registry is not None:
            await self.registry.close()


def _xiaomi_bridge(services: Any, http_app: web.Application) -> Any:
    """The XiaoAi speaker bridge (None unless xiaomi.enabled); its reply-audio route goes on our
    HTTP port before that starts."""
    from server.xiaomi.bridge import create_bridge

    fleet = services.fleet if services.state.shared else None  # one process: every speaker is ours
    bridge = create_bridge(services, fleet=fleet)
    if bridge is not None:
        bridge.audio_store.add_routes(http_app)
        prometheus = services.fleet.prometheus
        if prometheus is not None:
            refusals = bridge.refusals
            prometheus.extra_counters["xz_xiaomi_fenced_refusals_total"] = (
                "Commands to a Xiaomi speaker and query claims refused because another process holds "
                "the speaker's lease now.", lambda: refusals.refused)
    return bridge


@contextlib.asynccontextmanager
async def running_server(config: AppConfig, root_dir: Path) -> AsyncIterator[RunningServer]:
    t0 = time.monotonic()
    data_dir = root_dir / config.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = embedded_data_lock(config, data_dir)
    try:
        auth = make_auth(config, data_dir)
        services = await build_services(config, root_dir, auth)
        services.fleet = FleetNode(services)
        await services.fleet.start()
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    services._closers.insert(0, services.fleet.close)
    if lock is not None:
        services._closers.insert(0, _async(lock.release))
    cfg = config.server
    registry = await open_registry(config, data_dir, services.state)
    pairing = await open_pairing(config, data_dir, services.state, registry)
    if pairing is not None and services.vision is not None:
        services.vision.current_generation = pairing.current_generation
    devices = DeviceServer(services, auth, pairing, MemoryIdentities(registry, auth))
    ws = await serve(devices.handler, cfg.host, cfg.port, process_request=devices.process_request,
                     create_connection=devices.connection_class(),
                     compression=None, max_size=cfg.max_message_bytes, ping_interval=None,
                     open_timeout=10, close_timeout=2, logger=logging.getLogger("websockets"))
    api = HttpApi(services, auth, pairing=pairing)
    http_app = api.app()
    xiaomi = _xiaomi_bridge(services, http_app)
    runner = web.AppRunner(http_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, cfg.host, cfg.http_port)
    await site.start()
    ws_port = next(iter(ws.sockets)).getsockname()[1]
    http_port = runner.addresses[0][1] if runner.addresses else cfg.http_port
    # Port 0 asks the OS for a free port; the OTA endpoint must advertise the real one.
    services.ports = ListeningPorts(ws_port, http_port)
    watcher = asyncio.create_task(devices.watch_revocations(), name="revocations")
    lag = asyncio.create_task(watch_loop_lag(services.metrics), name="loop-lag")
    running = RunningServer(services, ws, runner, ws_port, http_port, pairing, [watcher, lag], xiaomi, registry)
    if xiaomi is not None:
        xiaomi.start(http_port=http_port)
    for warning in security_warnings(config):
        log.warning(warning)
    log.info("ready in %.1f s: WebSocket ws://%s:%d%s, OTA http://%s:%d/xiaozhi/ota/ (auth %s)",
             time.monotonic() - t0, cfg.host, ws_port, cfg.ws_path, cfg.host, http_port,
             ("on, pairing " + ("on" if pairing else "off")) if cfg.auth.enabled else "off")
    try:
        yield running
    finally:
        await running.close()
