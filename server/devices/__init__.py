"""Tools that live on the device itself: its MCP server (firmware >= 1.8) and legacy IoT things
(firmware <= 1.7). One instance of each per session; both are ToolSources."""

from server.devices.iot import IotTools
from server.devices.mcp_client import DeviceMcpClient, DeviceToolsConfig

__all__ = ["DeviceMcpClient", "DeviceToolsConfig", "IotTools"]
