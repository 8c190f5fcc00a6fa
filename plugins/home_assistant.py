"""Home Assistant: read a device's state and switch it, through HA's REST API with a long-lived
access token.

The devices the model may touch are an explicit allow-list in config (`entities`; empty means
none); they are written into the tool descriptions, so the model knows what exists, and a spoken
name ("客厅灯", "living room light") is resolved to its entity_id here rather than guessed by
the model. Which services may be called is allowed per domain (`services`): locks, alarm panels,
covers (garage doors) and valves are refused unless the config names their domain there. Every
refusal reads the same whether or not an entity exists in Home Assistant, and an id that is not
listed is never sent to Home Assistant, so the assistant cannot be used to probe the house.
Reads use `GET /api/states/<entity_id>`, changes `POST /api/services/<domain>/<service>` followed
by a read-back, so the answer reports the state HA actually reached.
"""

from __future__ import annotations

import difflib
import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from server.plugin_api import Say, ToolContext, ToolResult, http_session, settings_of, tool, tr


class Entity(BaseModel):
    model_config = ConfigDict(extra="forbid")
    entity_id: str = Field(pattern=r"^[a-z_][a-z0-9_]*\.[a-z0-9_]+$")
    # One name or several (Chinese and English), as users say them.
    name: str | list[str]
    area: str = ""

    @property
    def names(self) -> list[str]:
        names = [self.name] if isinstance(self.name, str) else list(self.name)
        return [n for n in (x.strip() for x in names) if n]

    @property
    def domain(self) -> str:
        return self.entity_id.split(".", 1)[0]


# Domains whose services open the house or disarm it: never allowed by default.
SENSITIVE_DOMAINS = frozenset({"lock", "alarm_control_panel", "cover", "valve"})
_ON_OFF_TOGGLE = ["turn_on", "turn_off", "toggle"]
DEFAULT_SERVICES: dict[str, list[str]] = {
    "light": _ON_OFF_TOGGLE, "switch": _ON_OFF_TOGGLE, "fan": _ON_OFF_TOGGLE, "input_boolean": _ON_OFF_TOGGLE,
    "humidifier": _ON_OFF_TOGGLE, "climate": [*_ON_OFF_TOGGLE, "set_temperature"],
    "media_player": [*_ON_OFF_TOGGLE, "media_stop"], "scene": ["turn_on"], "script": ["turn_on"],
    "button": ["press"], "input_button": ["press"],
}
REFUSED = "that device or action is not available to the voice assistant; tell the user so"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_url: str = "http://homeassistant.local:8123"
    # A long-lived access token (HA profile -> Security); write `${HASS_TOKEN}` in config.
    token: SecretStr
    # Per request; stays under the tools' 10 s budget so the model hears HA's own error.
    timeout_s: float = Field(default=5.0, gt=0, le=9)
    # The allow-list: only these entities can be read or changed. Empty: none.
    entities: list[Entity] = Field(default_factory=list)
    # Services allowed per domain, merged over DEFAULT_SERVICES (a domain set to [] allows
    # nothing). lock, alarm_control_panel, cover and valve need an entry here, e.g.
    # {cover: [open_cover, close_cover, stop_cover, set_cover_position]}.
    services: dict[str, list[str]] = Field(default_factory=dict)
    # Say a short confirmation after a change instead of handing the new state to the model
    # (saves one LLM round; the model cannot add anything of its own).
    speak_confirmation: bool = False

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not re.match(r"^https?://", value):
            raise ValueError("must start with http:// or https://")
        return value


class HassError(Exception):
    """A failure to hand to the model, worded so it can tell the user."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status when HA answered with an error


# ------------------------------------------------------------------------------ entity lookup


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower().replace("的", "")
    return "".join(ch for ch in text if ch.isalnum())


def allowed_services(settings: Settings) -> dict[str, frozenset[str]]:
    merged = {**DEFAULT_SERVICES, **settings.services}
    return {domain: frozenset(names) for domain, names in merged.items()}


def check_allowed(call: ServiceCall, entity: Entity, allowed: dict[str, frozenset[str]]) -> None:
    """Refuse a service the config does not allow for the entity's domain (HassError REFUSED)."""
    # Keyed by the entity's own domain, also when the call goes through the generic
    # homeassistant.* services: listing `switch` never unlocks anything else.
    if call.service not in allowed.get(entity.domain, frozenset()):
        raise HassError(REFUSED)


