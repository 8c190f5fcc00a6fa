"""The plugin API (server/plugin_api.py) and plugin discovery (server/tools/plugins.py), without
any built-in plugin: schemas from signatures and docstrings, argument coercion, result mapping,
and the startup errors a wrong config produces."""

from __future__ import annotations

import enum
import json
import logging
import textwrap
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest

from server.plugin_api import (
    ArgumentError,
    EndSession,
    PlayAudio,
    Say,
    ToolAction,
    ToolContext,
    ToolResult,
    coerce_arguments,
    to_tool_result,
    tool,
    tr,
)
from server.tools.base import ToolSource
from server.tools.plugins import DEFAULT_PLUGIN_DIR, PluginConfigError, PluginTools, available_plugins


def make_ctx(language: str = "en", **kw: Any) -> ToolContext:
    return ToolContext(device_id="aa:bb:cc:dd:ee:ff", user_id="user-1", session_id="s-1", language=language, **kw)


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


@tool
async def forecast(ctx: ToolContext, city: str, days: int = 1, unit: Literal["c", "f"] = "c",
                   tags: list[str] | None = None, ids: list[int] | None = None,
                   loud: Annotated[bool, "say it loudly"] = False, note: str | None = None,
                   color: Color = Color.RED, ratio: float = 0.5) -> str:
    """Weather for a city. Call only when the user
    asks about the weather.

    Developer notes that the model never sees.

    Args:
        city (str): the city name,
            as the user said it.
        days: how many days, 1 to 3.
        loud: overridden by the Annotated text.

    Returns:
        a sentence.
    """
    return f"{city}:{days}:{unit}:{tags}:{ids}:{loud}:{note}:{color.value}:{ratio}"


# ------------------------------------------------------------------------------ schema


def test_schema_from_signature_and_docstring() -> None:
    spec = forecast.spec()
    assert spec.name == "forecast"
    assert spec.description == "Weather for a city. Call only when the user asks about the weather."
    p = spec.parameters
    assert p["type"] == "object"
    assert p["required"] == ["city"]
    props = p["properties"]
    assert props["city"] == {"type": "string", "description": "the city name, as the user said it."}
    assert props["days"] == {"type": "integer", "description": "how many days, 1 to 3.", "default": 1}
    assert props["unit"] == {"type": "string", "enum": ["c", "f"], "default": "c"}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert props["ids"] == {"type": "array", "items": {"type": "integer"}}
    assert props["loud"] == {"type": "boolean", "description": "say it loudly", "default": False}
    assert props["note"] == {"type": "string"}  # Optional: the plain type, not required
    assert props["color"] == {"type": "string", "enum": ["red", "green"], "default": "red"}
    assert props["ratio"]["type"] == "number"
    assert "ctx" not in props
    # The OpenAI function format the toolbox sends.
    schema = spec.openai_schema()
    assert schema["function"]["name"] == "forecast"
    assert json.loads(json.dumps(schema)) == schema


def test_decorator_options_and_defaults() -> None:
    assert forecast.spec().timeout_s == 10
    assert forecast.spec().cancel_on_interruption is True

    @tool(name="switch_light", description="Switch a light.", timeout=3, cancel_on_interruption=False)
    async def anything(ctx: ToolContext, on: bool) -> str:
        return "ok"

    spec = anything.spec()
    assert (spec.name, spec.description, spec.timeout_s, spec.cancel_on_interruption) == (
        "switch_light", "Switch a light.", 3.0, False)

    @tool("short_name")
    async def other(ctx: ToolContext) -> str:
        """Something."""
        return ""

    assert other.spec().name == "short_name"
    assert other.spec().parameters == {"type": "object", "properties": {}}


def test_chinese_docstring_lines_join_without_spaces() -> None:
    @tool
    async def cn(ctx: ToolContext, city: str) -> str:
        """查询城市的天气，
        只在用户问天气时调用。

        Args:
            city: 城市名，
                例如北京。
        """
        return city

    assert cn.spec().description == "查询城市的天气，只在用户问天气时调用。"
    assert cn.spec().parameters["properties"]["city"]["description"] == "城市名，例如北京。"


def test_description_from_settings_is_per_instance() -> None:
    @tool(description=lambda s: "Devices: " + ", ".join(s.get("devices", [])))
    async def devices(ctx: ToolContext) -> str:
        return ""

    assert devices.spec({"devices": ["lamp"]}).description == "Devices: lamp"
    assert devices.spec({"devices": ["fan"]}).description == "Devices: fan"
    assert devices.spec({"devices": ["lamp"]}) is not devices.spec({"devices": ["lamp"]})


