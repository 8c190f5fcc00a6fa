"""The built-in plugins in plugins/, each run through `PluginTools.call` with a real ToolContext:
time/date/lunar, exit intent, persona (in-memory store), music (real audio files made with
espeak-ng and sox), weather (Open-Meteo and QWeather fakes) and Home Assistant (a fake HA REST
server)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import subprocess
import zoneinfo
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from harness.fakes.hass_server import FakeHomeAssistant
from harness.fakes.weather_server import FakeWeatherServer
from server.plugin_api import ToolAction, ToolContext, ToolResult
from server.tools.plugins import PluginConfigError, PluginTools


class MemoryKV:
    """An in-memory KeyValueStore."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], str] = {}

    async def get_value(self, user_id: str, key: str) -> str | None:
        return self.data.get((user_id, key))

    async def set_value(self, user_id: str, key: str, value: str | None) -> None:
        if value is None:
            self.data.pop((user_id, key), None)
        else:
            self.data[(user_id, key)] = value


def ctx(language: str = "zh", storage: Any = None, http: Any = None) -> ToolContext:
    return ToolContext(device_id="aa:bb:cc:dd:ee:ff", user_id="user-1", session_id="s-1", language=language,
                       storage=storage, http=http)


def data(result: ToolResult) -> Any:
    assert result.action is ToolAction.REPLY_LLM and not result.is_error, result.text
    return json.loads(result.text)


# ------------------------------------------------------------------------------ time_date


async def test_time_and_date_in_the_configured_zone() -> None:
    tools = PluginTools({"time_date": {"timezone": "America/New_York"}})
    result = data(await tools.call(ctx("en"), "get_time_and_date", {}))
    now = dt.datetime.now(zoneinfo.ZoneInfo("America/New_York"))
    shown = dt.datetime.strptime(f"{result['date']} {result['time']}", "%Y-%m-%d %H:%M").replace(tzinfo=now.tzinfo)
    assert abs((now - shown).total_seconds()) < 120
    assert result["weekday"] == now.strftime("%A")
    assert result["timezone"] == "America/New_York"
    zh = data(await tools.call(ctx("zh"), "get_time_and_date", {}))
    assert zh["weekday"].startswith("星期")


async def test_lunar_date() -> None:
    tools = PluginTools({"time_date": {}})
    spring = data(await tools.call(ctx(), "get_lunar_date", {"date": "2026-02-17"}))
    assert spring["lunar_date"] == "丙午年正月初一"
    assert (spring["lunar_month"], spring["lunar_day"], spring["leap_month"]) == (1, 1, False)
    assert spring["zodiac"] == "马" and "春节" in spring["festivals"]
    assert spring["next_solar_term"].startswith("雨水")
    leap = data(await tools.call(ctx(), "get_lunar_date", {"date": "2025-07-25"}))
    assert leap["leap_month"] is True and "闰六月" in leap["lunar_date"]
    today = data(await tools.call(ctx(), "get_lunar_date", {}))
    assert today["date"] == dt.date.today().isoformat() or abs(
        (dt.date.fromisoformat(today["date"]) - dt.date.today()).days) <= 1
    bad = await tools.call(ctx(), "get_lunar_date", {"date": "next friday"})
    assert bad.is_error and "YYYY-MM-DD" in bad.text


def test_time_zone_setting_is_validated() -> None:
    with pytest.raises(PluginConfigError, match=r"^plugins\.time_date\.timezone: .*unknown time zone"):
        PluginTools({"time_date": {"timezone": "Mars/Olympus"}})


# ------------------------------------------------------------------------------ exit_intent


async def test_exit_intent_ends_the_session() -> None:
    tools = PluginTools({"exit_intent": {}})
    zh = await tools.call(ctx("zh"), "end_conversation", {})
    assert zh.action is ToolAction.END_SESSION and "再见" in zh.text
    en = await tools.call(ctx("en"), "end_conversation", {"farewell": "  See   you tomorrow! "})
    assert (en.action, en.text) == (ToolAction.END_SESSION, "See you tomorrow!")
    long = await tools.call(ctx("en"), "end_conversation", {"farewell": "bye " * 100})
    assert len(long.text) <= 63
    spec = tools.specs()[0]
    assert "ONLY" in spec.description and "farewell" in spec.parameters["properties"]


