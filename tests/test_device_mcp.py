"""DeviceMcpClient against the firmware-faithful DeviceMcpServer, wired in memory.

Every payload goes through JSON both ways (as on the socket) and replies are delivered on a
later loop iteration, like frames arriving from the network.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from harness.devsim.mcp_device import MAX_TOOLS_LIST_PAYLOAD, DeviceMcpServer, McpProperty, McpTool, filler_tools
from server.devices import DeviceMcpClient
from server.providers.base import ToolCall
from server.tools.base import ToolContext, ToolResult, ToolSource
from server.tools.toolbox import Toolbox

VISION_URL = "http://192.168.1.10:8003/mcp/vision/explain"
CTX = ToolContext(device_id="aa:bb:cc:dd:ee:ff", user_id="u", session_id="s", language="en")


class Wire:
    """The session's side of the socket: send() delivers to the device, replies come back
    through client.on_message. Methods in `silent` reach the device but get no reply (a device
    that hangs)."""

    def __init__(self, device: DeviceMcpServer, silent: tuple[str, ...] = ()) -> None:
        self.device = device
        self.silent = silent
        self.sent: list[dict[str, Any]] = []
        self.replies: list[dict[str, Any]] = []
        self.client: DeviceMcpClient | None = None

    async def send(self, payload: dict[str, Any]) -> None:
        wire = json.loads(json.dumps(payload))  # what the device actually receives
        self.sent.append(wire)
        reply = self.device.handle(wire)
        if reply is None or wire.get("method") in self.silent:
            return
        assert len(reply.encode()) <= MAX_TOOLS_LIST_PAYLOAD + 200
        obj = json.loads(reply)
        self.replies.append(obj)
        assert self.client is not None
        asyncio.get_running_loop().call_soon(self.client.on_message, obj)


def connect(device: DeviceMcpServer, silent: tuple[str, ...] = (), **kwargs: Any) -> tuple[DeviceMcpClient, Wire]:
    wire = Wire(device, silent)
    client = DeviceMcpClient(wire.send, **kwargs)
    wire.client = client
    return client, wire


async def test_initialize_carries_vision_capability_and_lists_tools() -> None:
    device = DeviceMcpServer.with_defaults()
    client, wire = connect(device, vision_url=VISION_URL, vision_token="v1.123.sig")
    assert isinstance(client, ToolSource) and client.name == "device"
    assert not client.ready
    await client.start()
    assert client.ready
    first = wire.sent[0]
    assert first["method"] == "initialize" and first["id"] == 1 and first["jsonrpc"] == "2.0"
    assert first["params"]["capabilities"]["vision"] == {"url": VISION_URL, "token": "v1.123.sig"}
    assert (device.vision_url, device.vision_token) == (VISION_URL, "v1.123.sig")
    assert client.server_info["name"] == "bread-compact-wifi"
    # every request the device saw was answered (numeric ids, object params); the one
    # notification (initialized) was dropped silently, as the firmware does
    assert [r.ignored for r in device.requests if r.ignored] == ["notification"]
    assert wire.sent[1] == {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert [s.name for s in client.specs()] == ["self.get_device_status", "self.audio_speaker.set_volume"]
    volume = client.specs()[1]
    assert volume.parameters["properties"]["volume"] == {"type": "integer", "minimum": 0, "maximum": 100}
    assert volume.parameters["required"] == ["volume"]


async def test_no_vision_capability_without_url() -> None:
    device = DeviceMcpServer.with_defaults()
    client, wire = connect(device)
    await client.start()
    assert "vision" not in wire.sent[0]["params"]["capabilities"]
    assert device.vision_url is None


async def test_pagination_gathers_every_tool() -> None:
    device = DeviceMcpServer.with_defaults(filler_tools(40, 600))
    client, wire = connect(device)
    await client.start()
    lists = [p for p in wire.sent if p["method"] == "tools/list"]
    assert len(lists) >= 3  # > 24 kB of tools in 8000-byte pages
    pages = [r for r in wire.replies if "tools" in r.get("result", {})]
    assert sum(len(json.dumps(p["result"]).encode()) for p in pages) > 2 * MAX_TOOLS_LIST_PAYLOAD
    # each follow-up page asks for the cursor the previous page named; ids are all distinct
    for prev, req in zip(pages, lists[1:], strict=False):
        assert req["params"]["cursor"] == prev["result"]["nextCursor"]
    ids = [p["id"] for p in wire.sent if "id" in p]
    assert len(set(ids)) == len(ids)
    assert "nextCursor" not in pages[-1]["result"]
    assert [s.name for s in client.specs()] == [t.name for t in device.tools]


async def test_user_only_tools_are_not_offered() -> None:
    device = DeviceMcpServer.with_defaults([McpTool("self.reboot", "Reboot the device", (), None, user_only=True)])
    client, wire = connect(device)
    await client.start()
    assert "self.reboot" not in [s.name for s in client.specs()]
    assert all(p["params"].get("withUserTools") is not True for p in wire.sent if p["method"] == "tools/list")


async def test_sanitized_names_map_back_and_set_volume_reaches_the_device() -> None:
    device = DeviceMcpServer.with_defaults()
    client, _ = connect(device)
    await client.start()
    toolbox = Toolbox(lambda: CTX)
    toolbox.add(client)
    exposed = [t["function"]["name"] for t in toolbox.openai_tools()]
    assert exposed == ["self_get_device_status", "self_audio_speaker_set_volume"]
    # specs keep the device's own names; the toolbox maps the LLM's name back
    assert client.specs()[1].name == "self.audio_speaker.set_volume"
    run = await toolbox.run(ToolCall("c1", "self_audio_speaker_set_volume", '{"volume": 35}'))
    assert not run.result.is_error and run.result.text == "true"
    assert device.status.volume == 35
    call = device.calls[-1].payload
    assert call["params"] == {"name": "self.audio_speaker.set_volume", "arguments": {"volume": 35}}
    assert isinstance(call["id"], int)
    status = await client.call(CTX, "self.get_device_status", {})
    assert json.loads(status.text)["audio_speaker"]["volume"] == 35


async def test_device_error_without_code_becomes_error_result() -> None:
    device = DeviceMcpServer.with_defaults()
    client, wire = connect(device)
    await client.start()
    result = await client.call(CTX, "self.audio_speaker.set_volume", {"volume": 150})
    assert result.is_error and "Value exceeds maximum allowed: 100" in result.text
    assert "code" not in wire.replies[-1]["error"]
    result = await client.call(CTX, "self.audio_speaker.set_volume", {"volume": "loud"})
    assert result.is_error and "Missing valid argument: volume" in result.text
    result = await client.call(CTX, "self.nope", {})
    assert result.is_error and "Unknown tool: self.nope" in result.text
    assert device.status.volume == 70


async def test_is_error_result_and_tool_exception() -> None:
    def explode(_args: dict[str, Any]) -> bool:
        raise RuntimeError("lamp is unplugged")

    device = DeviceMcpServer.with_defaults([McpTool("self.lamp.turn_on", "Turn on the lamp", (), explode)])
    client, _ = connect(device)
    await client.start()
    result = await client.call(CTX, "self.lamp.turn_on", {})
    assert result.is_error and "lamp is unplugged" in result.text
    client.on_message({"jsonrpc": "2.0", "id": 99, "result": {}})  # no such pending id: ignored


async def test_device_that_never_answers_times_out(caplog: pytest.LogCaptureFixture) -> None:
    device = DeviceMcpServer.with_defaults()
    client, wire = connect(device, silent=("tools/call",), call_timeout_s=0.2)
    await client.start()
    assert client.specs()[1].timeout_s > 0.2  # the toolbox waits longer than the client does
    t0 = asyncio.get_running_loop().time()
    result = await client.call(CTX, "self.audio_speaker.set_volume", {"volume": 10})
    assert asyncio.get_running_loop().time() - t0 < 1.0
    assert result.is_error and "did not answer within 0.2 s" in result.text
    assert not client._pending
    # The device executed it after all and answers late: dropped quietly.
    late = json.loads(device.handle({"jsonrpc": "2.0", "id": wire.sent[-1]["id"], "method": "tools/call",
                                     "params": {"name": "self.get_device_status"}}) or "{}")
    with caplog.at_level(logging.INFO, logger="server.devices.mcp"):
        client.on_message(late)
    assert "unknown or expired id" in caplog.text


async def test_device_that_never_initializes_ends_with_no_tools() -> None:
    device = DeviceMcpServer.with_defaults()
    client, _ = connect(device, silent=("initialize",), list_timeout_s=0.1)
    waiter = asyncio.create_task(client.wait_ready(5))
    await client.start()
    assert await waiter is True
    assert client.ready and client.specs() == []


async def test_wait_ready_times_out_while_listing() -> None:
    device = DeviceMcpServer.with_defaults()
    client, _ = connect(device, silent=("tools/list",), list_timeout_s=0.3)
    start = asyncio.create_task(client.start())
    assert await client.wait_ready(0.05) is False
    await start
    assert client.ready and client.specs() == []


async def test_string_ids_and_notifications_are_ignored() -> None:
    device = DeviceMcpServer.with_defaults()
    client, wire = connect(device, silent=("tools/call",), call_timeout_s=2)
    await client.start()
    sent_before = len(wire.sent)
    task = asyncio.create_task(client.call(CTX, "self.audio_speaker.set_volume", {"volume": 20}))
    await asyncio.sleep(0.01)
    rid = wire.sent[-1]["id"]
    ok = {"content": [{"type": "text", "text": "true"}], "isError": False}
    client.on_message({"jsonrpc": "2.0", "id": str(rid), "result": ok})  # string id: not ours
    client.on_message({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
    client.on_message({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info"}})
    client.on_message({"jsonrpc": "2.0", "id": 7, "method": "ping"})  # a request from the device
    await asyncio.sleep(0.01)
    assert not task.done()
    assert len(wire.sent) == sent_before + 1  # nothing sent in reply to any of those
    client.on_message({"jsonrpc": "2.0", "id": rid, "result": ok})
    result = await task
    assert result == ToolResult(text="true")


@pytest.mark.parametrize("payload", [
    None, "text", 42, [1, 2], {}, {"jsonrpc": "2.0"}, {"id": None}, {"id": True, "result": {}},
    {"id": 1.5, "result": {}}, {"jsonrpc": "2.0", "id": 3},
])
async def test_malformed_payloads_are_survived(payload: Any) -> None:
    device = DeviceMcpServer.with_defaults()
    client, _ = connect(device)
    await client.start()
    client.on_message(payload)  # must not raise
    result = await client.call(CTX, "self.audio_speaker.set_volume", {"volume": 5})
    assert result.text == "true"


async def test_odd_error_and_result_shapes() -> None:
    device = DeviceMcpServer.with_defaults()
    client, _ = connect(device, silent=("tools/call",), call_timeout_s=2)
    await client.start()

    async def answer(reply: dict[str, Any]) -> ToolResult:
        task = asyncio.create_task(client.call(CTX, "self.x", {}))
        await asyncio.sleep(0.01)
        client.on_message({"jsonrpc": "2.0", "id": max(client._pending), **reply})
        return await task

    # isError true in a result (some boards report failures this way)
    r = await answer({"result": {"content": [{"type": "text", "text": "motor stalled"}], "isError": True}})
    assert r.is_error and r.text == "Error: motor stalled"
    r = await answer({"error": "boom"})  # error not an object
    assert r.is_error and "boom" in r.text
    r = await answer({"error": {"code": -32601, "message": "Method not found"}})  # a spec-style error
    assert r.is_error and "Method not found" in r.text
    r = await answer({"result": "plain"})
    assert not r.is_error and r.text == '"plain"'
    r = await answer({"result": {"content": [{"type": "image", "image": "{}"}], "isError": False}})
    assert "image" in r.text


async def test_camera_answer_is_unwrapped_for_the_llm() -> None:
    answers = iter([
        json.dumps({"success": True, "action": "RESPONSE", "response": "A black cat on a sofa."}),
        '{"success": false, "message": "Failed to upload photo"}',
    ])
    camera = McpTool("self.camera.take_photo", "Take a photo and explain it",
                     (McpProperty("question", "string"),), lambda _args: next(answers))
    device = DeviceMcpServer.with_defaults([camera])
    client, _ = connect(device, tool_timeouts_s={"self.camera.take_photo": 40})
    await client.start()
    spec = next(s for s in client.specs() if s.name == "self.camera.take_photo")
    assert spec.timeout_s == 41
    ok = await client.call(CTX, "self.camera.take_photo", {"question": "what is this?"})
    assert ok == ToolResult(text="A black cat on a sofa.")
    failed = await client.call(CTX, "self.camera.take_photo", {"question": "and now?"})
    assert failed.is_error and "Failed to upload photo" in failed.text


async def test_close_fails_pending_calls_and_later_ones() -> None:
    device = DeviceMcpServer.with_defaults()
    client, _ = connect(device, silent=("tools/call",), call_timeout_s=5)
    await client.start()
    task = asyncio.create_task(client.call(CTX, "self.audio_speaker.set_volume", {"volume": 1}))
    await asyncio.sleep(0.01)
    client.close()
    result = await asyncio.wait_for(task, 1)
    assert result.is_error and "disconnected" in result.text
    result = await client.call(CTX, "self.get_device_status", {})
    assert result.is_error and "disconnected" in result.text


async def test_send_failure_is_an_error_result() -> None:
    async def broken(_payload: dict[str, Any]) -> None:
        raise ConnectionResetError("socket closed")

    client = DeviceMcpClient(broken, call_timeout_s=1)
    await client.start()  # logs, never raises
    assert client.ready and client.specs() == []
    result = await client.call(CTX, "self.get_device_status", {})
    assert result.is_error and "socket closed" in result.text


async def test_looping_cursor_stops() -> None:
    pages = 0

    async def send(payload: dict[str, Any]) -> None:
        nonlocal pages
        if "id" not in payload:
            return  # notifications/initialized
        if payload["method"] == "initialize":
            result: dict[str, Any] = {"protocolVersion": "2024-11-05", "capabilities": {"tools": {}}}
        else:  # a broken device that always names the same next page
            pages += 1
            result = {"tools": [{"name": f"self.t{pages}", "description": "d", "inputSchema": {}}],
                      "nextCursor": "again"}
        asyncio.get_running_loop().call_soon(client.on_message, {"jsonrpc": "2.0", "id": payload["id"],
                                                                 "result": result})

    client = DeviceMcpClient(send)
    await client.start()
    assert pages == 2 and [s.name for s in client.specs()] == ["self.t1", "self.t2"]
    assert client.specs()[0].parameters == {"type": "object", "properties": {}}
