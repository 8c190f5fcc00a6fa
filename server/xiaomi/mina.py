"""MiNA (api2.mina.mi.com, sid micoapi): the account's speakers and the `ubus` remote calls that
make one speak, play a URL, pause, stop, change volume, and report its player status."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from server.xiaomi.account import MINA_SID, XiaomiAccount
from server.xiaomi.errors import AuthExpired, BadResponse, CommandFailed, SpeakerOffline
from server.xiaomi.http import exchange
from server.xiaomi.store import ServiceToken
from server.xiaomi.wire import request_id

# Any constant id works for the play_music "audio item"; the phone app uses this one.
PLAY_MUSIC_AUDIO_ID = "1582971365183456177"


@dataclass(frozen=True, slots=True)
class MinaDevice:
    device_id: str  # MiNA deviceID (a UUID), used by ubus and the conversation API
    miot_did: str
    name: str
    alias: str
    hardware: str
    serial_number: str = ""
    presence: str = ""

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MinaDevice:
        return cls(device_id=str(d.get("deviceID", "")), miot_did=str(d.get("miotDID", "") or ""),
                   name=str(d.get("name", "")), alias=str(d.get("alias", "") or ""),
                   hardware=str(d.get("hardware", "")).upper(), serial_number=str(d.get("serialNumber", "") or ""),
                   presence=str(d.get("presence", "") or ""))

    def matches(self, key: str) -> bool:
        key = key.strip()
        return bool(key) and key in (self.device_id, self.miot_did, self.name, self.alias, self.serial_number)


@dataclass(frozen=True, slots=True)
class PlayStatus:
    status: int  # 0 idle, 1 playing, 2 paused, 3 stopped
    volume: int | None = None
    media_type: int | None = None

    @property
    def playing(self) -> bool:
        return self.status == 1


class MinaService:
    def __init__(self, account: XiaomiAccount) -> None:
        self.account = account
        self.base = account.endpoints.mina.rstrip("/")
        self.commands_sent = 0
        self.last_command_at = 0.0

    def _cookies(self, token: ServiceToken) -> dict[str, str]:
        return {"userId": self.account.user_id, "serviceToken": token.service_token}

    async def _request(self, method: str, path: str, what: str, *, params: dict[str, str] | None = None,
                       form: dict[str, str] | None = None) -> dict[str, Any]:
        async def do(token: ServiceToken) -> dict[str, Any]:
            rid = request_id()
            q = dict(params or {})
            f = dict(form) if form is not None else None
            if f is None:
                q["requestId"] = rid
            else:
                f["requestId"] = rid
            q["timestamp"] = str(int(time.time()))
            reply = await exchange(self.account.http, method, self.base + path, what=what, params=q, form=f,
                                   cookies=self._cookies(token))
            data = reply.json(what)
            if not isinstance(data, dict):
                raise BadResponse(f"{what}: expected a JSON object")
            if data.get("code") != 0 and "auth" in str(data.get("message", "")).lower():
                raise AuthExpired(f"{what}: {data.get('message')}")
            return data

        return await self.account.call(MINA_SID, do)

    async def device_list(self) -> list[MinaDevice]:
        data = await self._request("GET", "/admin/v2/device_list", "MiNA device list", params={"master": "0"})
        if data.get("code") != 0 or not isinstance(data.get("data"), list):
            raise BadResponse(f"MiNA device list: unexpected answer {str(data)[:120]}")
        return [MinaDevice.from_json(d) for d in data["data"] if isinstance(d, dict)]

    async def ubus(self, device_id: str, path: str, method: str, message: dict[str, Any]) -> dict[str, Any]:
        """One remote call on the speaker. Returns the inner `data`; raises SpeakerOffline or
        CommandFailed."""
        what = f"speaker {device_id[:8]} {method}"
        form = {"deviceId": device_id, "path": path, "method": method,
                "message": json.dumps(message, ensure_ascii=False)}
        self.commands_sent += 1
        self.last_command_at = time.monotonic()
        data = await self._request("POST", "/remote/ubus", what, form=form)
        inner = data.get("data") if isinstance(data.get("data"), dict) else {}
        if data.get("code") != 0:
            device_data = str(inner.get("device_data", ""))
            if data.get("code") == 101 or "3012" in device_data:
                detail = device_data or data.get("message")
                raise SpeakerOffline(f"{what}: the speaker does not answer (offline or busy: {detail})")
            raise CommandFailed(f"{what}: code {data.get('code')} {data.get('message', '')}")
        if inner.get("code", 0) != 0:
            raise CommandFailed(f"{what}: the speaker answered code {inner.get('code')}")
        return inner

    async def text_to_speech(self, device_id: str, text: str) -> None:
        await self.ubus(device_id, "mibrain", "text_to_speech", {"text": text, "save": 0})

    async def player_operation(self, device_id: str, action: str) -> None:
        await self.ubus(device_id, "mediaplayer", "player_play_operation", {"action": action, "media": "app_ios"})

    async def pause(self, device_id: str) -> None:
        await self.player_operation(device_id, "pause")

    async def stop(self, device_id: str) -> None:
        await self.player_operation(device_id, "stop")

    async def set_volume(self, device_id: str, volume: int) -> None:
        await self.ubus(device_id, "mediaplayer", "player_set_volume",
                        {"volume": max(0, min(100, int(volume))), "media": "app_ios"})

    async def play_url(self, device_id: str, url: str, music_type: int = 1) -> None:
        await self.ubus(device_id, "mediaplayer", "player_play_url",
                        {"url": url, "type": music_type, "media": "app_ios"})

    async def play_music(self, device_id: str, url: str, music_type: int = 1) -> None:
        """The play API of the models whose player_play_url stays silent (X08E, L05C, ...)."""
        music = {
            "payload": {
                "audio_type": "MUSIC" if music_type == 1 else "",
                "audio_items": [{"item_id": {"audio_id": PLAY_MUSIC_AUDIO_ID,
                                             "cp": {"album_id": "-1", "episode_index": 0, "id": "355454500",
                                                    "name": "xiaowei"}},
                                 "stream": {"url": url}}],
                "list_params": {"listId": "-1", "loadmore_offset": 0, "origin": "xiaowei", "type": "MUSIC"},
            },
            "play_behavior": "REPLACE_ALL",
        }
        await self.ubus(device_id, "mediaplayer", "player_play_music",
                        {"startaudioid": PLAY_MUSIC_AUDIO_ID, "music": json.dumps(music, ensure_ascii=False)})

    async def play_status(self, device_id: str) -> PlayStatus:
        inner = await self.ubus(device_id, "mediaplayer", "player_get_play_status", {"media": "app_ios"})
        info = inner.get("info", "{}")
        try:
            parsed = json.loads(info) if isinstance(info, str) else info
        except ValueError:
            raise BadResponse(f"speaker {device_id[:8]} play status: info is not JSON ({str(info)[:60]!r})") from None
        if not isinstance(parsed, dict):
            raise BadResponse(f"speaker {device_id[:8]} play status: unexpected info {str(info)[:60]!r}")
        return PlayStatus(status=int(parsed.get("status", -1)), volume=parsed.get("volume"),
                          media_type=parsed.get("media_type"))
