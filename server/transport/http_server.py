"""HTTP side (aiohttp): the OTA endpoint devices call at boot, firmware downloads, health and
metrics."""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from typing import Any

from aiohttp import web

from server.services import Services
from server.transport.auth import TokenAuth
from server.transport.device_id import loggable, normalize_device_id, safe_client_id
from server.transport.ota import find_newer_firmware, ota_response, websocket_url_for

log = logging.getLogger("server.http")

CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "*",
}


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, ensure_ascii=False), status=status,
                        content_type="application/json", headers=CORS)


class HttpApi:
    def __init__(self, services: Services, auth: TokenAuth, started: float | None = None) -> None:
        self.services = services
        self.auth = auth
        self.started = started or time.time()
        cfg = services.config.server
        self.firmware_dir = services.root_dir / cfg.firmware_dir

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        for path in ("/xiaozhi/ota/", "/xiaozhi/ota"):
            app.router.add_route("GET", path, self.ota_get)
            app.router.add_route("POST", path, self.ota_post)
            app.router.add_route("OPTIONS", path, self.options)
        app.router.add_route("POST", "/xiaozhi/ota/activate", self.activate)
        app.router.add_route("OPTIONS", "/xiaozhi/ota/activate", self.options)
        app.router.add_route("GET", "/xiaozhi/ota/download/{name}", self.download)
        if self.services.vision is not None:
            self.services.vision.add_routes(app)
        app.router.add_route("GET", "/health", self.health)
        app.router.add_route("GET", "/metrics", self.metrics)
        return app

    async def options(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers=CORS)

    async def ota_get(self, request: web.Request) -> web.Response:
        url = self._ws_url(request)
        return web.Response(text=f"OTA endpoint is running. Devices POST here; the WebSocket address handed "
                                 f"out is {url}\n", headers=CORS)

    def _ws_url(self, request: web.Request) -> str:
        cfg = self.services.config.server
        host = request.headers.get("Host", "") or request.host
        return websocket_url_for(host, cfg.websocket_url, self.services.ports.websocket, cfg.ws_path)

    async def ota_post(self, request: web.Request) -> web.Response:
        cfg = self.services.config.server
        body: dict[str, Any] = {}
        raw = await request.read()
        if raw:
            try:
                parsed = json.loads(raw)
                if isinstance(parsed, dict):
                    body = parsed
            except ValueError:
                log.info("OTA request with a body that is not JSON from %s: answering anyway", request.remote)
        headers = request.headers
        # Validated before anything logs or stores them (server/transport/device_id.py).
        device_id = normalize_device_id(headers.get("Device-Id")) or normalize_device_id(body.get("mac_address")) or ""
        client_id = safe_client_id(headers.get("Client-Id") or body.get("uuid"))
        app = body.get("application") if isinstance(body.get("application"), dict) else {}
        board = body.get("board") if isinstance(body.get("board"), dict) else {}
        version = str(app.get("version") or "").strip()
        board_type = str(board.get("type") or "").strip()
        if not device_id:
            raw = headers.get("Device-Id") or body.get("mac_address")
            log.info("OTA from %s: device id %s is not a MAC or UUID: 400", request.remote, loggable(raw))
            return _json({"error": "Device-Id header (a MAC address or UUID) is required"}, status=400)
        token = self.auth.mint(device_id, client_id) if self.auth.enabled else ""
        firmware = find_newer_firmware(self.firmware_dir, board_type, version) if version else None
        fw_url = ""
        if firmware is not None:
            base = f"{request.scheme}://{request.headers.get('Host') or request.host}"
            fw_url = f"{base}/xiaozhi/ota/download/{firmware.path.name}"
            log.info("OTA: offering firmware %s to %s (has %s)", firmware.version, device_id, version)
        data = ota_response(ws_url=self._ws_url(request), token=token, framing_version=cfg.framing_version,
                            timezone_offset_minutes=cfg.timezone_offset_minutes, device_version=version or "0.0.0",
                            firmware=firmware, firmware_url=fw_url)
        log.info("OTA: %s (%s, fw %s) -> %s", device_id, board_type or "?", version or "?", data["websocket"]["url"])
        return _json(data)

    async def activate(self, request: web.Request) -> web.Response:
        # We never ask devices to activate; answer "activated" if one asks anyway.
        return _json({"status": "ok"})

    async def download(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = (self.firmware_dir / name).resolve()
        if path.parent != self.firmware_dir.resolve() or not path.is_file() or path.suffix != ".bin":
            return web.Response(status=404, text="not found")
        return web.FileResponse(path)

    async def health(self, request: web.Request) -> web.Response:
        s = self.services
        return _json({
            "status": "ok",
            "uptime_s": round(time.time() - self.started, 1),
            "sessions": len(s.sessions),
            "providers": {k: getattr(s, k).name for k in ("vad", "asr", "llm", "tts")},
        })

    async def metrics(self, request: web.Request) -> web.Response:
        # Per-turn data names devices: only for someone on this machine.
        if not is_loopback(request.remote or ""):
            return web.Response(status=403, text="metrics are served to loopback clients only\n")
        data = self.services.metrics.snapshot()
        data["sessions"] = len(self.services.sessions)
        return _json(data)
