"""A Xiaomi account: password or passToken login, STS service tokens, token reuse, re-login.

Login for one service id (sid `micoapi` = MiNA and conversations, `xiaomiio` = MIoT):
1. GET  {account}/pass/serviceLogin?sid=..  with the login device id (and passToken, if any).
   A valid passToken answers code 0 with the credentials right away.
2. POST {account}/pass/serviceLoginAuth2 (form, MD5 upper-hex password) when step 1 did not.
3. GET  <location>&clientSign=..  (STS) -> Set-Cookie serviceToken.

Failure policy: a 401 on a service call re-logs in once (passToken first, then password); if that
fails, further attempts wait a growing delay instead of hammering Xiaomi into a captcha. The login
device id and the token file are never deleted on any error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urljoin

import aiohttp

from server.xiaomi.errors import (
    AuthExpired,
    CaptchaRequired,
    LoginError,
    NoCredentials,
    PassTokenRejected,
    VerificationRequired,
    WrongPassword,
)
from server.xiaomi.http import Reply, exchange
from server.xiaomi.store import AccountStore, AccountTokens, ServiceToken
from server.xiaomi.wire import client_sign, parse_account_json, password_hash

log = logging.getLogger("server.xiaomi")

MINA_SID = "micoapi"
MIOT_SID = "xiaomiio"
SIDS = (MINA_SID, MIOT_SID)

T = TypeVar("T")

CODE_WRONG_PASSWORD = 70016
CODE_CAPTCHA = 87001


@dataclass(frozen=True)
class Endpoints:
    account: str = "https://account.xiaomi.com"
    mina: str = "https://api2.mina.mi.com"
    userprofile: str = "https://userprofile.mina.mi.com"
    miot: str = "https://api.io.mi.com/app"


@dataclass
class Backoff:
    """Growing delay after failed re-logins: 30 s, 60 s, ... up to 30 min; reset by a success."""

    first_s: float = 30.0
    max_s: float = 1800.0
    failures: int = 0
    blocked_until: float = 0.0
    last_error: LoginError | None = None

    def failed(self, error: LoginError, now: float) -> float:
        self.failures += 1
        delay = min(self.max_s, self.first_s * 2 ** (self.failures - 1))
        if isinstance(error, CaptchaRequired):
            delay = max(delay, error.retry_after_s)  # more logins only prolong a rate limit
        self.blocked_until = now + delay
        self.last_error = error
        return delay

    def succeeded(self) -> None:
        self.failures, self.blocked_until, self.last_error = 0, 0.0, None


class XiaomiAccount:
    def __init__(self, http: aiohttp.ClientSession, store: AccountStore, endpoints: Endpoints | None = None, *,
                 password: str = "", pass_token: str = "", clock: Callable[[], float] = time.monotonic) -> None:
        self.http = http
        self.store = store
        self.endpoints = endpoints or Endpoints()
        self.user_id = store.user_id
        self.password = password
        self.configured_pass_token = pass_token
        self.clock = clock
        self.backoff = Backoff()
        self._tokens: AccountTokens | None = None
        self._loaded = False
        self._device_id: str | None = None
        self._lock = asyncio.Lock()
        self.logins = 0  # completed logins (tests and logs)

    # -- state ---------------------------------------------------------------------------------

    @property
    def device_id(self) -> str:
        """The login device id (read, or created once, from its own file; then kept in memory)."""
        if self._device_id is None:
            self._device_id = self.store.device_id()
        return self._device_id

    async def _state(self) -> AccountTokens:
        if not self._loaded:
            # File work off the event loop: many speakers share it.
            self._tokens = await asyncio.to_thread(self.store.load_tokens)
            self._device_id = await asyncio.to_thread(self.store.device_id)
            self._loaded = True
        if self._tokens is None:
            self._tokens = AccountTokens(user_id=self.user_id)
        return self._tokens

    async def _save(self) -> None:
        assert self._tokens is not None
        await asyncio.to_thread(self.store.save_tokens, self._tokens)

    async def token(self, sid: str) -> ServiceToken:
        """The service token for `sid`: from memory, the token file, or a fresh login."""
        state = await self._state()
        if sid in state.services:
            return state.services[sid]
        async with self._lock:
            if sid not in state.services:
                await self._login_guarded(sid)
        return state.services[sid]

    async def relogin(self, sid: str, stale: ServiceToken) -> ServiceToken:
        """After a refused call: log in again, unless another caller already did."""
        state = await self._state()
        async with self._lock:
            current = state.services.get(sid)
            if current is not None and current.service_token != stale.service_token:
                return current
            state.services.pop(sid, None)
            log.warning("Xiaomi account %s: %s token refused; logging in again", self.user_id, sid)
            await self._login_guarded(sid)
        return state.services[sid]

    async def call(self, sid: str, do: Callable[[ServiceToken], Awaitable[T]]) -> T:
        """Run a service request; on AuthExpired re-login once and retry once."""
        token = await self.token(sid)
        try:
            return await do(token)
        except AuthExpired:
            token = await self.relogin(sid, token)
        return await do(token)

    # -- login ---------------------------------------------------------------------------------

    async def login(self, sids: tuple[str, ...] = SIDS) -> None:
        """Log in for every service now (the CLI), ignoring any backoff."""
        await self._state()
        async with self._lock:
            self.backoff.succeeded()
            for sid in sids:
                await self._login(sid)

    async def _login_guarded(self, sid: str) -> None:
        now = self.clock()
        if now < self.backoff.blocked_until and self.backoff.last_error is not None:
            raise self.backoff.last_error
        try:
            await self._login(sid)
        except LoginError as exc:
            delay = self.backoff.failed(exc, self.clock())
            log.error("%s (next login attempt in %.0f s)", exc, delay)
            raise
        self.backoff.succeeded()

    def _login_cookies(self, state: AccountTokens) -> dict[str, str]:
        pass_token = state.pass_token or self.configured_pass_token
        cookies = {"sdkVersion": "3.9", "deviceId": self.device_id}
        if pass_token:
            cookies.update(userId=self.user_id, passToken=pass_token)
        else:
            # An absent cookie and an empty one are answered differently; the apps send it empty.
            cookies["passToken"] = ""
        return cookies

    async def _login(self, sid: str) -> None:
        state = await self._state()
        base = self.endpoints.account.rstrip("/")
        cookies = self._login_cookies(state)
        had_pass_token = "userId" in cookies
        reply = await exchange(self.http, "GET", f"{base}/pass/serviceLogin", what=f"login ({sid})",
                               params={"sid": sid, "_json": "true", "_locale": "zh_CN"}, cookies=cookies,
                               auth_statuses=())
        data = parse_account_json(reply.body, f"login ({sid})")
        if not _has_credentials(data):
            self._raise_for_captcha(data)
            if self.password:
                data = await self._password_step(sid, data, cookies)
            elif had_pass_token:
                raise PassTokenRejected(self.user_id)
            else:
                raise NoCredentials(self.user_id)
        await self._finish(sid, data)

    async def _password_step(self, sid: str, first: dict[str, Any], cookies: dict[str, str]) -> dict[str, Any]:
        base = self.endpoints.account.rstrip("/")
        form = {"_json": "true", "qs": str(first.get("qs", "")), "sid": str(first.get("sid", sid)),
                "_sign": str(first.get("_sign", "")), "callback": str(first.get("callback", "")),
                "user": self.user_id, "hash": password_hash(self.password)}
        # The password replaces a passToken that was just refused.
        cookies = {k: v for k, v in cookies.items() if k not in ("userId", "passToken")} | {"passToken": ""}
        reply = await exchange(self.http, "POST", f"{base}/pass/serviceLoginAuth2", what=f"login ({sid})",
                               form=form, cookies=cookies, auth_statuses=())
        data = parse_account_json(reply.body, f"login ({sid})")
        if _has_credentials(data):
            return data
        notification = str(data.get("notificationUrl") or "")
        if notification:
            raise VerificationRequired(self.user_id, urljoin(base + "/", notification))
        self._raise_for_captcha(data)
        if data.get("code") == CODE_WRONG_PASSWORD:
            raise WrongPassword(self.user_id)
        raise LoginError(f"Xiaomi account {self.user_id}: login refused (code {data.get('code')}, "
                         f"{data.get('description') or data.get('desc') or 'no description'})")

    def _raise_for_captcha(self, data: dict[str, Any]) -> None:
        if data.get("code") == CODE_CAPTCHA or data.get("captchaUrl"):
            raise CaptchaRequired(self.user_id, str(data.get("captchaUrl") or ""))

    async def _finish(self, sid: str, data: dict[str, Any]) -> None:
        state = await self._state()
        got_user = str(data.get("userId", ""))
        if got_user and got_user != self.user_id:
            raise LoginError(f"Xiaomi account {self.user_id}: Xiaomi answered for account {got_user}; "
                             "check user_id (the numeric 小米ID)")
        ssecurity, nonce, location = str(data["ssecurity"]), data["nonce"], str(data["location"])
        service_token = await self._sts(sid, location, nonce, ssecurity)
        if data.get("passToken"):
            state.pass_token = str(data["passToken"])
        elif not state.pass_token and self.configured_pass_token:
            state.pass_token = self.configured_pass_token
        state.c_user_id = str(data.get("cUserId") or state.c_user_id)
        state.services[sid] = ServiceToken(ssecurity, service_token, time.time())
        await self._save()
        self.logins += 1
        log.info("Xiaomi account %s: logged in to %s", self.user_id, sid)

    async def _sts(self, sid: str, location: str, nonce: Any, ssecurity: str) -> str:
        url = location + ("&" if "?" in location else "?") + "clientSign=" + quote(client_sign(nonce, ssecurity))
        # The serviceToken cookie may be set on a redirect hop: follow by hand and look at each.
        for _ in range(4):
            reply: Reply = await exchange(self.http, "GET", url, what=f"service token ({sid})",
                                          allow_redirects=False, auth_statuses=())
            token = reply.set_cookies.get("serviceToken")
            if token:
                return token
            if reply.status in (301, 302, 303, 307, 308) and reply.location:
                url = urljoin(url, reply.location)
                continue
            break
        raise LoginError(f"Xiaomi account {self.user_id}: the STS step for {sid} returned no serviceToken "
                          f"(HTTP {reply.status}); the login answer was probably changed by Xiaomi")


def _has_credentials(data: dict[str, Any]) -> bool:
    return data.get("code") == 0 and bool(data.get("ssecurity")) and bool(data.get("location")) \
        and data.get("nonce") not in (None, "")