# ------------------------------------------------------------------------------ persona


async def test_persona_is_stored_per_user_and_reset() -> None:
    kv = MemoryKV()
    tools = PluginTools({"persona": {"max_chars": 40}})
    said = await tools.call(ctx("zh", kv), "set_persona",
                            {"persona": "你是一个  说话很温柔的英语老师，名叫小美。", "name": "小美"})
    assert said.action is ToolAction.SPEAK and "小美" in said.text
    assert await kv.get_value("user-1", "persona") == "你是一个 说话很温柔的英语老师，名叫小美。"
    en = await tools.call(ctx("en", kv), "set_persona", {"persona": "You are a grumpy pirate " + "arr " * 50})
    assert en.action is ToolAction.SPEAK and en.text == "Okay, I've switched to the new role."
    assert len(await kv.get_value("user-1", "persona") or "") == 40
    reset = await tools.call(ctx("en", kv), "reset_persona", {})
    assert reset.action is ToolAction.SPEAK and await kv.get_value("user-1", "persona") is None


async def test_persona_errors() -> None:
    tools = PluginTools({"persona": {}})
    no_store = await tools.call(ctx("en"), "set_persona", {"persona": "You are a pirate."})
    assert no_store.is_error and "storage" in no_store.text
    empty = await tools.call(ctx("en", MemoryKV()), "set_persona", {"persona": "   "})
    assert empty.is_error
    missing = await tools.call(ctx("en", MemoryKV()), "set_persona", {})
    assert missing.is_error and "'persona'" in missing.text


# ------------------------------------------------------------------------------ music


@pytest.fixture(scope="module")
def music_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (shutil.which("sox") and shutil.which("espeak-ng")):
        pytest.skip("sox and espeak-ng are needed to make test songs")
    d = tmp_path_factory.mktemp("music")
    (d / "album").mkdir()

    def run(*cmd: str) -> None:
        subprocess.run(cmd, check=True, capture_output=True, timeout=30)

    run("espeak-ng", "-v", "cmn", "-w", str(d / "speech.tmp.wav"), "晴天，刮风这天我试过握着你手")
    run("sox", str(d / "speech.tmp.wav"), str(d / "晴天.mp3"))
    (d / "speech.tmp.wav").unlink()
    run("sox", "-n", "-r", "44100", "-c", "2", str(d / "album" / "七里香.flac"), "synth", "1.5", "sine", "440")
    run("sox", "-n", "-r", "22050", "-c", "1", str(d / "01 - Yellow Submarine.ogg"), "synth", "1", "sine", "330")
    run("espeak-ng", "-v", "en-us", "-w", str(d / "Hello World.wav"), "hello world, this is a song")
    (d / "notes.txt").write_text("not music")
    return d


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([c async for c in chunks])


def open_fds_to(path: Path) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                count += 1
        except OSError:
            pass
    return count


async def test_music_plays_a_fuzzy_matched_song(music_dir: Path) -> None:
    import miniaudio

    tools = PluginTools({"music": {"music_dir": str(music_dir), "chunk_ms": 100}})
    result = await tools.call(ctx("zh"), "play_music", {"song": "我想听晴天"})
    assert result.action is ToolAction.PLAY_AUDIO and result.text == "正在播放《晴天》"
    info = miniaudio.get_file_info(str(music_dir / "晴天.mp3"))
    assert result.audio_rate == info.sample_rate
    pcm = await collect(result.audio)
    assert len(pcm) % 2 == 0
    seconds = len(pcm) / 2 / result.audio_rate  # mono PCM16
    assert abs(seconds - info.duration) < 0.15
    assert np.abs(np.frombuffer(pcm, dtype=np.int16)).max() > 1000  # real speech, not silence


@pytest.mark.parametrize("query, title, language", [
    ("七里香", "七里香", "zh"),
    ("播放《七里香》这首歌", "七里香", "zh"),
    ("yellow submarine", "01 - Yellow Submarine", "en"),
    ("play the song Helo World", "Hello World", "en"),
])
async def test_music_matching(music_dir: Path, query: str, title: str, language: str) -> None:
    tools = PluginTools({"music": {"music_dir": str(music_dir)}})
    result = await tools.call(ctx(language), "play_music", {"song": query})
    assert result.action is ToolAction.PLAY_AUDIO, result.text
    assert title in result.text
    await result.audio.aclose()


