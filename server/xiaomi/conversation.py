"""The conversation records of one speaker (userprofile.mina.mi.com): what the user said to
XiaoAi, newest first. This is how the bridge learns of a query; there is no push."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from server.xiaomi.account import MINA_SID, XiaomiAccount
from server.xiaomi.errors import AuthExpired, BadResponse
from server.xiaomi.http import exchange
from server.xiaomi.store import ServiceToken


@dataclass(frozen=True, slots=True)
class ConversationRecord:
    request_id: str
    time_ms: int
    query: str
    answer_types: tuple[str, ...] = ()
    answer_text: str = ""

    @classmethod
    def from_json(cls, r: dict[str, Any]) -> ConversationRecord:
        answers = [a for a in r.get("answers") or [] if isinstance(a, dict)]
        types = tuple(str(a.get("type", "")) for a in answers)
        text = ""
        for a in answers:
            body = a.get(str(a.get("type", "")).lower())
            if isinstance(body, dict) and isinstance(body.get("text"), str):
                text = body["text"]
                break
        return cls(request_id=str(r.get("requestId", "")), time_ms=int(r.get("time", 0)),
                   query=str(r.get("query", "")).strip(), answer_types=types, answer_text=text)

    @property
    def xiaoai_acted(self) -> bool:
        """XiaoAi did something itself: played media (an AUDIO answer) or executed a device
        command (no answer at all, e.g. a volume change). `always` mode leaves these alone."""
        return not self.answer_types or "AUDIO" in self.answer_types

    @property
    def key(self) -> str:
        """Identity for de-duplication: the request id, or the time when there is none."""
        return self.request_id or f"t{self.time_ms}:{self.query}"


class ConversationApi:
    def __init__(self, account: XiaomiAccount) -> None:
        self.account = account
        self.url = account.endpoints.userprofile.rstrip("/") + "/device_profile/v2/conversation"

    async def latest(self, device_id: str, hardware: str, limit: int = 2,
                     before_ms: int | None = None) -> list[ConversationRecord]:
        """Records with time <= before_ms (default now), newest first, at most `limit`."""
        what = f"conversation of speaker {device_id[:8]}"

        async def do(token: ServiceToken) -> list[ConversationRecord]:
            params = {"source": "dialogu", "hardware": hardware, "limit": str(limit),
                      "timestamp": str(before_ms if before_ms is not None else int(time.time() * 1000))}
            cookies = {"deviceId": device_id, "serviceToken": token.service_token, "userId": self.account.user_id}
            reply = await exchange(self.account.http, "GET", self.url, what=what, params=params, cookies=cookies,
                                   headers={"Referer": "https://userprofile.mina.mi.com/dialogue-note/index.html"})
            data = reply.json(what)
            if not isinstance(data, dict):
                raise BadResponse(f"{what}: expected a JSON object")
            if data.get("code") != 0:
                if "auth" in str(data.get("message", "")).lower():
                    raise AuthExpired(f"{what}: {data.get('message')}")
                raise BadResponse(f"{what}: code {data.get('code')} {data.get('message', '')}")
            return parse_records(data.get("data"), what)

        return await self.account.call(MINA_SID, do)


def parse_records(payload: Any, what: str = "conversation") -> list[ConversationRecord]:
    """`data` is a JSON document inside a string; an empty or null one means no records."""
    if payload in (None, ""):
        return []
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except ValueError:
            raise BadResponse(f"{what}: data is not JSON ({payload[:60]!r})") from None
    if not isinstance(payload, dict):
        raise BadResponse(f"{what}: unexpected data {str(payload)[:60]!r}")
    out = []
    for r in payload.get("records") or []:
        if isinstance(r, dict):
            try:
                out.append(ConversationRecord.from_json(r))
            except (TypeError, ValueError):
                continue  # one odd record must not hide the others
    return out
