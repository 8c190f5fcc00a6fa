"""The OTA endpoint's answer: where to connect, what time it is, and (only if the user placed a
newer binary under data/firmware/) a firmware upgrade.

The firmware picks MQTT whenever an `mqtt` section is present and loops in activation whenever
an `activation` section is, so we send neither. A firmware section that does not offer anything
newer echoes the device's own version with an empty URL: it never triggers an upgrade.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

_VERSION = re.compile(r"^\d+(\.\d+)*$")


def parse_version(text: str) -> tuple[int, ...] | None:
    """Plain dotted numbers only: the firmware's std::stoi aborts on segments like 'v2'."""
    text = text.strip()
    if not _VERSION.match(text):
        return None
    return tuple(int(p) for p in text.split("."))


@dataclass(slots=True, frozen=True)
class FirmwareFile:
    path: Path
    version: str


def find_newer_firmware(firmware_dir: Path, board: str, current: str) -> FirmwareFile | None:
    """Look for `<board>_<version>.bin` (or `<version>.bin` for any board) newer than `current`."""
    if not firmware_dir.is_dir():
        return None
    current_v = parse_version(current) or (0,)
    best: FirmwareFile | None = None
    best_v: tuple[int, ...] = current_v
    for path in firmware_dir.glob("*.bin"):
        stem = path.stem
        if "_" in stem:
            file_board, _, ver = stem.rpartition("_")
            if file_board != board:
                continue
        else:
            ver = stem
        v = parse_version(ver)
        if v is not None and v > best_v:
            best, best_v = FirmwareFile(path, ver), v
    return best


def websocket_url_for(host_header: str, configured: str, port: int, path: str, secure: bool = False) -> str:
    if configured:
        return configured
    host = host_header.strip() or "127.0.0.1"
    # Host may carry the HTTP port (and be an IPv6 literal in brackets): keep only the host.
    hostname = urlsplit(f"//{host}").hostname or "127.0.0.1"
    if ":" in hostname:
        hostname = f"[{hostname}]"
    scheme = "wss" if secure else "ws"
    return f"{scheme}://{hostname}:{port}{path}"


def ota_response(*, ws_url: str, token: str, framing_version: int, timezone_offset_minutes: int,
                 device_version: str, firmware: FirmwareFile | None, firmware_url: str,
                 now_ms: int | None = None) -> dict[str, Any]:
    ws: dict[str, Any] = {"url": ws_url, "token": token}
    if framing_version != 1:
        ws["version"] = framing_version
    return {
        "server_time": {
            "timestamp": now_ms if now_ms is not None else int(time.time() * 1000),
            "timezone_offset": timezone_offset_minutes,
        },
        "firmware": ({"version": firmware.version, "url": firmware_url} if firmware
                     else {"version": device_version, "url": ""}),
        "websocket": ws,
    }
