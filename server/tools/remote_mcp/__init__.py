"""External MCP servers (stdio or streamable HTTP) from `mcp_servers:` in config.yaml, started
once per process; their tools are offered to every session's LLM."""

from server.tools.remote_mcp.config import McpServerConfig, parse_mcp_servers
from server.tools.remote_mcp.source import ExternalMcpManager

__all__ = ["ExternalMcpManager", "McpServerConfig", "parse_mcp_servers"]