async def test_music_stereo_flac_is_downmixed(music_dir: Path) -> None:
    tools = PluginTools({"music": {"music_dir": str(music_dir)}})
    result = await tools.call(ctx("en"), "play_music", {"song": "七里香"})
    assert result.audio_rate == 44100
    pcm = await collect(result.audio)
    assert abs(len(pcm) / 2 / 44100 - 1.5) < 0.05


async def test_music_random_list_and_not_found(music_dir: Path) -> None:
    tools = PluginTools({"music": {"music_dir": str(music_dir)}})
    titles = {"晴天", "七里香", "01 - Yellow Submarine", "Hello World"}
    random_pick = await tools.call(ctx("en"), "play_music", {})
    assert random_pick.action is ToolAction.PLAY_AUDIO
    assert random_pick.text.removeprefix("Playing ") in titles
    await random_pick.audio.aclose()
    listing = data(await tools.call(ctx("en"), "list_music", {}))
    assert listing["count"] == 4 and set(listing["songs"]) == titles
    missing = await tools.call(ctx("en"), "play_music", {"song": "Bohemian Rhapsody"})
    assert missing.action is ToolAction.REPLY_LLM and not missing.is_error
    assert "No song matches" in missing.text and "Hello World" in missing.text


async def test_music_empty_folder_and_broken_file(tmp_path: Path) -> None:
    tools = PluginTools({"music": {"music_dir": str(tmp_path / "nothing")}})
    empty = await tools.call(ctx("en"), "play_music", {"song": "x"})
    assert empty.action is ToolAction.REPLY_LLM and "no songs" in empty.text
    (tmp_path / "broken.mp3").write_bytes(os.urandom(2000))
    tools = PluginTools({"music": {"music_dir": str(tmp_path)}})
    broken = await tools.call(ctx("en"), "play_music", {"song": "broken"})
    assert broken.is_error and "cannot be played" in broken.text


async def test_music_stream_closes_its_file_when_closed(music_dir: Path) -> None:
    path = music_dir / "album" / "七里香.flac"
    tools = PluginTools({"music": {"music_dir": str(music_dir), "chunk_ms": 50}})
    result = await tools.call(ctx("en"), "play_music", {"song": "七里香"})
    assert open_fds_to(path) == 0  # nothing is opened before the session starts pulling
    first = await anext(result.audio)
    assert len(first) == 44100 // 20 * 2
    assert open_fds_to(path) == 1
    await result.audio.aclose()  # the user interrupted
    assert open_fds_to(path) == 0
    with pytest.raises(StopAsyncIteration):
        await anext(result.audio)


async def test_music_stream_survives_cancellation_mid_read(music_dir: Path) -> None:
    path = music_dir / "album" / "七里香.flac"
    tools = PluginTools({"music": {"music_dir": str(music_dir), "chunk_ms": 20}})
    result = await tools.call(ctx("en"), "play_music", {"song": "七里香"})
    first = asyncio.Event()

    async def consume() -> None:
        # No await of its own: a cancel lands inside the generator, while a chunk decodes.
        async for _ in result.audio:
            first.set()

    task = asyncio.create_task(consume())
    await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await result.audio.aclose()  # what the session does after an interruption; a no-op here
    for _ in range(200):  # the decoder may be closed by a worker once its last read returns
        if open_fds_to(path) == 0:
            break
        await asyncio.sleep(0.01)
    assert open_fds_to(path) == 0


# ------------------------------------------------------------------------------ weather


@pytest.fixture
async def weather() -> AsyncIterator[FakeWeatherServer]:
    async with FakeWeatherServer() as server:
        yield server


def open_meteo(server: FakeWeatherServer, **extra: Any) -> dict[str, Any]:
    return {"geocoding_url": f"{server.url}/v1/search", "forecast_url": f"{server.url}/v1/forecast", **extra}


def qweather(server: FakeWeatherServer, **extra: Any) -> dict[str, Any]:
    return {"provider": "qweather", "api_host": server.url, "api_key": server.api_key, **extra}


