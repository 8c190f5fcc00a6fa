"""HTTP side (aiohttp): the OTA endpoint devices call at boot (with pairing), the activation
poll, firmware downloads, health and metrics.

Every way in is bounded: OTA and activate requests per client address per minute, bodies of
at most 64 KB parsed with a nesting limit, CORS only for configured origins, /metrics behind a
bearer token (or loopback, when no reverse proxy is declared).
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from typing import Any

from aiohttp import web

from server.pairing import Pairing
from server.protocol.errors import ProtocolError
from server.protocol.safe_json import loads_limited
from server.runtime import Services
from server.transport.auth import TokenAuth, bearer_token
from server.transport.device_id import loggable, normalize_device_id, safe_client_id
from server.transport.limits import RateLimiter, client_address, is_loopback
from server.transport.ota import find_newer_firmware, ota_response, websocket_url_for

log = logging.getLogger("server.http")

MAX_OTA_BODY = 64 * 1024
_FIELD_MAX = 64

__all__ = ["HttpApi", "is_loopback"]


def _text_field(value: Any) -> str:
    """A short printable string from an untrusted body field (board type, firmware version)."""
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        return ""
    text = str(value).strip()[:_FIELD_MAX]
    return "".join(ch for ch in text if ch.isprintable())


def raw_device_id(value: str) -> str:
    return value.strip().lower()


class HttpApi:
    def __init__(self, services: Services, auth: TokenAuth, started: float | None = None,
                 pairing: Pairing | None = None) -> None:
        self.services = services
        self.auth = auth
        self.pairing = pairing
        self.started = started or time.time()
        cfg = services.config.server
        self.firmware_dir = services.root_dir / cfg.firmware_dir
        limits = cfg.limits
        self.ota_limit = RateLimiter(limits.ota_per_minute, limits.max_tracked_addresses)
        self.activate_limit = RateLimiter(limits.activate_per_minute, limits.max_tracked_addresses)
        self.trusted_proxies = frozenset(cfg.trusted_proxies)
        self.allowed_origins = frozenset(cfg.allowed_origins)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024, middlewares=[self._cors])
        for path in ("/xiaozhi/ota/", "/xiaozhi/ota"):
            app.router.add_route("GET", path, self.ota_get)
            app.router.add_route("POST", path, self.ota_post)
            app.router.add_route("OPTIONS", path, self.options)
        for path in ("/xiaozhi/ota/activate", "/xiaozhi/ota/activate/"):
            app.router.add_route("POST", path, self.activate)
            app.router.add_route("OPTIONS", path, self.options)
        app.router.add_route("GET", "/xiaozhi/ota/download/{name}", self.download)
        if self.services.vision is not None:
            self.services.vision.add_routes(app)
        app.router.add_route("GET", "/health", self.health)
        app.router.add_route("GET", "/metrics", self.metrics)
        return app

    # ------------------------------------------------------------------ helpers

    def client(self, request: web.Request) -> str:
        return client_address(request.remote or "", request.headers, self.trusted_proxies)

    def _origin_allowed(self, origin: str) -> bool:
        return origin.strip().rstrip("/").lower() in self.allowed_origins

    @web.middleware
    async def _cors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """CORS headers only for configured origins; a browser page from anywhere else cannot
        read our answers (the device itself sends no Origin and is not affected)."""
        response = await handler(request)
        origin = request.headers.get("Origin", "")
        if origin and request.path.startswith("/xiaozhi/ota") and self._origin_allowed(origin):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = (
                "Content-Type, Device-Id, Client-Id, Activation-Version, Authorization")
        return response

    @staticmethod
    def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(text=json.dumps(data, ensure_ascii=False), status=status,
                            content_type="application/json", headers=headers)

    def _too_many(self, what: str, address: str) -> web.Response:
        self.services.metrics.count(f"{what}_rate_limited")
        log.warning("%s: rate limit for %s reached", what, address)
        return self._json({"error": "too many requests, retry later"}, status=429, headers={"Retry-After": "10"})

    async def _read_json_body(self, request: web.Request) -> dict[str, Any] | None:
        """The body as a JSON object; {} when empty or not an object; None when too large."""
        if request.content_length is not None and request.content_length > MAX_OTA_BODY:
            return None
        raw = await request.content.read(MAX_OTA_BODY + 1)
        if len(raw) > MAX_OTA_BODY:
            return None
        if not raw.strip():
            return {}
        try:
            parsed = loads_limited(raw)
        except ProtocolError as exc:
            log.info("%s from %s: body ignored (%s)", request.path, self.client(request), exc)
            return {}
        return parsed if isinstance(parsed, dict) else {}

    # ------------------------------------------------------------------ OTA

    async def options(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def ota_get(self, request: web.Request) -> web.Response:
        url = self._ws_url(request)
        return web.Response(text=f"OTA endpoint is running. Devices POST here; the WebSocket address handed "
                                 f"out is {url}\n")

    def _ws_url(self, request: web.Request) -> str:
        cfg = self.services.config.server
        host = request.headers.get("Host", "") or request.host
        return websocket_url_for(host, cfg.websocket_url, self.services.ports.websocket, cfg.ws_path)

    async def ota_post(self, request: web.Request) -> web.Response:
        cfg = self.services.config.server
        address = self.client(request)
        if not self.ota_limit.allow(address):
            return self._too_many("ota", address)
        body = await self._read_json_body(request)
        if body is None:
            return self._json({"error": "request body too large"}, status=413)
        headers = request.headers
        # Validated before anything logs or stores them (server/transport/device_id.py).
        device_id = (normalize_device_id(headers.get("Device-Id"))
                     or normalize_device_id(_text_field(body.get("mac_address"))) or "")
        client_id = safe_client_id(headers.get("Client-Id") or _text_field(body.get("uuid")))
        app = body.get("application") if isinstance(body.get("application"), dict) else {}
        board = body.get("board") if isinstance(body.get("board"), dict) else {}
        version = _text_field(app.get("version"))
        board_type = _text_field(board.get("type"))
        if not device_id:
            raw = headers.get("Device-Id") or body.get("mac_address")
            log.info("OTA from %s: device id %s is not a MAC or UUID: 400", request.remote, loggable(raw))
            return self._json({"error": "Device-Id header (a MAC address or UUID) is required"}, status=400)
        token, activation = "", None
        if self.auth.enabled:
            if self.pairing is None or device_id in self.auth.allowed_devices:
                token = self.auth.mint(device_id, client_id)
            else:
                decision = await self.pairing.on_ota(device_id=device_id, client_id=client_id, board=board_type,
                                                     firmware=version, address=address,
                                                     language=headers.get("Accept-Language", ""))
                if decision.busy:
                    self.services.metrics.count("pairing_busy")
                    return self._json({"error": "too many devices waiting for pairing, retry later"},
                                      status=503, headers={"Retry-After": "30"})
                if decision.paired:
                    token = self.auth.mint(device_id, client_id, generation=decision.generation)
                else:
                    activation = decision.activation
        firmware = find_newer_firmware(self.firmware_dir, board_type, version) if version else None
        fw_url = ""
        if firmware is not None:
            base = f"{request.scheme}://{request.headers.get('Host') or request.host}"
            fw_url = f"{base}/xiaozhi/ota/download/{firmware.path.name}"
            log.info("OTA: offering firmware %s to %s (has %s)", firmware.version, device_id, version)
        data = ota_response(ws_url=self._ws_url(request), token=token, framing_version=cfg.framing_version,
                            timezone_offset_minutes=cfg.timezone_offset_minutes, device_version=version or "0.0.0",
                            firmware=firmware, firmware_url=fw_url)
        if activation is not None:
            data["activation"] = activation
        log.info("OTA: %s (%s, fw %s) from %s -> %s", device_id, board_type or "?", version or "?", address,
                 "waiting for pairing" if activation is not None else data["websocket"]["url"])
        return self._json(data)

    async def activate(self, request: web.Request) -> web.Response:
        """The firmware polls this while it shows a pairing code: 202 until the owner confirmed
        the code, then 200 (it then re-runs the OTA check, which now carries the token)."""
        address = self.client(request)
        if not self.activate_limit.allow(address):
            return self._too_many("activate", address)
        body = await self._read_json_body(request)
        if body is None:
            return self._json({"error": "request body too large"}, status=413)
        if not self.auth.enabled or self.pairing is None:
            return self._json({"status": "ok"})
        device_id = normalize_device_id(request.headers.get("Device-Id")) or ""
        client_id = safe_client_id(request.headers.get("Client-Id"))
        if device_id and await self.pairing.is_paired(device_id, client_id):
            return self._json({"status": "ok"})
        if device_id and await self.pairing.check_activation(device_id, client_id, body) == "bad":
            # A registered key and no matching HMAC: this code will not be accepted.
            self.services.metrics.count("activation_hmac_refused")
            return self._json({"error": "activation HMAC does not match this device's registered key"},
                              status=403)
        # Unknown, pending, or another client's id: the same answer, so nothing is revealed.
        return self._json({"status": "waiting", "message": "waiting for the owner to confirm the code"},
                          status=202)

    async def download(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = (self.firmware_dir / name).resolve()
        if path.parent != self.firmware_dir.resolve() or not path.is_file() or path.suffix != ".bin":
            return web.Response(status=404, text="not found")
        return web.FileResponse(path)

    # ------------------------------------------------------------------ health, metrics

    async def health(self, request: web.Request) -> web.Response:
        s = self.services
        return self._json({
            "status": "ok",
            "uptime_s": round(time.time() - self.started, 1),
            "sessions": len(s.sessions),
            "providers": {k: getattr(s, k).name for k in ("vad", "asr", "llm", "tts")},
        })

    def metrics_allowed(self, request: web.Request) -> bool:
        """Per-turn data names devices and sessions: a bearer token from config, or (without
        one) a loopback peer, and only when no reverse proxy is declared, since behind a proxy
        on this host every remote client looks like loopback."""
        configured = self.services.config.server.metrics_token
        if configured:
            given = bearer_token(request.headers.get("Authorization", ""))
            return hmac.compare_digest(given.encode("utf-8", "replace"), configured.encode())
        return not self.trusted_proxies and is_loopback(request.remote or "")

    async def metrics(self, request: web.Request) -> web.Response:
        if not self.metrics_allowed(request):
            self.services.metrics.count("metrics_refused")
            return web.Response(status=401, text="metrics need Authorization: Bearer <server.metrics_token>\n",
                                headers={"WWW-Authenticate": "Bearer"})
        data = self.services.metrics.snapshot()
        data["sessions"] = len(self.services.sessions)
        return self._json(data)
