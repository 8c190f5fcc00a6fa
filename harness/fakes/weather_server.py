"""A local stand-in for two weather APIs (aiohttp, 127.0.0.1), in their real response shapes.

Open-Meteo (no key):
- `GET /v1/search?name=&count=&language=&format=json` (geocoding) -> `{"results": [{id, name,
  latitude, longitude, elevation, timezone, country, country_code, admin1, ...}],
  "generationtime_ms"}`; no match -> the same object without `results`;
- `GET /v1/forecast?latitude=&longitude=&current=a,b&daily=c,d&timezone=auto&forecast_days=N`
  -> `{latitude, longitude, timezone, current_units, current: {time, interval, <vars>},
  daily_units, daily: {time: [...], <vars>: [...]}}`; a missing coordinate -> HTTP 400
  `{"error": true, "reason": "..."}`.

QWeather (API host + key, `X-QW-Api-Key` header or `key=` parameter; gzip-compressed JSON):
- `GET /geo/v2/city/lookup?location=&number=&lang=` -> `{"code": "200", "location": [{name, id,
  lat, lon, adm2, adm1, country, tz, utcOffset, isDst, type, rank, fxLink}], "refer"}`; no
  match -> `{"code": "404"}`;
- `GET /v7/weather/now?location=<id>` -> `{"code": "200", "updateTime", "fxLink", "now": {obsTime,
  temp, feelsLike, icon, text, wind360, windDir, windScale, windSpeed, humidity, precip, pressure,
  vis, cloud, dew}, "refer"}` (numbers as strings, as QWeather sends them);
- `GET /v7/weather/3d` and `/7d` -> `{"code": "200", "daily": [{fxDate, tempMax, tempMin, textDay,
  textNight, windDirDay, windScaleDay, humidity, precip, uvIndex, ...}]}`;
- a missing or wrong key -> HTTP 401 with `{"error": {"status": 401, "type", "title", "detail"}}`.

`delay_s` slows every answer (timeout tests); `requests` records (path, query) pairs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .http_base import FakeHTTPServer

# name variants -> place; the same fixture serves both APIs
PLACES: list[dict[str, Any]] = [
    {"names": {"北京", "beijing", "北京市"}, "zh": "北京", "en": "Beijing", "lat": 39.9075, "lon": 116.39723,
     "admin1_zh": "北京市", "admin1_en": "Beijing", "country_zh": "中国", "country_en": "China",
     "qweather_id": "101010100", "tz": "Asia/Shanghai"},
    {"names": {"上海", "shanghai"}, "zh": "上海", "en": "Shanghai", "lat": 31.22222, "lon": 121.45806,
     "admin1_zh": "上海市", "admin1_en": "Shanghai", "country_zh": "中国", "country_en": "China",
     "qweather_id": "101020100", "tz": "Asia/Shanghai"},
    {"names": {"berlin", "柏林"}, "zh": "柏林", "en": "Berlin", "lat": 52.52437, "lon": 13.41053,
     "admin1_zh": "柏林州", "admin1_en": "State of Berlin", "country_zh": "德国", "country_en": "Germany",
     "qweather_id": "2950159", "tz": "Europe/Berlin"},
]

# fixed weather per place: current (temp, feels, humidity, wmo code, wind) and daily base values
WEATHER = {
    "Beijing": {"temp": 24.0, "feels": 26.0, "humidity": 72, "code": 2, "wind": 3.2, "qw_text": ("多云", "Cloudy")},
    "Shanghai": {"temp": 18.5, "feels": 17.9, "humidity": 80, "code": 61, "wind": 12.0,
                 "qw_text": ("小雨", "Light Rain")},
    "Berlin": {"temp": 5.0, "feels": 2.1, "humidity": 65, "code": 3, "wind": 15.4, "qw_text": ("阴", "Overcast")},
}


def find_place(name: str) -> dict[str, Any] | None:
    key = name.strip().lower()
    for p in PLACES:
        if key in p["names"]:
            return p
    return None


@dataclass
class FakeWeatherServer(FakeHTTPServer):
    api_key: str = "test-qweather-key"
    delay_s: float = 0.0
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/v1/search", self._om_search)
        app.router.add_get("/v1/forecast", self._om_forecast)
        app.router.add_get("/geo/v2/city/lookup", self._qw_lookup)
        app.router.add_get("/v7/weather/now", self._qw_now)
        app.router.add_get("/v7/weather/{days:(3d|7d)}", self._qw_daily)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.path, dict(request.query)))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return await handler(request)

    # ------------------------------------------------------------------------- Open-Meteo

    async def _om_search(self, request: web.Request) -> web.Response:
        q = request.query
        lang = q.get("language", "en")
        body: dict[str, Any] = {"generationtime_ms": 0.4}
        name = q.get("name", "")
        place = find_place(name) if len(name) >= 2 else None
        if place is not None:
            zh = lang == "zh"
            body["results"] = [{
                "id": abs(hash(place["en"])) % 10_000_000, "name": place["zh" if zh else "en"],
                "latitude": place["lat"], "longitude": place["lon"], "elevation": 44.0,
                "feature_code": "PPLC", "country_code": "CN" if place["country_en"] == "China" else "DE",
                "timezone": place["tz"], "population": 1000000,
                "country": place["country_zh" if zh else "country_en"],
                "admin1": place["admin1_zh" if zh else "admin1_en"],
            }][: int(q.get("count", "10"))]
        return web.json_response(body)

    async def _om_forecast(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            lat, lon = float(q["latitude"]), float(q["longitude"])
        except (KeyError, ValueError):
            return web.json_response({"error": True, "reason": "Parameter 'latitude' and 'longitude' must have the "
                                                               "same number of elements"}, status=400)
        place = min(PLACES, key=lambda p: abs(p["lat"] - lat) + abs(p["lon"] - lon))
        w = WEATHER[place["en"]]
        days = int(q.get("forecast_days", "7"))
        today = dt.date.today()
        current_vars = [v for v in q.get("current", "").split(",") if v]
        daily_vars = [v for v in q.get("daily", "").split(",") if v]
        current_values = {"temperature_2m": w["temp"], "relative_humidity_2m": w["humidity"],
                          "apparent_temperature": w["feels"], "weather_code": w["code"],
                          "wind_speed_10m": w["wind"]}
        units = {"temperature_2m": "°C", "relative_humidity_2m": "%", "apparent_temperature": "°C",
                 "weather_code": "wmo code", "wind_speed_10m": "km/h", "temperature_2m_max": "°C",
                 "temperature_2m_min": "°C", "precipitation_probability_max": "%"}
        body: dict[str, Any] = {"latitude": round(lat, 4), "longitude": round(lon, 4), "generationtime_ms": 0.1,
                                "utc_offset_seconds": 28800, "timezone": place["tz"],
                                "timezone_abbreviation": "GMT+8", "elevation": 44.0}
        if current_vars:
            body["current_units"] = {"time": "iso8601", "interval": "seconds",
                                     **{v: units.get(v, "") for v in current_vars}}
            body["current"] = {"time": dt.datetime.now().strftime("%Y-%m-%dT%H:00"), "interval": 900,
                               **{v: current_values.get(v) for v in current_vars}}
        if daily_vars:
            series = {
                "weather_code": [w["code"] if i == 0 else 0 for i in range(days)],
                "temperature_2m_max": [round(w["temp"] + 3 + i, 1) for i in range(days)],
                "temperature_2m_min": [round(w["temp"] - 6 + i, 1) for i in range(days)],
                "precipitation_probability_max": [60 if w["code"] >= 51 else 5 for _ in range(days)],
            }
            body["daily_units"] = {"time": "iso8601", **{v: units.get(v, "") for v in daily_vars}}
            body["daily"] = {"time": [(today + dt.timedelta(days=i)).isoformat() for i in range(days)],
                             **{v: series.get(v, [None] * days) for v in daily_vars}}
        return web.json_response(body)

    # ------------------------------------------------------------------------- QWeather

    def _key_ok(self, request: web.Request) -> bool:
        return (request.headers.get("X-QW-Api-Key") or request.query.get("key")) == self.api_key

    def _json(self, body: Any, status: int = 200) -> web.Response:
        resp = web.json_response(body, status=status)
        resp.enable_compression()  # QWeather always answers gzip-compressed
        return resp

    def _unauthorized(self) -> web.Response:
        return self._json({"error": {"status": 401, "type": "https://dev.qweather.com/docs/resource/error-code/#unauthorized",
                                     "title": "Unauthorized", "detail": "Invalid authentication credentials."}}, 401)

    async def _qw_lookup(self, request: web.Request) -> web.Response:
        if not self._key_ok(request):
            return self._unauthorized()
        place = find_place(request.query.get("location", ""))
        if place is None:
            return self._json({"code": "404"})
        zh = request.query.get("lang", "zh").startswith("zh")
        return self._json({"code": "200", "location": [{
            "name": place["zh" if zh else "en"], "id": place["qweather_id"], "lat": f"{place['lat']:.5f}",
            "lon": f"{place['lon']:.5f}", "adm2": place["zh" if zh else "en"],
            "adm1": place["admin1_zh" if zh else "admin1_en"], "country": place["country_zh" if zh else "country_en"],
            "tz": place["tz"], "utcOffset": "+08:00", "isDst": "0", "type": "city", "rank": "10",
            "fxLink": "https://www.qweather.com/weather/x.html"}],
            "refer": {"sources": ["QWeather"], "license": ["QWeather Developers License"]}})

    def _place_by_id(self, request: web.Request) -> dict[str, Any] | None:
        loc = request.query.get("location", "")
        return next((p for p in PLACES if p["qweather_id"] == loc), None)

    async def _qw_now(self, request: web.Request) -> web.Response:
        if not self._key_ok(request):
            return self._unauthorized()
        place = self._place_by_id(request)
        if place is None:
            return self._json({"code": "404"})
        w = WEATHER[place["en"]]
        zh = request.query.get("lang", "zh").startswith("zh")
        now = dt.datetime.now().strftime("%Y-%m-%dT%H:%M+08:00")
        return self._json({"code": "200", "updateTime": now, "fxLink": "https://www.qweather.com/weather/x.html",
                           "now": {"obsTime": now, "temp": f"{w['temp']:.0f}", "feelsLike": f"{w['feels']:.0f}",
                                   "icon": "101", "text": w["qw_text"][0 if zh else 1], "wind360": "123",
                                   "windDir": "东南风" if zh else "SE", "windScale": "1", "windSpeed": "3",
                                   "humidity": str(w["humidity"]), "precip": "0.0", "pressure": "1003", "vis": "16",
                                   "cloud": "10", "dew": "21"},
                           "refer": {"sources": ["QWeather"], "license": ["QWeather Developers License"]}})

    async def _qw_daily(self, request: web.Request) -> web.Response:
        if not self._key_ok(request):
            return self._unauthorized()
        place = self._place_by_id(request)
        if place is None:
            return self._json({"code": "404"})
        w = WEATHER[place["en"]]
        zh = request.query.get("lang", "zh").startswith("zh")
        n = 3 if request.match_info["days"] == "3d" else 7
        today = dt.date.today()
        daily = [{"fxDate": (today + dt.timedelta(days=i)).isoformat(), "sunrise": "06:30", "sunset": "17:10",
                  "tempMax": f"{w['temp'] + 3 + i:.0f}", "tempMin": f"{w['temp'] - 6 + i:.0f}", "iconDay": "100",
                  "textDay": w["qw_text"][0 if zh else 1] if i == 0 else ("晴" if zh else "Sunny"),
                  "iconNight": "150", "textNight": "晴" if zh else "Clear", "wind360Day": "0",
                  "windDirDay": "北风" if zh else "N", "windScaleDay": "1-3", "windSpeedDay": "3",
                  "humidity": str(w["humidity"]), "precip": "1.5" if i == 0 else "0.0", "pressure": "1010",
                  "vis": "25", "cloud": "20", "uvIndex": "3"} for i in range(n)]
        return self._json({"code": "200", "updateTime": dt.datetime.now().strftime("%Y-%m-%dT%H:%M+08:00"),
                           "fxLink": "https://www.qweather.com/weather/x.html", "daily": daily,
                           "refer": {"sources": ["QWeather"], "license": ["QWeather Developers License"]}})