async def test_weather_open_meteo(weather: FakeWeatherServer) -> None:
    tools = PluginTools({"weather": open_meteo(weather)})
    zh = data(await tools.call(ctx("zh"), "get_weather", {"city": "北京", "days": 2}))
    assert zh["location"] == "北京, 北京市, 中国" and zh["source"] == "Open-Meteo"
    assert zh["now"]["weather"] == "多云" and zh["now"]["temp_c"] == 24.0 and zh["now"]["humidity_pct"] == 72
    assert len(zh["forecast"]) == 2 and zh["forecast"][0]["date"] == dt.date.today().isoformat()
    assert zh["forecast"][0]["max_c"] == 27.0
    paths = [p for p, _ in weather.requests]
    assert paths == ["/v1/search", "/v1/forecast"]
    q = weather.requests[1][1]
    assert q["forecast_days"] == "2" and "weather_code" in q["current"] and q["timezone"] == "auto"
    en = data(await tools.call(ctx("en"), "get_weather", {"city": "Berlin"}))
    assert en["now"]["weather"] == "overcast" and len(en["forecast"]) == 1


async def test_weather_open_meteo_retries_without_city_suffix(weather: FakeWeatherServer) -> None:
    # The fake knows 北京市 directly; 上海市 only as 上海.
    tools = PluginTools({"weather": open_meteo(weather)})
    result = data(await tools.call(ctx("zh"), "get_weather", {"city": "上海市"}))
    assert result["location"].startswith("上海") and result["now"]["weather"] == "小雨"
    assert [q["name"] for p, q in weather.requests if p == "/v1/search"] == ["上海市", "上海"]


async def test_weather_qweather(weather: FakeWeatherServer) -> None:
    tools = PluginTools({"weather": qweather(weather)})
    result = data(await tools.call(ctx("zh"), "get_weather", {"city": "上海", "days": "3"}))
    assert result["source"] == "QWeather" and result["location"] == "上海, 上海市, 中国"
    assert result["now"] == {"weather": "小雨", "temp_c": 18, "feels_like_c": 18, "humidity_pct": 80,
                             "wind": "东南风 1级", "wind_kmh": 3, "observed": result["now"]["observed"]}
    assert len(result["forecast"]) == 3 and result["forecast"][0]["precip_mm"] == 1.5
    paths = [p for p, _ in weather.requests]
    assert paths[0] == "/geo/v2/city/lookup" and set(paths[1:]) == {"/v7/weather/now", "/v7/weather/3d"}
    assert all("key" not in q for _, q in weather.requests)  # the key travels in a header
    week = data(await tools.call(ctx("en"), "get_weather", {"city": "Beijing", "days": 5}))
    assert len(week["forecast"]) == 5 and week["now"]["weather"] == "Cloudy"
    assert "/v7/weather/7d" in [p for p, _ in weather.requests]


async def test_weather_errors(weather: FakeWeatherServer) -> None:
    bad_key = PluginTools({"weather": qweather(weather, api_key="wrong")})
    result = await bad_key.call(ctx("en"), "get_weather", {"city": "Beijing"})
    assert result.is_error and "api_key" in result.text
    unknown = await PluginTools({"weather": qweather(weather)}).call(ctx("en"), "get_weather", {"city": "Atlantis"})
    assert unknown.is_error and "Atlantis" in unknown.text
    om = PluginTools({"weather": open_meteo(weather)})
    unknown = await om.call(ctx("en"), "get_weather", {"city": "Atlantis"})
    assert unknown.is_error and "Atlantis" in unknown.text
    no_city = await om.call(ctx("en"), "get_weather", {})
    assert no_city.is_error and "which city" in no_city.text
    default = PluginTools({"weather": open_meteo(weather, default_location="Berlin")})
    assert data(await default.call(ctx("en"), "get_weather", {}))["location"].startswith("Berlin")


async def test_weather_timeout_and_unreachable(weather: FakeWeatherServer) -> None:
    weather.delay_s = 1.0
    slow = PluginTools({"weather": open_meteo(weather, timeout_s=0.2)})
    t0 = asyncio.get_running_loop().time()
    result = await slow.call(ctx("en"), "get_weather", {"city": "Berlin"})
    assert result.is_error and "did not answer within 0.2 s" in result.text
    assert asyncio.get_running_loop().time() - t0 < 0.9
    with socket_closed_port() as port:
        dead = PluginTools({"weather": {"geocoding_url": f"http://127.0.0.1:{port}/v1/search"}})
        result = await dead.call(ctx("en"), "get_weather", {"city": "Berlin"})
    assert result.is_error and "could not be reached" in result.text


