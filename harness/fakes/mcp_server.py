"""A real MCP server built with the `mcp` SDK, for the external-MCP tests.

    python harness/fakes/mcp_server.py                         # stdio
    python harness/fakes/mcp_server.py --http [--token T]      # streamable HTTP on 127.0.0.1

In HTTP mode it binds a free port itself and prints `PORT <n>` on stdout once listening; with
`--token` every request must carry `X-Test-Token: <T>` (to check that configured headers are
sent).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("fake-tools", version="1.2.3")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers and return the sum."""
    return a + b


@server.tool(name="weather.today")
def weather_today(city: str) -> str:
    """Today's weather in a city (a name with a dot, as many servers use)."""
    return f"{city}: sunny, 23 degrees"


@server.tool()
def fail(reason: str = "boom") -> str:
    """Always fails with a message meant for the model (ToolError)."""
    raise ToolError(reason)


@server.tool()
def crash() -> str:
    """Always raises an unexpected exception (the SDK hides its text from the client)."""
    raise RuntimeError("secret internals")


@server.tool()
def pid() -> int:
    """The server's process id (lets a test kill it)."""
    return os.getpid()


@server.tool()
async def slow(seconds: float) -> str:
    """Sleeps, then answers."""
    await asyncio.sleep(seconds)
    return "done"


def _require_token(app: Any, token: str) -> Any:
    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            if headers.get(b"x-test-token", b"").decode() != token:
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"text/plain")]})
                await send({"type": "http.response.body", "body": b"missing or wrong X-Test-Token"})
                return
        await app(scope, receive, send)

    return guarded


async def _serve_http(token: str) -> None:
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # connections made before uvicorn starts accepting wait in the backlog
    app: Any = server.streamable_http_app(host="127.0.0.1")
    if token:
        app = _require_token(app, token)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    userver = uvicorn.Server(config)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    await userver.serve(sockets=[sock])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", action="store_true")
    parser.add_argument("--token", default="")
    args = parser.parse_args()
    print("fake MCP server starting", file=sys.stderr, flush=True)
    if args.http:
        asyncio.run(_serve_http(args.token))
    else:
        server.run("stdio")


if __name__ == "__main__":
    main()