def test_tool_without_context_parameter() -> None:
    @tool
    async def add(a: int, b: int = 2) -> int:
        """Add two numbers."""
        return a + b

    assert not add.takes_context
    assert add.spec().parameters["required"] == ["a"]


async def test_tool_object_still_callable() -> None:
    assert await forecast(make_ctx(), "Paris") == "Paris:1:c:None:None:False:None:red:0.5"


def test_sync_functions_are_rejected_at_decoration() -> None:
    with pytest.raises(TypeError, match="async def.*block the event loop"):
        @tool
        def blocking(ctx: ToolContext) -> str:
            """Blocks."""
            return ""

    with pytest.raises(TypeError, match="async generator"):
        @tool
        async def generator(ctx: ToolContext):  # type: ignore[no-untyped-def]
            """Yields."""
            yield "x"


@pytest.mark.parametrize("source, message", [
    ("async def f(ctx, x):\n    '''Doc.'''", "needs a type hint"),
    ("async def f(ctx, *args: int):\n    '''Doc.'''", r"\*args"),
    ("async def f(ctx, x: int | str):\n    '''Doc.'''", "unions of several types"),
    ("async def f(ctx, x: set[int]):\n    '''Doc.'''", "unsupported type"),
    ("async def f(ctx, x: int):\n    pass", "no description"),
    ("async def f(ctx, x: int):\n    '''Doc.\n\n    Args:\n        y: not a parameter.\n    '''", "do not exist: y"),
])
def test_bad_signatures_fail_at_decoration(source: str, message: str) -> None:
    namespace: dict[str, Any] = {}
    exec(textwrap.dedent(source), namespace)  # noqa: S102 - test input
    with pytest.raises((TypeError, ValueError), match=message):
        tool(namespace["f"])


def test_bad_names_and_timeouts() -> None:
    async def f(ctx: ToolContext) -> str:
        """Doc."""
        return ""

    with pytest.raises(ValueError, match="name"):
        tool(name="has space")(f)
    with pytest.raises(ValueError, match="timeout"):
        tool(timeout=0)(f)


# ------------------------------------------------------------------------------ arguments


def test_coercion_converts_what_models_send() -> None:
    args = forecast.coerce({"city": 42, "days": "3", "unit": "F", "tags": "rain", "ids": "[1, \"2\"]",
                            "loud": "yes", "color": "GREEN", "ratio": "0.25", "invented": True})
    assert args == {"city": "42", "days": 3, "unit": "f", "tags": ["rain"], "ids": [1, 2], "loud": True,
                    "color": Color.GREEN, "ratio": 0.25}
    assert forecast.coerce({"city": "x", "days": 2.0})["days"] == 2
    assert forecast.coerce({"city": "x", "loud": 0})["loud"] is False


def test_coercion_null_means_default_unless_nullable() -> None:
    assert forecast.coerce({"city": "x", "days": None}) == {"city": "x"}  # the default applies
    assert forecast.coerce({"city": "x", "note": None}) == {"city": "x", "note": None}


def test_coercion_errors_name_every_parameter() -> None:
    with pytest.raises(ArgumentError) as info:
        forecast.coerce({"days": "many", "unit": "kelvin", "ids": ["a"], "loud": "maybe"})
    problems = info.value.problems
    assert any("missing required parameter 'city'" in p and "the city name" in p for p in problems)
    assert any("'days'" in p and "integer" in p for p in problems)
    assert any("'unit'" in p and '"c", "f"' in p for p in problems)
    assert any("'ids'" in p and "item 0" in p for p in problems)
    assert any("'loud'" in p for p in problems)
    assert isinstance(info.value, ValueError)


def test_coerce_arguments_is_pure() -> None:
    raw = {"city": "x", "days": "2"}
    assert coerce_arguments(forecast.params, raw) == {"city": "x", "days": 2}
    assert raw == {"city": "x", "days": "2"}
    with pytest.raises(ArgumentError):
        coerce_arguments(forecast.params, {"city": "x", "days": 2.5})
    with pytest.raises(ArgumentError):
        coerce_arguments(forecast.params, {"city": "x", "days": True})


async def test_invoke_turns_argument_errors_into_an_error_result() -> None:
    result = await forecast.invoke(make_ctx(), {"days": 2})
    assert result.is_error and result.action is ToolAction.REPLY_LLM
    assert "city" in result.text and "again" in result.text
    ok = await forecast.invoke(make_ctx(), {"city": "Oslo", "days": "2"})
    assert ok.text.startswith("Oslo:2:") and not ok.is_error


# ------------------------------------------------------------------------------ results


async def _chunks() -> Any:
    yield b"\x00\x00"