def test_weather_settings() -> None:
    with pytest.raises(PluginConfigError, match=r"^plugins\.weather: .*needs api_host and api_key"):
        PluginTools({"weather": {"provider": "qweather"}})
    with pytest.raises(PluginConfigError, match=r"^plugins\.weather\.provider: "):
        PluginTools({"weather": {"provider": "yahoo"}})
    tools = PluginTools({"weather": {"provider": "qweather", "api_host": "abc.re.qweatherapi.com", "api_key": "k"}})
    settings = tools._entries["get_weather"].settings
    assert settings is not None and settings.api_host == "https://abc.re.qweatherapi.com"  # type: ignore[attr-defined]
    assert "k" not in repr(settings.api_key)  # type: ignore[attr-defined]  # a SecretStr: never printed in logs


class socket_closed_port:
    """A local port with nothing listening."""

    def __enter__(self) -> int:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        return self.port

    def __exit__(self, *exc: object) -> None:
        return None


# ------------------------------------------------------------------------------ Home Assistant

ENTITIES = [
    {"entity_id": "light.living_room", "name": ["客厅灯", "living room light"], "area": "客厅"},
    {"entity_id": "light.bedroom", "name": ["卧室灯", "bedroom light"], "area": "卧室"},
    {"entity_id": "switch.kettle", "name": ["烧水壶", "kettle"]},
    {"entity_id": "cover.curtain", "name": ["窗帘", "curtains"], "area": "客厅"},
    {"entity_id": "climate.ac", "name": ["空调", "air conditioner"]},
    {"entity_id": "sensor.bedroom_temperature", "name": ["卧室温度", "bedroom temperature"]},
    {"entity_id": "light.ghost", "name": ["幽灵灯", "ghost light"]},  # configured, but not in HA
]


@pytest.fixture
async def hass() -> AsyncIterator[FakeHomeAssistant]:
    fake = FakeHomeAssistant(token="long-lived-token")
    fake.add("light.living_room", "off", friendly_name="Living Room", brightness=None,
             supported_color_modes=["brightness"])
    fake.add("light.bedroom", "on", friendly_name="Bedroom", brightness=255)
    fake.add("switch.kettle", "off", friendly_name="Kettle")
    fake.add("cover.curtain", "closed", friendly_name="Curtain", current_position=0)
    fake.add("climate.ac", "cool", friendly_name="AC", temperature=24, current_temperature=27.5)
    fake.add("sensor.bedroom_temperature", "22.4", unit_of_measurement="°C", friendly_name="Bedroom temperature")
    async with fake:
        yield fake


COVER_SERVICES = {"cover": ["open_cover", "close_cover", "stop_cover", "set_cover_position"]}


def hass_tools(fake: FakeHomeAssistant, **extra: Any) -> PluginTools:
    return PluginTools({"home_assistant": {"base_url": fake.url, "token": fake.token, "entities": ENTITIES, **extra}})


async def test_hass_light_switched_on_and_read_back(hass: FakeHomeAssistant) -> None:
    tools = hass_tools(hass)
    async with aiohttp.ClientSession() as http:  # the server's shared session
        c = ctx("zh", http=http)
        before = data(await tools.call(c, "hass_get_state", {"entity": "客厅灯"}))
        assert before["state"] == "off" and before["entity_id"] == "light.living_room"
        done = data(await tools.call(c, "hass_set_state", {"entity": "客厅的灯", "state": "on", "brightness": "30"}))
        assert done["done"] == "light.turn_on" and done["state"] == "on" and done["brightness_pct"] == 30
        assert [(x.domain, x.service, x.data) for x in hass.calls] == [
            ("light", "turn_on", {"entity_id": "light.living_room", "brightness_pct": 30})]
        assert hass.states["light.living_room"]["state"] == "on"
        after = data(await tools.call(ctx("en", http=http), "hass_get_state", {"entity": "living room light"}))
        assert after["state"] == "on" and after["brightness_pct"] == 30 and after["area"] == "客厅"
        assert not http.closed


