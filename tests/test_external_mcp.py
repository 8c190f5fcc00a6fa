"""External MCP servers through the real SDK: harness/fakes/mcp_server.py over stdio and over
streamable HTTP on 127.0.0.1, shared by all sessions, restarted when they die."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.providers.base import ToolCall
from server.tools.base import ToolContext, ToolSource
from server.tools.remote_mcp import ExternalMcpManager, McpServerConfig, parse_mcp_servers
from server.tools.toolbox import Toolbox

FAKE = str(Path(__file__).parent.parent / "harness" / "fakes" / "mcp_server.py")
CTX = ToolContext(device_id="aa:bb:cc:dd:ee:ff", user_id="u", session_id="s", language="en")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_config_validation() -> None:
    ok = parse_mcp_servers({
        "files": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"]},
        "remote": {"url": "https://example.com/mcp", "headers": {"Authorization": "Bearer x"}, "timeout_s": 5},
        "off": {"url": "http://127.0.0.1:1/mcp", "enabled": False},
    })
    assert ok["files"].transport == "stdio" and ok["remote"].transport == "http"
    assert ok["files"].prefix_for("files") == "files_"
    assert McpServerConfig(url="http://x/mcp", tool_prefix="").prefix_for("x") == ""
    bad = [
        ({"a": {"command": "x", "url": "http://x/mcp"}}, "either"),
        ({"a": {}}, "either"),
        ({"a": {"command": "x", "comand": "y"}}, r"^mcp_servers\.a\.comand: unknown key$"),
        ({"a": {"url": "ftp://x"}}, "http"),
        ({"a": {"url": "http://x/mcp", "args": ["1"]}}, "command"),
        ({"a": {"command": "x", "headers": {"A": "b"}}}, "url"),
        ({"bad name": {"command": "x"}}, "server name"),
        ({"a": ["x"]}, "mapping"),
    ]
    for raw, words in bad:
        with pytest.raises(ValueError, match=words):
            parse_mcp_servers(raw)
    assert ExternalMcpManager(ok).servers and list(ExternalMcpManager(ok).servers) == ["files", "remote"]


@contextlib.asynccontextmanager
async def manager(raw: dict[str, dict[str, object]]) -> AsyncIterator[ExternalMcpManager]:
    mcp = ExternalMcpManager(parse_mcp_servers(raw), backoff_initial_s=0.2, backoff_max_s=0.5)
    try:
        await asyncio.wait_for(mcp.start(), 30)
        yield mcp
    finally:
        await mcp.close()


async def test_stdio_server_tools_errors_and_restart(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="server.mcp")
    raw: dict[str, dict[str, object]] = {
        # 3 s: the SDK server answers an unexpected exception only after formatting its
        # traceback, which took over a second on a fresh machine (0.5 s failed there).
        "fake": {"command": sys.executable, "args": [FAKE], "timeout_s": 3, "ping_interval_s": 0},
        "broken": {"command": "/nonexistent/mcp-server-binary", "connect_timeout_s": 5},
    }
    async with manager(raw) as mcp:
        assert isinstance(mcp, ToolSource) and mcp.name == "mcp"
        # the broken server is logged with its name and cause, and does not stop the others
        assert mcp.status()["broken"]["state"] != "ready"  # down, or trying again
        assert any("broken" in r.getMessage() and "No such file" in r.getMessage() for r in caplog.records)
        names = [s.name for s in mcp.specs()]
        assert names == ["fake_add", "fake_weather.today", "fake_fail", "fake_crash", "fake_pid", "fake_slow"]
        add = mcp.specs()[0]
        assert add.parameters["properties"].keys() == {"a", "b"} and add.parameters["type"] == "object"

        # through a session's toolbox: sanitized names map back to the server's own
        toolbox = Toolbox(lambda: CTX)
        toolbox.add(mcp)
        assert "fake_weather_today" in [t["function"]["name"] for t in toolbox.openai_tools()]
        run = await toolbox.run(ToolCall("1", "fake_weather_today", '{"city": "Paris"}'))
        assert run.result.text == "Paris: sunny, 23 degrees" and not run.result.is_error

        # many sessions share the one server process concurrently
        results = await asyncio.gather(*(mcp.call(CTX, "fake_add", {"a": i, "b": 1}) for i in range(5)))
        assert [r.text for r in results] == ["1", "2", "3", "4", "5"]

        failed = await mcp.call(CTX, "fake_fail", {"reason": "the sensor is offline"})
        assert failed.is_error and "the sensor is offline" in failed.text
        crashed = await mcp.call(CTX, "fake_crash", {})
        assert crashed.is_error and "crash" in crashed.text
        slow = await mcp.call(CTX, "fake_slow", {"seconds": 5})
        assert slow.is_error and "'fake'" in slow.text and "3 s" in slow.text
        missing = await mcp.call(CTX, "fake_nope", {})
        assert missing.is_error

        # kill the server: calls fail naming it, then the runner brings it back
        pid = int((await mcp.call(CTX, "fake_pid", {})).text)
        os.kill(pid, signal.SIGKILL)
        dead = await mcp.call(CTX, "fake_add", {"a": 1, "b": 1})
        assert dead.is_error and "'fake'" in dead.text
        assert await mcp.wait_ready("fake", 20)
        back = await mcp.call(CTX, "fake_add", {"a": 2, "b": 2})
        assert back.text == "4" and not back.is_error
        new_pid = int((await mcp.call(CTX, "fake_pid", {})).text)
        assert new_pid != pid
        assert mcp.status()["fake"]["restarts"] >= 1
        assert any("fake" in r.getMessage() and "stopped working" in r.getMessage() for r in caplog.records)
    # close() stops the process it started
    for _ in range(50):
        if not _alive(new_pid):
            break
        await asyncio.sleep(0.1)
    assert not _alive(new_pid)
    assert mcp.status()["fake"]["state"] == "stopped"


async def test_streamable_http_server_with_headers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="server.mcp")
    proc = await asyncio.create_subprocess_exec(sys.executable, FAKE, "--http", "--token", "s3cret",
                                                stdout=asyncio.subprocess.PIPE)
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)  # type: ignore[union-attr]
        port = int(line.split()[1])
        url = f"http://127.0.0.1:{port}/mcp"
        raw: dict[str, dict[str, object]] = {
            "web": {"url": url, "headers": {"X-Test-Token": "s3cret"}, "timeout_s": 5},
            # the same server under its own names, and only one of its tools
            "calc": {"url": url, "headers": {"X-Test-Token": "s3cret"}, "tool_prefix": "", "tools": ["add"]},
            "nohdr": {"url": url, "connect_timeout_s": 5},
        }
        async with manager(raw) as mcp:
            assert await mcp.wait_ready("web", 10) and await mcp.wait_ready("calc", 10)
            status = mcp.status()
            assert status["nohdr"]["state"] != "ready"  # 401 without the header: logged, retried later
            messages = [r.getMessage() for r in caplog.records]
            assert any("nohdr" in m and "failed to start" in m and "HTTP 401" in m for m in messages)
            names = [s.name for s in mcp.specs()]
            assert "web_add" in names and "web_weather.today" in names and "add" in names
            assert "weather.today" not in names
            assert (await mcp.call(CTX, "web_add", {"a": 20, "b": 22})).text == "42"
            assert (await mcp.call(CTX, "add", {"a": 1, "b": 2})).text == "3"
            failed = await mcp.call(CTX, "web_fail", {"reason": "quota exceeded"})
            assert failed.is_error and "quota exceeded" in failed.text
            # the HTTP server goes away: an error result naming it, never a hang
            proc.kill()
            await proc.wait()
            gone = await asyncio.wait_for(mcp.call(CTX, "web_add", {"a": 1, "b": 1}), 10)
            assert gone.is_error and "'web'" in gone.text
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_hanging_server_does_not_hold_up_start_or_close() -> None:
    # Reads its stdin and never answers: the handshake hangs until its connect timeout.
    hang = {"command": sys.executable, "args": ["-c", "import sys; sys.stdin.read()"], "connect_timeout_s": 30}
    mcp = ExternalMcpManager(parse_mcp_servers({"hang": hang}))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await mcp.start(wait_s=0.3)
    assert loop.time() - t0 < 2
    assert mcp.status()["hang"]["state"] == "starting" and mcp.specs() == []
    result = await mcp.call(CTX, "hang_anything", {})
    assert result.is_error
    t0 = loop.time()
    await mcp.close()
    assert loop.time() - t0 < 3
    assert mcp.status()["hang"]["state"] == "stopped"
