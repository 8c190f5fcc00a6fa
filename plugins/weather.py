"""Weather for a city from a configurable HTTP API: Open-Meteo (no key) or QWeather (和风天气,
your own API host and key).

Open-Meteo: the geocoding API turns the city into coordinates, the forecast API gives the current
conditions and the daily forecast. QWeather: the GeoAPI city lookup gives a Location ID, then
/v7/weather/now and /v7/weather/3d (or 7d). The tool returns compact data and lets the model
phrase it in the conversation's language. Every request has a timeout; no key ships with the
code (put yours in config as `${QWEATHER_KEY}`). Base URLs are settings, so tests and private
deployments can point them elsewhere.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from server.plugin_api import ToolContext, ToolResult, http_session, settings_of, tool

OPEN_METEO_GEOCODING = "https://geocoding-api.open-meteo.com/v1/search"
OPEN_METEO_FORECAST = "https://api.open-meteo.com/v1/forecast"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: Literal["open-meteo", "qweather"] = "open-meteo"
    # Used when the user names no city ("今天天气怎么样").
    default_location: str = ""
    # Per HTTP request; a lookup makes two requests.
    timeout_s: float = Field(default=4.0, gt=0, le=8)
    # Open-Meteo endpoints (public, no key).
    geocoding_url: str = OPEN_METEO_GEOCODING
    forecast_url: str = OPEN_METEO_FORECAST
    # QWeather: the API Host of your project (console -> settings), e.g.
    # https://abc1234xyz.re.qweatherapi.com, and an API KEY credential.
    api_host: str = ""
    api_key: SecretStr | None = None

    @field_validator("api_host")
    @classmethod
    def _scheme(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and "://" not in value:
            value = "https://" + value
        return value

    @model_validator(mode="after")
    def _qweather_needs_credentials(self) -> Settings:
        if self.provider == "qweather" and not (self.api_host and self.api_key and self.api_key.get_secret_value()):
            raise ValueError("provider qweather needs api_host and api_key")
        return self


class WeatherError(Exception):
    """A failure worth telling the model (it then tells the user)."""


# WMO weather interpretation codes (Open-Meteo `weather_code`).
WMO: dict[int, tuple[str, str]] = {
    0: ("晴", "clear sky"), 1: ("晴间少云", "mainly clear"), 2: ("多云", "partly cloudy"), 3: ("阴", "overcast"),
    45: ("雾", "fog"), 48: ("雾凇", "depositing rime fog"),
    51: ("小毛毛雨", "light drizzle"), 53: ("毛毛雨", "drizzle"), 55: ("浓毛毛雨", "dense drizzle"),
    56: ("冻毛毛雨", "light freezing drizzle"), 57: ("浓冻毛毛雨", "dense freezing drizzle"),
    61: ("小雨", "slight rain"), 63: ("中雨", "moderate rain"), 65: ("大雨", "heavy rain"),
    66: ("冻雨", "light freezing rain"), 67: ("强冻雨", "heavy freezing rain"),
    71: ("小雪", "slight snow"), 73: ("中雪", "moderate snow"), 75: ("大雪", "heavy snow"), 77: ("米雪", "snow grains"),
    80: ("小阵雨", "slight rain showers"), 81: ("阵雨", "moderate rain showers"),
    82: ("强阵雨", "violent rain showers"),
    85: ("小阵雪", "slight snow showers"), 86: ("大阵雪", "heavy snow showers"),
    95: ("雷阵雨", "thunderstorm"), 96: ("雷阵雨伴有小冰雹", "thunderstorm with slight hail"),
    99: ("雷阵雨伴有大冰雹", "thunderstorm with heavy hail"),
}


def wmo_text(code: Any, zh: bool) -> str:
    try:
        pair = WMO.get(int(code))
    except (TypeError, ValueError):
        pair = None
    return (pair[0] if zh else pair[1]) if pair else ("未知" if zh else "unknown")


def _num(value: Any) -> Any:
    """QWeather sends numbers as strings; the model reads numbers more reliably."""
    if isinstance(value, str):
        try:
            f = float(value)
        except ValueError:
            return value
        return int(f) if f.is_integer() else f
    return value


async def _get_json(http: aiohttp.ClientSession, url: str, params: dict[str, Any], timeout_s: float,
                    headers: dict[str, str] | None = None) -> tuple[int, Any]:
    try:
        async with http.get(url, params=params, headers=headers,
                            timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            try:
                data = await resp.json(content_type=None)
            except ValueError:
                data = None
            return resp.status, data
    except TimeoutError:
        raise WeatherError(f"the weather service did not answer within {timeout_s:g} s") from None
    except aiohttp.ClientError as exc:
        raise WeatherError(f"the weather service could not be reached ({type(exc).__name__})") from None


# ---------------------------------------------------------------------------------- Open-Meteo


async def _open_meteo(http: aiohttp.ClientSession, s: Settings, city: str, days: int, zh: bool) -> dict:
    lang = "zh" if zh else "en"
    timeout = s.timeout_s
    place = None
    # "北京市" may only be known as "北京": retry without the administrative suffix.
    names = [city] + ([city[:-1]] if len(city) > 2 and city[-1] in "市县区省" else [])
    for name in names:
        status, data = await _get_json(http, s.geocoding_url,
                                       {"name": name, "count": 1, "language": lang, "format": "json"}, timeout)
        if status != 200:
            raise WeatherError(f"the geocoding service answered HTTP {status}: {_reason(data)}")
        results = (data or {}).get("results") or []
        if results:
            place = results[0]
            break
    if place is None:
        raise WeatherError(f"no place called {city!r} was found; ask the user for a nearby larger city")
    params = {
        "latitude": place["latitude"], "longitude": place["longitude"],
        "current": "temperature_2m,relative_humidity_2m,apparent_temperature,weather_code,wind_speed_10m",
        "daily": "weather_code,temperature_2m_max,temperature_2m_min,precipitation_probability_max",
        "timezone": "auto", "forecast_days": days,
    }
    status, data = await _get_json(http, s.forecast_url, params, timeout)
    if status != 200 or not isinstance(data, dict):
        raise WeatherError(f"the forecast service answered HTTP {status}: {_reason(data)}")
    cur = data.get("current") or {}
    daily = data.get("daily") or {}
    forecast = []
    for i, day in enumerate(daily.get("time") or []):
        def col(key: str, i: int = i) -> Any:
            values = daily.get(key) or []
            return values[i] if i < len(values) else None

        forecast.append({"date": day, "weather": wmo_text(col("weather_code"), zh),
                         "min_c": col("temperature_2m_min"), "max_c": col("temperature_2m_max"),
                         "rain_chance_pct": col("precipitation_probability_max")})
    where = ", ".join(str(x) for x in (place.get("name"), place.get("admin1"), place.get("country")) if x)
    return {
        "location": where,
        "now": {"weather": wmo_text(cur.get("weather_code"), zh), "temp_c": cur.get("temperature_2m"),
                "feels_like_c": cur.get("apparent_temperature"), "humidity_pct": cur.get("relative_humidity_2m"),
                "wind_kmh": cur.get("wind_speed_10m"), "observed": cur.get("time")},
        "forecast": forecast[:days],
        "source": "Open-Meteo",
    }


def _reason(data: Any) -> str:
    if isinstance(data, dict):
        for key in ("reason", "message", "detail"):
            if data.get(key):
                return str(data[key])[:200]
        err = data.get("error")
        if isinstance(err, dict):
            return str(err.get("detail") or err.get("title") or err)[:200]
    return "no details"


# ---------------------------------------------------------------------------------- QWeather


def _qweather_check(status: int, data: Any, what: str) -> dict:
    """QWeather reports errors either as an HTTP status with an `error` object or as HTTP 200
    with a `code` other than "200" in the body; both end here."""
    code = str(data.get("code", "")) if isinstance(data, dict) else ""
    if status == 200 and code == "200":
        return data
    if status == 401 or code == "401" or status == 403 or code in ("402", "403"):
        raise WeatherError("the weather service rejected the API key or the plan; check plugins.weather.api_key "
                           "and api_host")
    if status == 404 or code == "404":
        raise WeatherError(f"{what}: not found")
    if status == 429 or code == "429":
        raise WeatherError("the weather service's request quota is used up; try again later")
    raise WeatherError(f"{what}: HTTP {status}, code {code or '-'}: {_reason(data)}")


async def _qweather(http: aiohttp.ClientSession, s: Settings, city: str, days: int, zh: bool) -> dict:
    host = s.api_host
    timeout = s.timeout_s
    headers = {"X-QW-Api-Key": s.api_key.get_secret_value()}
    lang = "zh" if zh else "en"
    status, data = await _get_json(http, f"{host}/geo/v2/city/lookup",
                                   {"location": city, "number": 1, "lang": lang}, timeout, headers)
    try:
        geo = _qweather_check(status, data, f"city {city!r}")
    except WeatherError as exc:
        if str(exc).endswith("not found"):
            raise WeatherError(f"no place called {city!r} was found; ask the user for a nearby larger city") from None
        raise
    places = geo.get("location") or []
    if not places:
        raise WeatherError(f"no place called {city!r} was found; ask the user for a nearby larger city")
    place = places[0]
    loc_id = place["id"]
    span = "3d" if days <= 3 else "7d"
    (st_now, now_data), (st_days, days_data) = await asyncio.gather(
        _get_json(http, f"{host}/v7/weather/now", {"location": loc_id, "lang": lang}, timeout, headers),
        _get_json(http, f"{host}/v7/weather/{span}", {"location": loc_id, "lang": lang}, timeout, headers))
    now = _qweather_check(st_now, now_data, "current weather").get("now") or {}
    daily = _qweather_check(st_days, days_data, "forecast").get("daily") or []
    where = ", ".join(str(x) for x in (place.get("name"), place.get("adm1"), place.get("country")) if x)
    wind = str(now.get("windDir") or "")
    if now.get("windScale"):
        wind += f" {now['windScale']}级" if zh else f" force {now['windScale']}"
    return {
        "location": where,
        "now": {"weather": now.get("text"), "temp_c": _num(now.get("temp")),
                "feels_like_c": _num(now.get("feelsLike")), "humidity_pct": _num(now.get("humidity")),
                "wind": wind, "wind_kmh": _num(now.get("windSpeed")), "observed": now.get("obsTime")},
        "forecast": [{"date": d.get("fxDate"), "day": d.get("textDay"), "night": d.get("textNight"),
                      "min_c": _num(d.get("tempMin")), "max_c": _num(d.get("tempMax")),
                      "precip_mm": _num(d.get("precip"))} for d in daily[:days]],
        "source": "QWeather",
    }


@tool(timeout=10)
async def get_weather(ctx: ToolContext, city: str = "", days: int = 1) -> dict | ToolResult:
    """Get the current weather and the forecast for a city. Call only when the user asks about
    the weather, temperature, rain, snow or what to wear outside, e.g. "北京今天天气怎么样",
    "明天会下雨吗", "what's the weather in Berlin this weekend".

    Args:
        city: the city as the user said it, e.g. 北京, 上海浦东, Berlin; empty for the
            user's default location.
        days: days of forecast including today, 1 to 7 (1 for today, 2 to include tomorrow).
    """
    s = settings_of(ctx, Settings)
    city = " ".join(city.split()) or s.default_location.strip()
    if not city:
        return ToolResult.error("no city given and no default location configured; ask the user which city")
    days = max(1, min(7, days))
    zh = ctx.language.startswith("zh")
    async with http_session(ctx) as http:
        try:
            if s.provider == "qweather":
                return await _qweather(http, s, city, days, zh)
            return await _open_meteo(http, s, city, days, zh)
        except WeatherError as exc:
            return ToolResult.error(str(exc))
