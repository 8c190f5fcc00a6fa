"""Device identity and the OTA check request, as the firmware (and py-xiaozhi) build them.

The firmware builds the OTA body by string concatenation (Board::GetSystemInfoJson), with its own
quirks: `minimum_free_heap_size` is a string, `compile_time` is `__DATE__ "T" __TIME__ "Z"`, and
there is a space after `"partition_table":`. We reproduce those bytes, because a server must
accept exactly this.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp


def random_mac() -> str:
    """Lower-case, colon-separated, locally administered (so it never collides with hardware)."""
    octets = [random.randrange(256) for _ in range(6)]
    octets[0] = (octets[0] | 0x02) & 0xFE
    return ":".join(f"{o:02x}" for o in octets)


@dataclass(slots=True)
class DeviceIdentity:
    mac: str = field(default_factory=random_mac)
    client_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    board_type: str = "bread-compact-wifi"
    board_name: str = "bread-compact-wifi"
    firmware_version: str = "2.4.2"
    language: str = "zh-CN"
    ip: str = "192.168.1.23"
    ssid: str = "SimWiFi"
    rssi: int = -55
    elf_sha256: str = "0" * 64

    @property
    def user_agent(self) -> str:
        return f"{self.board_name}/{self.firmware_version}"


class OtaError(RuntimeError):
    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status


def _s(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def firmware_ota_body(ident: DeviceIdentity) -> str:
    """Byte-exact Board::GetSystemInfoJson + WifiBoard::GetBoardJson for an ESP32-S3 board."""
    partitions = [
        ("nvs", 1, 2, 36864, 16384), ("otadata", 1, 0, 53248, 8192), ("phy_init", 1, 1, 61440, 4096),
        ("ota_0", 0, 16, 131072, 4063232), ("ota_1", 0, 17, 4194304, 4063232),
        ("assets", 1, 130, 8257536, 8388608),
    ]
    parts = ",".join(
        f'{{"label":{_s(label)},"type":{ptype},"subtype":{sub},"address":{addr},"size":{size}}}'
        for label, ptype, sub, addr, size in partitions)
    board = (f'{{"type":{_s(ident.board_type)},"name":{_s(ident.board_name)},"manufacturer":"",'
             f'"ssid":{_s(ident.ssid)},"rssi":{ident.rssi},"channel":6,"ip":{_s(ident.ip)},'
             f'"mac":{_s(ident.mac)}}}')
    return (
        f'{{"version":2,"language":{_s(ident.language)},"flash_size":16777216,'
        f'"minimum_free_heap_size":"123456","mac_address":{_s(ident.mac)},"uuid":{_s(ident.client_id)},'
        f'"chip_model_name":"esp32s3","chip_info":{{"model":9,"cores":2,"revision":2,"features":18}},'
        f'"application":{{"name":"xiaozhi","version":{_s(ident.firmware_version)},'
        f'"compile_time":"Aug  8 2026T08:33:45Z","idf_version":"v5.5.2","elf_sha256":{_s(ident.elf_sha256)}}},'
        f'"partition_table": [{parts}],"ota":{{"label":"ota_0"}},'
        f'"display":{{"monochrome":true,"width":128,"height":32}},"board":{board}}}'
    )


def firmware_ota_headers(ident: DeviceIdentity) -> dict[str, str]:
    # Ota::SetupHttp, for a chip without an eFuse serial number (Activation-Version 1).
    return {
        "Activation-Version": "1",
        "Device-Id": ident.mac,
        "Client-Id": ident.client_id,
        "User-Agent": ident.user_agent,
        "Accept-Language": ident.language,
        "Content-Type": "application/json",
    }


def py_xiaozhi_ota_body(ident: DeviceIdentity) -> str:
    return json.dumps({
        "application": {"version": ident.firmware_version, "elf_sha256": ident.elf_sha256},
        "board": {"type": ident.board_type, "name": ident.board_name, "ip": ident.ip, "mac": ident.mac},
    }, ensure_ascii=False)


def py_xiaozhi_ota_headers(ident: DeviceIdentity) -> dict[str, str]:
    return {
        "Device-Id": ident.mac,
        "Client-Id": ident.client_id,
        "User-Agent": f"{ident.board_type}/py-xiaozhi-2.1.1",
        "Accept-Language": "zh-CN",
        "Content-Type": "application/json",
    }


def ota_url(http_base_url: str) -> str:
    """`http://host:port` -> `http://host:port/xiaozhi/ota/`; a full OTA URL is kept as is."""
    if "/xiaozhi/ota" in http_base_url:
        return http_base_url
    return http_base_url.rstrip("/") + "/xiaozhi/ota/"


async def post_raw(url: str, headers: dict[str, str], body: str, timeout: float = 30.0,
                   local_address: str = "") -> tuple[int, str]:
    """POST like the firmware's HTTP client: no Accept/Accept-Encoding, never proxied."""
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    connector = aiohttp.TCPConnector(local_addr=(local_address, 0)) if local_address else None
    try:
        async with aiohttp.ClientSession(timeout=client_timeout, trust_env=False, connector=connector,
                                         skip_auto_headers=("Accept", "Accept-Encoding")) as session:
            async with session.post(url, data=body.encode("utf-8"), headers=headers) as resp:
                return resp.status, await resp.text(errors="replace")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise OtaError(None, f"request to {url} failed: {exc!r}") from None


async def post_ota(url: str, headers: dict[str, str], body: str, timeout: float = 30.0,
                   local_address: str = "") -> dict[str, Any]:
    """POST the check-version request; the firmware treats anything but 200 + JSON as failure."""
    status, text = await post_raw(url, headers, body, timeout, local_address)
    if status != 200:
        raise OtaError(status, f"OTA check returned HTTP {status}: {text[:200]}")
    try:
        data = json.loads(text)
    except ValueError:
        raise OtaError(200, f"OTA response is not JSON: {text[:200]}") from None
    if not isinstance(data, dict):
        raise OtaError(200, "OTA response is not a JSON object")
    return data
