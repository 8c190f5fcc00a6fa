"""External MCP servers (stdio or streamable HTTP) from `mcp_servers:` in config.yaml, started
once per process; their tools are offered to every session's LLM."""

from server.mcp_ext.config import McpServerConfig, parse_mcp_servers
from server.mcp_ext.manager import ExternalMcpManager

__all__ = ["ExternalMcpManager", "McpServerConfig", "parse_mcp_servers"]
