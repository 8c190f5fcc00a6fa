"""One HTTP exchange with the Xiaomi cloud, with every transport failure mapped to an error
class. Cookies are sent as an explicit header and never kept in a jar: several accounts share
one aiohttp session, and what each request carries must not depend on earlier answers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from server.xiaomi.errors import AuthExpired, BadResponse, CloudUnavailable

TIMEOUT = aiohttp.ClientTimeout(total=15, connect=5)
UA_APP = "MICO/AndroidApp/@SHIP.TO.2A2FE0D7@/2.4.40"
UA_MIOT = "Android-7.1.1-1.0.0-ONEPLUS A3010-136-ANDROID (xiaozhi-server)"


def new_http_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=TIMEOUT, cookie_jar=aiohttp.DummyCookieJar())


def cookie_header(cookies: Mapping[str, object]) -> str:
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    content_type: str
    set_cookies: dict[str, str]
    location: str = ""

    def json(self, what: str) -> Any:
        if "html" in self.content_type:
            raise BadResponse(f"{what}: got an HTML page instead of JSON (HTTP {self.status})")
        try:
            return json.loads(self.body)
        except ValueError:
            raise BadResponse(f"{what}: the answer is not JSON ({self.body[:80]!r})") from None


async def exchange(http: aiohttp.ClientSession, method: str, url: str, *, what: str,
                   cookies: Mapping[str, object] | None = None, headers: Mapping[str, str] | None = None,
                   params: Mapping[str, str] | None = None, form: Mapping[str, str] | None = None,
                   allow_redirects: bool = True, auth_statuses: tuple[int, ...] = (401, 403)) -> Reply:
    """Raises CloudUnavailable (network, timeout, 5xx), AuthExpired (401/403) or BadResponse
    (any other non-2xx/3xx status)."""
    hdrs = {"User-Agent": UA_APP, **(headers or {})}
    if cookies:
        hdrs["Cookie"] = cookie_header(cookies)
    try:
        async with http.request(method, url, headers=hdrs, params=params, data=form,
                                allow_redirects=allow_redirects) as r:
            body = await r.read()
            reply = Reply(r.status, body, r.headers.get("Content-Type", ""),
                          {k: m.value for k, m in r.cookies.items()}, r.headers.get("Location", ""))
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise CloudUnavailable(f"{what}: cannot reach {url.split('?')[0]} ({type(exc).__name__}: {exc})") from None
    if reply.status in auth_statuses:
        raise AuthExpired(f"{what}: refused with HTTP {reply.status} (token expired or not valid)")
    if reply.status >= 500:
        raise CloudUnavailable(f"{what}: Xiaomi answered HTTP {reply.status}")
    if reply.status >= 400:
        raise BadResponse(f"{what}: HTTP {reply.status} {body[:80]!r}")
    return reply