def resolve_entity(entities: list[Entity], spoken: str) -> Entity:
    """The allow-listed entity the user means, or HassError. An id that is not listed gets the
    same refusal whether or not it exists (it is never looked up)."""
    spoken = spoken.strip()
    for e in entities:
        if spoken.lower() == e.entity_id:
            return e
    if not entities:
        raise HassError(REFUSED)
    if re.fullmatch(r"[a-z_][a-z0-9_]*\.[a-z0-9_]+", spoken.lower()):
        # An exact id is a precise reference: never fuzzy-match it onto a similar device.
        raise HassError(REFUSED)
    q = _norm(spoken)
    if not q:
        raise HassError("no device named; ask the user which device")
    aliases: list[tuple[str, Entity]] = []
    for e in entities:
        for n in e.names:
            aliases.append((_norm(n), e))
            if e.area and _norm(e.area) not in _norm(n):
                aliases.append((_norm(e.area + n), e))
    exact = {id(e): e for a, e in aliases if a == q}
    if len(exact) == 1:
        return next(iter(exact.values()))
    contained = {id(e): e for a, e in aliases if a and (a in q or q in a)}
    if len(contained) == 1:
        return next(iter(contained.values()))
    if len(contained) > 1:
        names = ", ".join(f"{e.names[0]} ({e.entity_id})" for e in contained.values())
        raise HassError(f"{spoken!r} could mean several devices: {names}; ask the user which one")
    scored = sorted(((difflib.SequenceMatcher(None, q, a).ratio(), e) for a, e in aliases if a),
                    key=lambda x: -x[0])
    if scored and scored[0][0] >= 0.6 and (len(scored) == 1 or scored[1][0] < scored[0][0] or
                                           scored[1][1] is scored[0][1]):
        return scored[0][1]
    known = ", ".join(e.names[0] for e in entities)
    raise HassError(f"no device called {spoken!r} is available; available devices: {known}")


# ------------------------------------------------------------------------------ services

State = Literal["on", "off", "toggle", "open", "close", "stop", "lock", "unlock"]

_ON_OFF = {"light", "switch", "fan", "input_boolean", "automation", "media_player", "humidifier", "remote",
           "siren", "climate", "water_heater", "vacuum"}


@dataclass(slots=True, frozen=True)
class ServiceCall:
    domain: str
    service: str
    data: dict[str, Any]