def test_result_mapping() -> None:
    assert to_tool_result("sunny") == ToolResult(text="sunny")
    r = to_tool_result({"城市": "北京", "temp": 3})
    assert r.action is ToolAction.REPLY_LLM and json.loads(r.text) == {"城市": "北京", "temp": 3}
    assert "北京" in r.text  # not \u-escaped: fewer tokens for the model
    assert json.loads(to_tool_result([1, 2]).text) == [1, 2]
    assert to_tool_result(None).text == "done"
    assert to_tool_result(Say("hi")) == ToolResult(action=ToolAction.SPEAK, text="hi")
    assert to_tool_result(EndSession("bye")) == ToolResult(action=ToolAction.END_SESSION, text="bye")
    assert to_tool_result(EndSession()).text == ""
    chunks = _chunks()
    play = to_tool_result(PlayAudio(chunks, 16000, "Playing"))
    assert (play.action, play.audio, play.audio_rate, play.text) == (ToolAction.PLAY_AUDIO, chunks, 16000, "Playing")
    assert to_tool_result(PlayAudio(chunks, 0)).is_error
    passthrough = ToolResult(action=ToolAction.SPEAK, text="x")
    assert to_tool_result(passthrough) is passthrough
    assert to_tool_result(object()).is_error


def test_tr_picks_the_conversation_language() -> None:
    assert tr(make_ctx("zh"), "你好", "hello") == "你好"
    assert tr(make_ctx("en"), "你好", "hello") == "hello"


# ------------------------------------------------------------------------------ discovery


