"""A local stand-in for Home Assistant's REST API (aiohttp, 127.0.0.1).

What it speaks, as HA does:
- every `/api/...` request needs `Authorization: Bearer <token>`; otherwise HTTP 401 with the
  text body `401: Unauthorized`;
- `GET /api/` -> `{"message": "API running."}`;
- `GET /api/states` -> all state objects; `GET /api/states/<entity_id>` -> one state object
  (`entity_id`, `state`, `attributes`, `last_changed`, `last_updated`, `context`), or HTTP 404
  `{"message": "Entity not found."}`;
- `POST /api/services/<domain>/<service>` with a JSON body of service data (`entity_id` plus
  e.g. `brightness_pct`, `temperature`, `position`) -> the list of states that changed; an
  unknown service -> HTTP 400 `{"message": "Service <domain>.<service> not found."}`.

Services change the stored states the way the real integrations do for the domains used in
tests: light/switch/fan/input_boolean/climate on/off/toggle (light brightness 0-255 from
`brightness_pct`), climate set_temperature, cover open/close/stop/set_cover_position,
lock lock/unlock, scene/script turn_on, homeassistant.turn_on/off/toggle. `delay_s` makes every
answer slow (timeout tests); `calls` records the service calls received.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .http_base import FakeHTTPServer


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def make_state(entity_id: str, state: str, **attributes: Any) -> dict[str, Any]:
    t = _now()
    return {"entity_id": entity_id, "state": state, "attributes": attributes, "last_changed": t,
            "last_updated": t, "context": {"id": uuid.uuid4().hex, "parent_id": None, "user_id": None}}


@dataclass
class ServiceCallRecord:
    domain: str
    service: str
    data: dict[str, Any]


@dataclass
class FakeHomeAssistant(FakeHTTPServer):
    token: str = "test-token"
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    delay_s: float = 0.0
    calls: list[ServiceCallRecord] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)

    def add(self, entity_id: str, state: str, **attributes: Any) -> None:
        self.states[entity_id] = make_state(entity_id, state, **attributes)

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/api/", self._api)
        app.router.add_get("/api/states", self._all_states)
        app.router.add_get("/api/states/{entity_id}", self._state)
        app.router.add_post("/api/services/{domain}/{service}", self._service)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.Response(status=401, text="401: Unauthorized")
        return await handler(request)

    async def _api(self, request: web.Request) -> web.Response:
        return web.json_response({"message": "API running."})

    async def _all_states(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.states.values()))

    async def _state(self, request: web.Request) -> web.Response:
        state = self.states.get(request.match_info["entity_id"])
        if state is None:
            return web.json_response({"message": "Entity not found."}, status=404)
        return web.json_response(state)

    async def _service(self, request: web.Request) -> web.Response:
        domain, service = request.match_info["domain"], request.match_info["service"]
        try:
            data = await request.json() if request.can_read_body else {}
        except ValueError:
            return web.json_response({"message": "Data should be valid JSON."}, status=400)
        self.calls.append(ServiceCallRecord(domain, service, dict(data)))
        handler = _SERVICES.get((domain, service)) or (
            _SERVICES.get(("*", service)) if domain in _ON_OFF_DOMAINS | {"homeassistant"} else None)
        if handler is None:
            return web.json_response({"message": f"Service {domain}.{service} not found."}, status=400)
        ids = data.get("entity_id", [])
        ids = [ids] if isinstance(ids, str) else list(ids)
        changed = []
        for entity_id in ids:
            state = self.states.get(entity_id)
            if state is None:
                continue  # HA ignores entities it does not know and still answers 200
            new_state, new_attrs = handler(state["state"], dict(state["attributes"]), data)
            if new_state != state["state"] or new_attrs != state["attributes"]:
                updated = make_state(entity_id, new_state, **new_attrs)
                if new_state == state["state"]:
                    updated["last_changed"] = state["last_changed"]
                self.states[entity_id] = updated
                changed.append(updated)
        return web.json_response(changed)


_ON_OFF_DOMAINS = {"light", "switch", "fan", "input_boolean", "climate", "media_player"}


def _turn_on(state: str, attrs: dict[str, Any], data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if "brightness_pct" in data:
        attrs["brightness"] = round(float(data["brightness_pct"]) * 255 / 100)
    elif "brightness" in attrs and attrs["brightness"] is None:
        attrs["brightness"] = 255  # real HA restores the last brightness; full is close enough
    return "on", attrs


def _turn_off(state: str, attrs: dict[str, Any], data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if "brightness" in attrs:
        attrs["brightness"] = None  # HA reports no brightness for a light that is off
    return "off", attrs


def _toggle(state: str, attrs: dict[str, Any], data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return _turn_off(state, attrs, data) if state == "on" else _turn_on(state, attrs, data)


def _set_temperature(state: str, attrs: dict[str, Any], data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    attrs["temperature"] = data.get("temperature")
    return state, attrs


def _cover(target: str | None) -> Any:
    def handler(state: str, attrs: dict[str, Any], data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if target is None:  # stop
            return state, attrs
        attrs["current_position"] = 100 if target == "open" else 0
        return target, attrs

    return handler


def _cover_position(state: str, attrs: dict[str, Any], data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    pos = int(data.get("position", 0))
    attrs["current_position"] = pos
    return ("closed" if pos == 0 else "open"), attrs


_SERVICES: dict[tuple[str, str], Any] = {
    ("*", "turn_on"): _turn_on,
    ("*", "turn_off"): _turn_off,
    ("*", "toggle"): _toggle,
    ("climate", "set_temperature"): _set_temperature,
    ("cover", "open_cover"): _cover("open"),
    ("cover", "close_cover"): _cover("closed"),
    ("cover", "stop_cover"): _cover(None),
    ("cover", "set_cover_position"): _cover_position,
    ("lock", "lock"): lambda s, a, d: ("locked", a),
    ("lock", "unlock"): lambda s, a, d: ("unlocked", a),
    ("scene", "turn_on"): lambda s, a, d: (_now(), a),
    ("script", "turn_on"): lambda s, a, d: ("on", a),
}