def plan_service(entity_id: str, state: str, brightness: int | None = None, temperature: float | None = None,
                 position: int | None = None) -> tuple[ServiceCall, list[str]]:
    """The HA service that puts `entity_id` into the wanted state, plus notes on ignored values.

    Chinese "打开/关闭" reach us as open/close as often as on/off, so switches accept both."""
    domain = entity_id.split(".", 1)[0]
    data: dict[str, Any] = {"entity_id": entity_id}
    notes: list[str] = []

    def unused(label: str, value: Any) -> None:
        if value is not None:
            notes.append(f"{label} is not supported by {domain} devices and was ignored")

    if domain == "light":
        unused("temperature", temperature)
        unused("position", position)
        if brightness is not None:
            if not 0 <= brightness <= 100:
                raise HassError("brightness is a percentage from 0 to 100")
            if brightness == 0 or state in ("off", "close"):
                return ServiceCall("light", "turn_off", data), notes
            return ServiceCall("light", "turn_on", {**data, "brightness_pct": brightness}), notes
    else:
        unused("brightness", brightness)
    if domain == "cover":
        unused("temperature", temperature)
        if position is not None:
            if not 0 <= position <= 100:
                raise HassError("position is a percentage from 0 (closed) to 100 (open)")
            return ServiceCall("cover", "set_cover_position", {**data, "position": position}), notes
        service = {"open": "open_cover", "on": "open_cover", "close": "close_cover", "off": "close_cover",
                   "stop": "stop_cover", "toggle": "toggle"}.get(state)
        if service is None:
            raise HassError(f"a cover cannot be set to {state!r}; use open, close, stop or a position")
        return ServiceCall("cover", service, data), notes
    unused("position", position)
    if domain == "climate" and temperature is not None:
        return ServiceCall("climate", "set_temperature", {**data, "temperature": temperature}), notes
    if domain != "climate":
        unused("temperature", temperature)
    if domain == "lock":
        service = {"lock": "lock", "close": "lock", "unlock": "unlock", "open": "unlock"}.get(state)
        if service is None:
            raise HassError(f"a lock can only be locked or unlocked, not {state!r}")
        return ServiceCall("lock", service, data), notes
    if domain in ("scene", "script", "button", "input_button"):
        if state not in ("on", "open", "toggle"):
            raise HassError(f"a {domain} can only be activated (state on)")
        service = "press" if domain in ("button", "input_button") else "turn_on"
        return ServiceCall(domain, service, data), notes
    if domain == "valve":
        service = {"open": "open_valve", "on": "open_valve", "close": "close_valve", "off": "close_valve",
                   "stop": "stop_valve", "toggle": "toggle"}.get(state)
        if service is None:
            raise HassError(f"a valve cannot be set to {state!r}")
        return ServiceCall("valve", service, data), notes
    if domain == "media_player" and state == "stop":
        return ServiceCall("media_player", "media_stop", data), notes
    service = {"on": "turn_on", "open": "turn_on", "off": "turn_off", "close": "turn_off",
               "toggle": "toggle"}.get(state)
    if service is None:
        raise HassError(f"{entity_id} cannot be set to {state!r}; use on, off or toggle")
    # Unknown domains go through the generic homeassistant.* services, which dispatch by entity.
    return ServiceCall(domain if domain in _ON_OFF else "homeassistant", service, data), notes


# ------------------------------------------------------------------------------ HTTP

_KEEP_ATTRS = ("unit_of_measurement", "current_temperature", "temperature", "target_temp_high", "target_temp_low",
               "hvac_action", "current_position", "volume_level", "media_title", "percentage", "battery_level")


def compact_state(state: dict[str, Any], entity: Entity) -> dict[str, Any]:
    attrs = state.get("attributes") or {}
    out: dict[str, Any] = {"entity_id": state.get("entity_id", entity.entity_id),
                           "name": entity.names[0] if entity.names else attrs.get("friendly_name", ""),
                           "state": state.get("state")}
    if entity.area:
        out["area"] = entity.area
    if isinstance(attrs.get("brightness"), int | float):
        out["brightness_pct"] = round(attrs["brightness"] * 100 / 255)
    for key in _KEEP_ATTRS:
        if attrs.get(key) is not None:
            out[key] = attrs[key]
    return out


