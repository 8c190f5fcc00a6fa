"""Legacy IoT things (firmware <= 1.7): descriptors become tools, commands go out as `iot`."""

from __future__ import annotations

import json
from typing import Any

from server.devices import IotTools
from server.protocol import Iot
from server.providers.base import ToolCall
from server.tools.base import ToolContext, ToolSource
from server.tools.toolbox import Toolbox

CTX = ToolContext(device_id="aa:bb:cc:dd:ee:ff", user_id="u", session_id="s", language="zh")

# As the v1.7 firmware sends them: one message per thing, then states.
SPEAKER = {"session_id": "s1", "type": "iot", "update": True, "descriptors": [{
    "name": "Speaker", "description": "扬声器",
    "properties": {"volume": {"description": "当前音量值", "type": "number"}},
    "methods": {"SetVolume": {"description": "设置音量", "parameters": {
        "volume": {"description": "0到100之间的整数", "type": "number"}}}},
}]}
LAMP = {"session_id": "s1", "type": "iot", "update": True, "descriptors": [{
    "name": "Lamp", "description": "一个测试用的灯",
    "properties": {"power": {"description": "灯是否打开", "type": "boolean"}},
    "methods": {"TurnOn": {"description": "打开灯", "parameters": {}},
                "TurnOff": {"description": "关闭灯", "parameters": {}},
                "SetMode": {"description": "mode", "parameters": {
                    "mode": {"description": "name", "type": "string"},
                    "blink": {"description": "blink", "type": "boolean"}}}},
}]}
STATES = {"session_id": "s1", "type": "iot", "update": True, "states": [
    {"name": "Speaker", "state": {"volume": 80}}, {"name": "Lamp", "state": {"power": False}}]}


class Sent:
    def __init__(self) -> None:
        self.commands: list[list[dict[str, Any]]] = []

    async def __call__(self, commands: list[dict[str, Any]]) -> None:
        # what the session puts on the socket
        self.commands.append(json.loads(json.dumps({"type": "iot", "commands": commands}))["commands"])


def loaded() -> tuple[IotTools, Sent]:
    sent = Sent()
    iot = IotTools(sent)
    for msg in (SPEAKER, LAMP, STATES):
        iot.on_message(Iot.from_dict(msg).to_dict())  # as the session passes it
    return iot, sent


def test_descriptors_become_typed_tools() -> None:
    iot, _ = loaded()
    assert isinstance(iot, ToolSource) and iot.name == "iot"
    specs = {s.name: s for s in iot.specs()}
    assert set(specs) == {"iot_Speaker_SetVolume", "iot_Lamp_TurnOn", "iot_Lamp_TurnOff", "iot_Lamp_SetMode",
                          "iot_get_state"}
    volume = specs["iot_Speaker_SetVolume"]
    assert volume.description.startswith("设置音量")
    assert volume.parameters == {"type": "object", "properties": {
        "volume": {"type": "number", "description": "0到100之间的整数"}}, "required": ["volume"]}
    mode = specs["iot_Lamp_SetMode"].parameters["properties"]
    assert (mode["mode"]["type"], mode["blink"]["type"]) == ("string", "boolean")
    assert specs["iot_Lamp_TurnOn"].parameters == {"type": "object", "properties": {}}


def test_no_things_no_tools() -> None:
    iot = IotTools(Sent())
    assert iot.specs() == []
    iot.on_message(STATES)
    assert iot.specs() == []


async def test_call_sends_command_and_says_so() -> None:
    iot, sent = loaded()
    result = await iot.call(CTX, "iot_Speaker_SetVolume", {"volume": 50})
    assert sent.commands == [[{"name": "Speaker", "method": "SetVolume", "parameters": {"volume": 50}}]]
    assert not result.is_error and "Speaker.SetVolume(volume=50)" in result.text and "sent" in result.text
    # The LLM sometimes quotes numbers and booleans: the firmware needs JSON numbers/bools.
    await iot.call(CTX, "iot_Speaker_SetVolume", {"volume": "30"})
    await iot.call(CTX, "iot_Lamp_SetMode", {"mode": "party", "blink": "true"})
    await iot.call(CTX, "iot_Lamp_TurnOn", {})
    assert sent.commands[1][0]["parameters"] == {"volume": 30}
    assert sent.commands[2][0]["parameters"] == {"mode": "party", "blink": True}
    assert sent.commands[3][0] == {"name": "Lamp", "method": "TurnOn", "parameters": {}}


async def test_bad_arguments_are_errors_and_nothing_is_sent() -> None:
    iot, sent = loaded()
    r = await iot.call(CTX, "iot_Speaker_SetVolume", {})
    assert r.is_error and "volume" in r.text
    r = await iot.call(CTX, "iot_Speaker_SetVolume", {"volume": "loud"})
    assert r.is_error and "number" in r.text
    r = await iot.call(CTX, "iot_Speaker_SetVolume", {"volume": True})
    assert r.is_error
    r = await iot.call(CTX, "iot_Fridge_Open", {})
    assert r.is_error
    assert sent.commands == []


async def test_state_tool_reports_merged_deltas() -> None:
    iot, _ = loaded()
    iot.on_message({"type": "iot", "update": True, "states": [{"name": "Speaker", "state": {"volume": 55}}]})
    r = await iot.call(CTX, "iot_get_state", {})
    state = json.loads(r.text)
    assert state["Speaker"]["volume"] == {"value": 55, "description": "当前音量值"}
    assert state["Lamp"]["power"]["value"] is False
    only = json.loads((await iot.call(CTX, "iot_get_state", {"thing": "Lamp"})).text)
    assert list(only) == ["Lamp"]


def test_full_announcement_replaces_and_update_adds() -> None:
    iot, _ = loaded()
    iot.on_message({"type": "iot", "descriptors": SPEAKER["descriptors"]})  # no update flag: replace
    assert {s.name for s in iot.specs()} == {"iot_Speaker_SetVolume", "iot_get_state"}
    iot.on_message(LAMP)
    assert "iot_Lamp_TurnOn" in {s.name for s in iot.specs()}


def test_malformed_messages_are_survived() -> None:
    iot, _ = loaded()
    for msg in ({"update": True, "descriptors": [1, {"description": "no name"}, {"name": "X", "methods": "nope",
                                                                    "properties": []}]},
                {"states": [None, {"name": 3}, {"name": "Speaker", "state": "loud"}]},
                {"descriptors": None}, {}):
        iot.on_message(msg)
    assert "iot_Speaker_SetVolume" in {s.name for s in iot.specs()}


async def test_through_the_toolbox() -> None:
    iot, sent = loaded()
    toolbox = Toolbox(lambda: CTX)
    toolbox.add(iot)
    names = [t["function"]["name"] for t in toolbox.openai_tools()]
    assert "iot_Speaker_SetVolume" in names
    run = await toolbox.run(ToolCall("1", "iot_Speaker_SetVolume", '{"volume": 20}'))
    assert not run.result.is_error and sent.commands[-1][0]["parameters"] == {"volume": 20}


async def test_send_failure_is_an_error_result() -> None:
    async def broken(_commands: list[dict[str, Any]]) -> None:
        raise ConnectionResetError("socket closed")

    iot = IotTools(broken)
    iot.on_message(SPEAKER)
    r = await iot.call(CTX, "iot_Speaker_SetVolume", {"volume": 1})
    assert r.is_error and "socket closed" in r.text
