"""MIoT (api.io.mi.com/app, sid xiaomiio): signed requests for the device list, properties and
actions. Speakers expose their own TTS and wake-up as MIoT actions (siid/aiid per model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.xiaomi.account import MIOT_SID, XiaomiAccount
from server.xiaomi.errors import AuthExpired, BadResponse, CommandFailed
from server.xiaomi.http import UA_MIOT, exchange
from server.xiaomi.store import ServiceToken
from server.xiaomi.wire import miot_form


@dataclass(frozen=True, slots=True)
class MiotDevice:
    did: str
    name: str
    model: str
    online: bool

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MiotDevice:
        return cls(did=str(d.get("did", "")), name=str(d.get("name", "")), model=str(d.get("model", "")),
                   online=bool(d.get("isOnline", False)))


class MiotService:
    def __init__(self, account: XiaomiAccount) -> None:
        self.account = account
        self.base = account.endpoints.miot.rstrip("/")
        self.commands_sent = 0

    async def request(self, uri: str, payload: dict[str, Any]) -> Any:
        """POST a signed request; returns `result`. Auth and signature errors come back as code 0
        without a result: those count as an expired token (re-login), the rest as failures."""
        what = f"MIoT {uri}"

        async def do(token: ServiceToken) -> Any:
            form = miot_form(uri, token.ssecurity, payload)
            cookies = {"userId": self.account.user_id, "serviceToken": token.service_token,
                       "yetAnotherServiceToken": token.service_token, "PassportDeviceId": self.account.device_id,
                       "locale": "zh_CN", "timezone": "GMT+08:00"}
            headers = {"User-Agent": UA_MIOT, "x-xiaomi-protocal-flag-cli": "PROTOCAL-HTTP2"}
            reply = await exchange(self.account.http, "POST", self.base + uri, what=what, form=form,
                                   cookies=cookies, headers=headers)
            data = reply.json(what)
            if not isinstance(data, dict):
                raise BadResponse(f"{what}: expected a JSON object")
            message = str(data.get("message", ""))
            if "result" not in data:
                if "auth" in message.lower() or "signature" in message.lower():
                    raise AuthExpired(f"{what}: {message}")
                raise CommandFailed(f"{what}: code {data.get('code')} {message}")
            if data.get("code") != 0:
                raise CommandFailed(f"{what}: code {data.get('code')} {message}")
            return data["result"]

        self.commands_sent += 1
        return await self.account.call(MIOT_SID, do)

    async def device_list(self) -> list[MiotDevice]:
        result = await self.request("/home/device_list", {"getVirtualModel": False, "getHuamiDevices": 0})
        items = result.get("list") if isinstance(result, dict) else None
        return [MiotDevice.from_json(d) for d in items or [] if isinstance(d, dict)]

    async def get_prop(self, did: str, siid: int, piid: int) -> Any:
        result = await self.request("/miotspec/prop/get", {"params": [{"did": did, "siid": siid, "piid": piid}]})
        if not isinstance(result, list) or not result or not isinstance(result[0], dict):
            raise BadResponse(f"MIoT prop {siid}-{piid}: unexpected result {str(result)[:80]}")
        if result[0].get("code", 0) != 0:
            raise CommandFailed(f"MIoT prop {siid}-{piid} of {did}: code {result[0].get('code')}")
        return result[0].get("value")

    async def set_prop(self, did: str, siid: int, piid: int, value: Any) -> None:
        result = await self.request("/miotspec/prop/set",
                                    {"params": [{"did": did, "siid": siid, "piid": piid, "value": value}]})
        if isinstance(result, list) and result and isinstance(result[0], dict) and result[0].get("code", 0) != 0:
            raise CommandFailed(f"MIoT set {siid}-{piid} of {did}: code {result[0].get('code')}")

    async def action(self, did: str, siid: int, aiid: int, args: list[Any] | None = None) -> None:
        result = await self.request("/miotspec/action",
                                    {"params": {"did": did, "siid": siid, "aiid": aiid, "in": list(args or [])}})
        code = result.get("code", 0) if isinstance(result, dict) else -1
        if code != 0:
            raise CommandFailed(f"MIoT action {siid}-{aiid} on {did}: code {code}")