async def _request(ctx: ToolContext, method: str, path: str, body: dict | None = None) -> Any:
    s = settings_of(ctx, Settings)
    url = s.base_url + path
    headers = {"Authorization": f"Bearer {s.token.get_secret_value()}", "Content-Type": "application/json"}
    timeout = s.timeout_s
    async with http_session(ctx) as http:
        try:
            async with http.request(method, url, json=body, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                text = await resp.text()
                status = resp.status
        except TimeoutError:
            raise HassError(f"Home Assistant did not answer within {timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise HassError(f"cannot reach Home Assistant at {s.base_url} ({type(exc).__name__})") from None
    if status == 401:
        raise HassError("Home Assistant rejected the access token (HTTP 401); check plugins.home_assistant.token",
                        401)
    if status >= 400:
        raise HassError(f"Home Assistant answered HTTP {status}: {text[:200]}", status)
    try:
        return json.loads(text) if text else None
    except ValueError:
        raise HassError(f"Home Assistant answered with something that is not JSON: {text[:100]!r}") from None


async def _read_state(ctx: ToolContext, entity: Entity) -> dict[str, Any]:
    try:
        data = await _request(ctx, "GET", f"/api/states/{entity.entity_id}")
    except HassError as exc:
        if exc.status == 404:
            raise HassError(f"Home Assistant has no entity {entity.entity_id}", 404) from None
        raise
    if not isinstance(data, dict):
        raise HassError("Home Assistant returned an unexpected state")
    return data


def _entities(ctx: ToolContext) -> list[Entity]:
    return settings_of(ctx, Settings).entities


# ------------------------------------------------------------------------------ descriptions


def _device_list(settings: Settings | None) -> str:
    entities = settings.entities if settings is not None else []
    if not entities:
        return " No device is configured for voice control: tell the user so."
    shown = [f"{' / '.join(e.names)} ({e.entity_id}{', ' + e.area if e.area else ''})" for e in entities[:80]]
    more = f"; and {len(entities) - 80} more" if len(entities) > 80 else ""
    return " Devices: " + "; ".join(shown) + more + "."


def _describe_get(settings: Settings | None) -> str:
    return ("Read the current state of a smart-home device through Home Assistant (on/off, brightness, "
            "temperature, position, sensor value). Call when the user asks about a device, e.g. "
            "\"客厅灯开着吗\", \"卧室温度多少\", \"is the garage door open\"." + _device_list(settings))


def _describe_set(settings: Settings | None) -> str:
    return ("Switch or adjust a smart-home device through Home Assistant: on/off/toggle, open/close/stop "
            "(covers, valves), lock/unlock, light brightness, thermostat temperature, cover position. Call "
            "only when the user asks to change a device, e.g. \"打开客厅灯\", \"把卧室灯调到30%\", "
            "\"空调调到26度\", \"close the curtains\"." + _device_list(settings))


# ------------------------------------------------------------------------------ tools


@tool(timeout=10, description=_describe_get)
async def hass_get_state(ctx: ToolContext, entity: str) -> dict | ToolResult:
    """Read a Home Assistant device's state.

    Args:
        entity: the device as the user named it (e.g. 客厅灯, bedroom light) or its entity_id.
    """
    try:
        target = resolve_entity(_entities(ctx), entity)
        return compact_state(await _read_state(ctx, target), target)
    except HassError as exc:
        return ToolResult.error(str(exc))


_STATE_ZH = {"on": "已打开", "off": "已关闭", "open": "已打开", "opening": "正在打开", "closed": "已关闭",
             "closing": "正在关闭", "locked": "已上锁", "unlocked": "已解锁", "heat": "在制热", "cool": "在制冷"}


@tool(timeout=10, description=_describe_set, cancel_on_interruption=False)
async def hass_set_state(ctx: ToolContext, entity: str, state: State, brightness: int | None = None,
                         temperature: float | None = None, position: int | None = None) -> Any:
    """Change a Home Assistant device.

    Args:
        entity: the device as the user named it (e.g. 客厅灯, bedroom light) or its entity_id.
        state: what to do: on, off, toggle, open, close, stop, lock or unlock. With brightness,
            temperature or position use "on".
        brightness: light brightness in percent, 0-100.
        temperature: target temperature for a thermostat or air conditioner, in degrees.
        position: cover (curtain, blind, garage door) position in percent, 0 closed to 100 open.
    """
    try:
        target = resolve_entity(_entities(ctx), entity)
        call, notes = plan_service(target.entity_id, state, brightness, temperature, position)
        check_allowed(call, target, allowed_services(settings_of(ctx, Settings)))
        try:
            await _request(ctx, "POST", f"/api/services/{call.domain}/{call.service}", call.data)
        except HassError as exc:
            if exc.status in (400, 404):
                raise HassError(f"Home Assistant refused {call.domain}.{call.service}: {exc}", exc.status) from None
            raise
        after = compact_state(await _read_state(ctx, target), target)
    except HassError as exc:
        return ToolResult.error(str(exc))
    if settings_of(ctx, Settings).speak_confirmation:
        name = after["name"] or target.entity_id
        st = str(after.get("state"))
        extra = f"，亮度{after['brightness_pct']}%" if "brightness_pct" in after and st == "on" else ""
        return Say(tr(ctx, f"好的，{name}{_STATE_ZH.get(st, '现在是' + st)}{extra}。", f"Okay, {name} is now {st}."))
    result: dict[str, Any] = {"done": f"{call.domain}.{call.service}", **after}
    if notes:
        result["notes"] = notes
    return result