def write_plugin(directory: Path, name: str, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.py"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


GOOD = """
    from pydantic import BaseModel, Field
    from server.plugin_api import Say, ToolContext, settings_of, tool

    class Settings(BaseModel):
        api_key: str
        timeout_s: float = Field(default=2.0, gt=0)

    @tool(description=lambda s: f"Echo with key {s.api_key[:2]}.")
    async def echo(ctx: ToolContext, text: str) -> dict:
        s = settings_of(ctx, Settings)
        answer = {"text": text, "key": s.api_key, "timeout_s": s.timeout_s}
        s.timeout_s = 99.0
        return answer

    @tool
    async def boom(ctx: ToolContext) -> str:
        '''Always fails.'''
        raise RuntimeError("kaput")

    @tool
    async def greet(ctx: ToolContext) -> Say:
        '''Say hello.'''
        return Say("hello")
"""

PLAIN = """
    from server.plugin_api import tool

    @tool
    async def ping() -> str:
        '''Ping.'''
        return "pong"
"""


async def test_plugin_tools_load_validate_and_call(tmp_path: Path) -> None:
    write_plugin(tmp_path, "good", GOOD)
    write_plugin(tmp_path, "plain", PLAIN)
    tools = PluginTools({"good": {"enabled": True, "api_key": "secret-1"}, "plain": None}, dirs=[tmp_path])
    assert isinstance(tools, ToolSource)
    assert sorted(s.name for s in tools.specs()) == ["boom", "echo", "greet", "ping"]
    assert next(s for s in tools.specs() if s.name == "echo").description == "Echo with key se."
    assert tools.plugin_of("ping") == "plain"

    ctx = make_ctx()
    result = await tools.call(ctx, "echo", {"text": "hi", "extra": 1})
    assert json.loads(result.text) == {"text": "hi", "key": "secret-1", "timeout_s": 2.0}
    assert ctx.settings is None  # the session's context is not changed
    again = await tools.call(ctx, "echo", {"text": "hi"})
    # A tool editing its settings copy does not affect the next call.
    assert json.loads(again.text)["timeout_s"] == 2.0
    assert (await tools.call(ctx, "greet", {})).action is ToolAction.SPEAK
    assert (await tools.call(ctx, "ping", {})).text == "pong"
    missing = await tools.call(ctx, "echo", {})
    assert missing.is_error and "'text'" in missing.text
    unknown = await tools.call(ctx, "nope", {})
    assert unknown.is_error and "nope" in unknown.text


async def test_exceptions_become_error_results_and_are_logged(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    write_plugin(tmp_path, "good", GOOD)
    tools = PluginTools({"good": {"api_key": "k"}}, dirs=[tmp_path])
    with caplog.at_level(logging.ERROR, logger="server.plugins"):
        result = await tools.call(make_ctx(), "boom", {})
    assert result.is_error and "RuntimeError" in result.text and "kaput" in result.text
    assert any("plugin good" in r.getMessage() and "boom" in r.getMessage() for r in caplog.records)


def test_two_instances_with_different_settings_do_not_share_descriptions(tmp_path: Path) -> None:
    write_plugin(tmp_path, "good", GOOD)
    a = PluginTools({"good": {"api_key": "aa-key"}}, dirs=[tmp_path])
    b = PluginTools({"good": {"api_key": "bb-key"}}, dirs=[tmp_path])
    desc = {t.name: t.description for t in a.specs()}["echo"], {t.name: t.description for t in b.specs()}["echo"]
    assert desc == ("Echo with key aa.", "Echo with key bb.")


@pytest.mark.parametrize("settings, message", [
    ({}, r"^plugins\.good\.api_key: Field required$"),
    ({"api_key": "k", "timeout_s": -1}, r"^plugins\.good\.timeout_s: Input should be greater than 0 \(got -1\)$"),
    ({"api_key": "k", "timeout": 3}, r"^plugins\.good\.timeout: unknown setting; known: api_key, timeout_s$"),
    ({"api_key": ["not", "a", "string"]}, r"^plugins\.good\.api_key: Input should be a valid string"),
])
def test_settings_errors_name_the_config_key(tmp_path: Path, settings: dict, message: str) -> None:
    write_plugin(tmp_path, "good", GOOD)
    with pytest.raises(PluginConfigError, match=message) as info:
        PluginTools({"good": settings}, dirs=[tmp_path])
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_unknown_plugin_names_what_exists(tmp_path: Path) -> None:
    write_plugin(tmp_path, "good", GOOD)
    write_plugin(tmp_path, "plain", PLAIN)
    with pytest.raises(PluginConfigError, match=r"^plugins\.wether: no such plugin .*available: good, plain$"):
        PluginTools({"wether": {}}, dirs=[tmp_path])


def test_settings_for_a_plugin_without_settings(tmp_path: Path) -> None:
    write_plugin(tmp_path, "plain", PLAIN)
    with pytest.raises(PluginConfigError, match=r"^plugins\.plain\.colour: this plugin takes no settings$"):
        PluginTools({"plain": {"colour": "red"}}, dirs=[tmp_path])


def test_import_errors_and_bad_plugins(tmp_path: Path) -> None:
    write_plugin(tmp_path, "broken", "import does_not_exist_anywhere\n")
    with pytest.raises(PluginConfigError, match=r"^plugins\.broken: importing .* ModuleNotFoundError"):
        PluginTools({"broken": {}}, dirs=[tmp_path])
    write_plugin(tmp_path, "syncy", """
        from server.plugin_api import tool

        @tool
        def slow() -> str:
            '''Blocks.'''
            return ""
    """)
    with pytest.raises(PluginConfigError, match=r"^plugins\.syncy: .*TypeError.*async def"):
        PluginTools({"syncy": {}}, dirs=[tmp_path])


def test_duplicate_tool_names_across_plugins(tmp_path: Path) -> None:
    write_plugin(tmp_path / "a", "first", PLAIN)
    write_plugin(tmp_path / "b", "second", PLAIN)
    with pytest.raises(PluginConfigError, match="tool name 'ping' is already provided by plugin first"):
        PluginTools({"first": {}, "second": {}}, dirs=[tmp_path / "a", tmp_path / "b"])


def test_from_config_and_extra_dirs(tmp_path: Path) -> None:
    write_plugin(tmp_path, "plain", PLAIN)
    tools = PluginTools.from_config({"plain": {"enabled": True}, "time_date": {"enabled": False}},
                                    extra_dirs=[tmp_path])
    assert [s.name for s in tools.specs()] == ["ping"]
    with pytest.raises(PluginConfigError, match=r"plugins\.plain\.enabled: expected true or false"):
        PluginTools.from_config({"plain": {"enabled": "yes"}}, extra_dirs=[tmp_path])


def test_builtin_plugins_are_discovered_without_importing() -> None:
    found = available_plugins([DEFAULT_PLUGIN_DIR])
    assert {"time_date", "exit_intent", "persona", "music", "weather", "home_assistant"} <= set(found)


def write_readme_plugin(folder) -> None:  # noqa: ANN001
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    code = readme.split("## Tools, plugins and memory", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    (folder / "cat.py").write_text(code, encoding="utf-8")


async def test_readme_plugin_example_works(tmp_path) -> None:
    """The plugin example in the README must load and behave as described."""
    from server.tools.base import ToolAction, ToolContext
    from server.tools.plugins import PluginTools

    write_readme_plugin(tmp_path)
    tools = PluginTools({"cat": {}}, extra_dirs=[tmp_path])
    spec = tools.specs()[0]
    assert spec.name == "feed_the_cat" and spec.parameters["properties"]["grams"]["type"] == "integer"
    ctx = ToolContext(device_id="d", user_id="u", session_id="s", language="en")
    ok = await tools.call(ctx, "feed_the_cat", {"grams": "40"})
    assert ok.action is ToolAction.REPLY_LLM and ok.text == "fed 40 g"
    too_much = await tools.call(ctx, "feed_the_cat", {"grams": 500})
    assert too_much.action is ToolAction.SPEAK and "too much" in too_much.text
