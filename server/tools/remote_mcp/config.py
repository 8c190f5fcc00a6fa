"""`mcp_servers:` in config.yaml: external MCP servers, by name.

Kept free of the `mcp` SDK import so that validating a config stays cheap; the manager imports
the SDK only when at least one server is enabled.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from server.config.errors import one_line

_SERVER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


class McpServerConfig(BaseModel):
    """One external MCP server: either a command speaking stdio, or a streamable-HTTP URL."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # stdio: the program and its arguments; `env` is added to a minimal inherited environment
    # (HOME, PATH, ...: the SDK does not pass our whole environment, so secrets stay ours).
    command: str = ""
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str = ""
    # streamable HTTP: the endpoint (usually ending in /mcp) and extra request headers
    # (e.g. Authorization: Bearer ${TOKEN}).
    url: str = ""
    headers: dict[str, str] = Field(default_factory=dict)
    # One tool call may take this long before the LLM gets an error result.
    timeout_s: float = Field(default=20, gt=0, le=300)
    # Starting the server and the MCP handshake plus tool listing (npx may download first).
    connect_timeout_s: float = Field(default=60, gt=0, le=600)
    # Tool names offered to the LLM are "<tool_prefix><tool>"; unset: "<server name>_".
    # "" offers the server's own names (clashes with other sources are then possible).
    tool_prefix: str | None = None
    # Only these tools of the server (its own names); empty: all of them. Every tool costs
    # prompt tokens on every turn, so trimming big servers pays off.
    tools: list[str] = Field(default_factory=list)
    # A ping this often notices a hung or unreachable server and restarts it; 0: never.
    ping_interval_s: float = Field(default=30, ge=0)

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerConfig:
        if bool(self.command) == bool(self.url):
            raise ValueError("give either `command` (a stdio server) or `url` (a streamable-HTTP server)")
        if self.url:
            if not self.url.startswith(("http://", "https://")):
                raise ValueError("`url` must start with http:// or https://")
            if self.args or self.env or self.cwd:
                raise ValueError("`args`, `env` and `cwd` apply to `command` servers only")
        if self.command and self.headers:
            raise ValueError("`headers` apply to `url` servers only")
        return self

    @property
    def transport(self) -> Literal["stdio", "http"]:
        return "stdio" if self.command else "http"

    def prefix_for(self, server_name: str) -> str:
        return f"{server_name}_" if self.tool_prefix is None else self.tool_prefix


def parse_mcp_servers(raw: Mapping[str, Any] | None) -> dict[str, McpServerConfig]:
    """Validate the `mcp_servers` mapping; errors name the server and the key."""
    out: dict[str, McpServerConfig] = {}
    for name, section in (raw or {}).items():
        if not isinstance(name, str) or not _SERVER_NAME.match(name):
            raise ValueError(f"mcp_servers: server name {name!r} must be 1-40 letters, digits, '_' or '-'")
        if isinstance(section, McpServerConfig):
            out[name] = section
            continue
        if not isinstance(section, Mapping):
            raise ValueError(f"mcp_servers.{name}: expected a mapping, got {type(section).__name__}")
        try:
            out[name] = McpServerConfig.model_validate(dict(section))
        except ValidationError as exc:
            raise ValueError(one_line(exc, f"mcp_servers.{name}")) from None
    return out