@pytest.mark.parametrize("args, service, state", [
    ({"entity": "烧水壶", "state": "open"}, ("switch", "turn_on", {}), "on"),
    ({"entity": "bedroom light", "state": "off"}, ("light", "turn_off", {}), "off"),
    ({"entity": "卧室灯", "state": "on", "brightness": 0}, ("light", "turn_off", {}), "off"),
    ({"entity": "窗帘", "state": "on", "position": 40}, ("cover", "set_cover_position", {"position": 40}), "open"),
    ({"entity": "curtains", "state": "open"}, ("cover", "open_cover", {}), "open"),
    ({"entity": "空调", "state": "on", "temperature": 26}, ("climate", "set_temperature", {"temperature": 26.0}),
     "cool"),
    ({"entity": "air conditioner", "state": "off"}, ("climate", "turn_off", {}), "off"),
])
async def test_hass_services(hass: FakeHomeAssistant, args: dict, service: tuple, state: str) -> None:
    result = data(await hass_tools(hass, services=COVER_SERVICES).call(ctx("en"), "hass_set_state", args))
    call = hass.calls[-1]
    entity_id = result["entity_id"]
    assert (call.domain, call.service, call.data) == (service[0], service[1], {"entity_id": entity_id, **service[2]})
    assert result["state"] == state


async def test_hass_sensor_and_ignored_values(hass: FakeHomeAssistant) -> None:
    tools = hass_tools(hass)
    sensor = data(await tools.call(ctx("zh"), "hass_get_state", {"entity": "卧室温度"}))
    assert (sensor["state"], sensor["unit_of_measurement"]) == ("22.4", "°C")
    kettle = data(await tools.call(ctx("en"), "hass_set_state", {"entity": "kettle", "state": "on", "brightness": 50}))
    assert kettle["state"] == "on" and "brightness" in kettle["notes"][0]


async def test_hass_errors(hass: FakeHomeAssistant) -> None:
    bad_token = await hass_tools(hass, token="stolen").call(ctx("en"), "hass_get_state", {"entity": "kettle"})
    assert bad_token.is_error and "401" in bad_token.text and "token" in bad_token.text
    tools = hass_tools(hass)
    unknown = await tools.call(ctx("en"), "hass_set_state", {"entity": "garage door", "state": "open"})
    assert unknown.is_error and "garage door" in unknown.text and "客厅灯" in unknown.text
    assert not hass.calls  # nothing was switched by a guess
    absent = await tools.call(ctx("en"), "hass_get_state", {"entity": "ghost light"})
    assert absent.is_error and "no entity light.ghost" in absent.text
    ambiguous = await tools.call(ctx("zh"), "hass_set_state", {"entity": "灯", "state": "on"})
    assert ambiguous.is_error and "several" in ambiguous.text
    wrong_state = await hass_tools(hass, services=COVER_SERVICES).call(
        ctx("en"), "hass_set_state", {"entity": "curtains", "state": "lock"})
    assert wrong_state.is_error and "cover" in wrong_state.text
    bad_enum = await tools.call(ctx("en"), "hass_set_state", {"entity": "kettle", "state": "explode"})
    assert bad_enum.is_error and "'state'" in bad_enum.text
    unlisted = await tools.call(ctx("en"), "hass_get_state", {"entity": "switch.kettle2"})
    assert unlisted.is_error


async def test_hass_timeout(hass: FakeHomeAssistant) -> None:
    hass.delay_s = 1.0
    result = await hass_tools(hass, timeout_s=0.2).call(ctx("en"), "hass_get_state", {"entity": "kettle"})
    assert result.is_error and "did not answer within 0.2 s" in result.text


async def test_hass_spoken_confirmation_and_descriptions(hass: FakeHomeAssistant) -> None:
    tools = hass_tools(hass, speak_confirmation=True)
    said = await tools.call(ctx("zh"), "hass_set_state", {"entity": "客厅灯", "state": "on", "brightness": 50})
    assert said.action is ToolAction.SPEAK and said.text == "好的，客厅灯已打开，亮度50%。"
    specs = {s.name: s for s in tools.specs()}
    for name in ("hass_get_state", "hass_set_state"):
        assert "客厅灯 / living room light (light.living_room, 客厅)" in specs[name].description
    assert specs["hass_set_state"].cancel_on_interruption is False
    assert specs["hass_set_state"].parameters["properties"]["state"]["enum"][:3] == ["on", "off", "toggle"]
    assert specs["hass_set_state"].parameters["required"] == ["entity", "state"]


async def test_hass_allow_list_refuses_the_rest(hass: FakeHomeAssistant) -> None:
    """Issue 10: an empty list allowed every entity and a listed lock had no guard. Now: empty
    = nothing; unlisted ids are never sent to HA; sensitive domains need their services named;
    and the refusal reads the same for an id that exists in HA and one that does not."""
    hass.add("lock.front_door", "locked", friendly_name="Front door")
    hass.add("alarm_control_panel.home", "armed_away", friendly_name="Alarm")
    no_list = PluginTools({"home_assistant": {"base_url": hass.url, "token": hass.token}})
    assert "No device is configured" in no_list.specs()[0].description
    for entity in ("light.bedroom", "lock.front_door", "bedroom light"):
        assert (await no_list.call(ctx("en"), "hass_get_state", {"entity": entity})).is_error
    assert (await no_list.call(ctx("en"), "hass_set_state", {"entity": "lock.front_door", "state": "unlock"})).is_error
    tools = hass_tools(hass)
    exists = await tools.call(ctx("en"), "hass_set_state", {"entity": "lock.front_door", "state": "unlock"})
    absent = await tools.call(ctx("en"), "hass_set_state", {"entity": "lock.back_door", "state": "unlock"})
    assert exists.is_error and absent.is_error and exists.text == absent.text
    assert "front_door" not in exists.text and "lock." not in exists.text
    read_exists = await tools.call(ctx("en"), "hass_get_state", {"entity": "alarm_control_panel.home"})
    read_absent = await tools.call(ctx("en"), "hass_get_state", {"entity": "alarm_control_panel.away"})
    assert read_exists.text == read_absent.text
    # A listed lock and a listed garage door: still refused until their services are named.
    listed = ENTITIES + [{"entity_id": "lock.front_door", "name": ["front door lock", "前门锁"]},
                         {"entity_id": "cover.garage", "name": ["garage door", "车库门"]}]
    hass.add("cover.garage", "closed", friendly_name="Garage", current_position=0)
    guarded = PluginTools({"home_assistant": {"base_url": hass.url, "token": hass.token, "entities": listed}})
    for entity, state in (("front door lock", "unlock"), ("garage door", "open"), ("curtains", "open")):
        refused = await guarded.call(ctx("en"), "hass_set_state", {"entity": entity, "state": state})
        assert refused.is_error and "that device or action is not available" in refused.text
    assert data(await guarded.call(ctx("en"), "hass_get_state", {"entity": "前门锁"}))["state"] == "locked"
    # Per-domain services: only the named ones.
    named = PluginTools({"home_assistant": {"base_url": hass.url, "token": hass.token, "entities": listed,
                                            "services": {"lock": ["lock"], "cover": ["close_cover"],
                                                         "switch": []}}})
    assert (await named.call(ctx("en"), "hass_set_state", {"entity": "front door lock", "state": "unlock"})).is_error
    assert (await named.call(ctx("en"), "hass_set_state", {"entity": "kettle", "state": "on"})).is_error
    assert not hass.calls  # nothing refused ever reached Home Assistant
    assert data(await named.call(ctx("en"), "hass_set_state", {"entity": "front door lock", "state": "lock"}))[
        "state"] == "locked"
    assert [(c.domain, c.service) for c in hass.calls] == [("lock", "lock")]
    assert not any(path.endswith(("lock.back_door", "alarm_control_panel.away", "alarm_control_panel.home"))
                   for _, path in hass.requests)


def test_hass_settings() -> None:
    with pytest.raises(PluginConfigError, match=r"^plugins\.home_assistant\.token: Field required$"):
        PluginTools({"home_assistant": {"base_url": "http://ha.local:8123"}})
    with pytest.raises(PluginConfigError, match=r"^plugins\.home_assistant\.entities\[0\]\.entity_id: "):
        PluginTools({"home_assistant": {"token": "t", "entities": [{"entity_id": "Kitchen Light", "name": "x"}]}})
    with pytest.raises(PluginConfigError, match=r"^plugins\.home_assistant\.base_url: .*http"):
        PluginTools({"home_assistant": {"token": "t", "base_url": "ha.local"}})
