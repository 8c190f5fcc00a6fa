"""A local stand-in for the Xiaomi cloud a XiaoAi bridge talks to (aiohttp, 127.0.0.1).

It speaks the wire shapes of shared/spec/xiaomi-cloud.md §7, one product per path prefix so a
client that mixes up its base URLs fails:
- `/account/pass/serviceLogin`, `/account/pass/serviceLoginAuth2`: answers prefixed with
  `&&&START&&&`, `userId` and a > 2**53 `nonce` as bare JSON integers; Auth2 wants a form body
  (a JSON body gets an HTML page) with the MD5 upper-hex password hash. Scenarios per account:
  `ok`, `verify` (securityStatus 16 + notificationUrl), `captcha` (87001), `new_device`
  (verification until `approve_device()` is called for that login device id, as Xiaomi does for
  a device id it has not seen). A passToken is bound to the login device id it was issued to.
- `/sts/<sid>?...&clientSign=`: checks b64(sha1("nonce=<nonce>&<ssecurity>")), then answers 200
  with `Set-Cookie: serviceToken=...`; a bad sign gets 401 and no cookie.
- `/mina/admin/v2/device_list`, `/mina/remote/ubus` (form; `message` must be a JSON string):
  text_to_speech, player_play_operation, player_set_volume, player_play_url, player_play_music,
  player_get_play_status. Invalid token -> HTTP 401. Offline speaker -> code 101 / ROM 3012.
- `/userprofile/device_profile/v2/conversation`: records newest first with time <= timestamp,
  each visible only `lag_s` after it was said; bad cookies -> 401 text/html.
- `/miot/app/...`: form `_nonce, data, signature`, the signature verified with the ssecurity of
  the serviceToken; bad signature -> `{"code":0,"message":"invalid signature"}`; bad token -> 401
  or `{"code":0,"message":"auth err"}` (`miot_auth_style`).

The speakers behave per model: the player is "playing" for the duration of what it says
(len(text)/4.5 s times `speech_scale`) or of the audio it fetched from a play URL (it really
downloads and decodes it); X08E/L05C ignore MiNA TTS and report no play status, and play_url is
silent on the play_music models. Saying something (`say()`) starts XiaoAi's native answer, which a
pause/stop cuts. Everything audible is logged in `speaker.events` with its start/end times, and
`speaker.overlaps` counts anything started while something else was still playing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import os
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from server.xiaomi.wire import JSON_PREFIX, client_sign, miot_signature, signed_nonce

from .http_base import FakeHTTPServer

SIGNS = {"micoapi": "58VY7HzpBxBcLsgTGFWDyJ7fEtw=", "xiaomiio": "0psXfr43eNI0IX6q9Suk3qWbRqU="}


@dataclass(frozen=True)
class FakeModel:
    tts_action: tuple[int, int] = (5, 1)
    wake_action: tuple[int, int] = (5, 3)
    mina_tts: bool = True       # False: text_to_speech answers ok and nothing is heard
    play_status: bool = True    # False: player_get_play_status always reports idle
    playing_prop: bool = True   # MIoT 3-1 playing-state
    play_url_works: bool = True  # False: player_play_url is silent (needs player_play_music)


# Our own reading of the spec's §4.5 table, kept apart from server/xiaomi/models.yaml on purpose.
MODELS: dict[str, FakeModel] = {
    "LX06": FakeModel(),
    "S12": FakeModel(),
    "OH2P": FakeModel(tts_action=(7, 3), wake_action=(7, 1), play_url_works=False),
    "L15A": FakeModel(tts_action=(7, 3), wake_action=(7, 1)),
    "X08E": FakeModel(tts_action=(7, 3), wake_action=(7, 1), mina_tts=False, play_status=False,
                      playing_prop=False, play_url_works=False),
    "L05C": FakeModel(tts_action=(5, 3), wake_action=(5, 1), mina_tts=False, play_status=False,
                      play_url_works=False),
    "LX01": FakeModel(wake_action=(5, 2), play_status=False),
}


@dataclass
class AudioEvent:
    kind: str   # native | tts | miot_tts | url | wake | silent_tts | silent_url
    text: str   # the text spoken, or the URL played
    start: float  # time.monotonic()
    end: float
    cut_at: float | None = None
    audio: bytes = b""  # what a played URL returned

    @property
    def audible(self) -> bool:
        return not self.kind.startswith("silent") and self.kind != "wake"


@dataclass
class Command:
    at: float
    api: str     # ubus | miot
    name: str    # ubus method, or "action 5-1", "prop/get 3-1", ...
    args: Any
    client: str = ""  # the login device id of the session that sent it (which server process)


@dataclass
class FakeSpeaker:
    name: str
    hardware: str = "LX06"
    alias: str = ""
    device_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    miot_did: str = field(default_factory=lambda: str(secrets.randbelow(10**9) + 10**8))
    serial_number: str = field(
        default_factory=lambda: f"{secrets.randbelow(90000) + 10000}/{secrets.token_hex(4).upper()}")
    online: bool = True
    volume: int = 40
    events: list[AudioEvent] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    records: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # (visible_at, record)
    wakes: int = 0
    overlaps: int = 0
    stopped: bool = False

    @property
    def model(self) -> FakeModel:
        return MODELS.get(self.hardware.upper(), FakeModel())

    def current(self, now: float | None = None) -> AudioEvent | None:
        now = time.monotonic() if now is None else now
        for e in reversed(self.events):
            if e.audible and e.cut_at is None and e.start <= now < e.end:
                return e
        return None

    def playing(self) -> bool:
        return self.current() is not None

    def _play(self, kind: str, text: str, duration: float, audio: bytes = b"") -> AudioEvent:
        now = time.monotonic()
        event = AudioEvent(kind, text, now, now + duration, audio=audio)
        if event.audible:
            if self.current(now) is not None and self.current(now).kind != "native":  # type: ignore[union-attr]
                self.overlaps += 1
            self._cut(now)  # a new sound replaces the current one, as on the real player
        self.events.append(event)
        self.stopped = False
        return event

    def _cut(self, now: float) -> None:
        for e in self.events:
            if e.cut_at is None and e.start <= now < e.end:
                e.cut_at = now

    def spoken(self, *kinds: str) -> list[AudioEvent]:
        kinds = kinds or ("tts", "miot_tts", "url")
        return [e for e in self.events if e.kind in kinds]

    def first_command(self, *names: str) -> Command | None:
        return next((c for c in self.commands if c.name in names), None)


@dataclass
class FakeAccount:
    user_id: str
    password: str
    speakers: list[FakeSpeaker] = field(default_factory=list)
    login_mode: str = "ok"   # ok | verify | captcha | new_device
    approved_devices: set[str] = field(default_factory=set)
    pass_tokens: dict[str, str] = field(default_factory=dict)  # passToken -> login device id

    def speaker(self, key: str) -> FakeSpeaker:
        return next(s for s in self.speakers if key in (s.name, s.device_id, s.miot_did, s.alias))


@dataclass
class _Session:
    user_id: str
    sid: str
    ssecurity: str
    valid: bool = True
    client: str = ""  # login device id the session was issued to


@dataclass
class FakeXiaomiCloud(FakeHTTPServer):
    accounts: dict[str, FakeAccount] = field(default_factory=dict)
    speech_scale: float = 1.0      # seconds of playback per second of real speech (tests use < 1)
    record_lag_s: float = 0.3      # default delay before a query shows in the conversation API
    native_answer_s: float = 2.0   # how long XiaoAi's own answer plays if nobody stops it
    miot_auth_style: str = "401"   # "401" | "code0"
    # counters and logs for the tests
    logins: list[tuple[str, str, str]] = field(default_factory=list)  # (user, sid, how)
    requests: list[tuple[float, str]] = field(default_factory=list)   # (time, path)
    first_served: dict[str, float] = field(default_factory=dict)      # requestId -> first poll that got it
    polls: dict[str, int] = field(default_factory=dict)              # speaker deviceID -> conversation polls
    poll_log: list[tuple[float, str, str]] = field(default_factory=list)  # (time, speaker deviceID, client)
    _sessions: dict[str, _Session] = field(default_factory=dict)      # serviceToken -> session
    _pending_sts: dict[str, tuple[str, str, int, str, str]] = field(default_factory=dict)
    _http: aiohttp.ClientSession | None = None
    _fetches: set[asyncio.Task[None]] = field(default_factory=set)

    # -- test control ----------------------------------------------------------------------------

    def add_account(self, user_id: str, password: str, *speakers: FakeSpeaker, login_mode: str = "ok") -> FakeAccount:
        account = FakeAccount(user_id, password, list(speakers), login_mode=login_mode)
        self.accounts[user_id] = account
        return account

    def endpoints(self) -> dict[str, str]:
        return {"account": f"{self.url}/account", "mina": f"{self.url}/mina",
                "userprofile": f"{self.url}/userprofile", "miot": f"{self.url}/miot/app"}

    def approve_device(self, user_id: str, login_device_id: str) -> None:
        """The user passed the SMS check in a browser for this login device id."""
        self.accounts[user_id].approved_devices.add(login_device_id)

    def expire_tokens(self, user_id: str) -> None:
        for s in self._sessions.values():
            if s.user_id == user_id:
                s.valid = False

    def revoke_pass_tokens(self, user_id: str) -> None:
        self.accounts[user_id].pass_tokens.clear()

    def say(self, speaker: FakeSpeaker, query: str, *, lag_s: float | None = None, native_answer: str = "好的",
            answers: list[dict[str, Any]] | None = None, native_s: float | None = None) -> dict[str, Any]:
        """The user speaks to XiaoAi: it starts its own answer now; the record shows up after the lag."""
        now = time.monotonic()
        if answers is None:
            answers = [{"bitSet": [0, 1, 1, 1], "type": "TTS", "tts": {"bitSet": [0, 1], "text": native_answer}}]
        record = {"bitSet": [0, 1, 1, 1, 1], "answers": answers, "time": int(time.time() * 1000),
                  "query": query, "requestId": uuid.uuid4().hex}
        lag = self.record_lag_s if lag_s is None else lag_s
        speaker.records.append((now + lag, record))
        if answers:
            duration = self.native_answer_s if native_s is None else native_s
            speaker._play("native", native_answer, duration)
        return record

    # -- plumbing --------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._log])
        app.router.add_get("/account/pass/serviceLogin", self._service_login)
        app.router.add_post("/account/pass/serviceLoginAuth2", self._service_login_auth2)
        app.router.add_get("/account/identity/authStart", self._auth_start)
        app.router.add_get("/sts/{sid}", self._sts)
        app.router.add_get("/mina/admin/v2/device_list", self._mina_device_list)
        app.router.add_post("/mina/remote/ubus", self._ubus)
        app.router.add_get("/userprofile/device_profile/v2/conversation", self._conversation)
        app.router.add_post("/miot/app/{path:.*}", self._miot)
        app.on_cleanup.append(self._close_http)
        return app

    async def _close_http(self, app: web.Application) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    @web.middleware
    async def _log(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((time.monotonic(), request.path))
        return await handler(request)

    @staticmethod
    def visible_at(speaker: FakeSpeaker, request_id: str) -> float | None:
        return next((at for at, r in speaker.records if r["requestId"] == request_id), None)

    def count(self, path_part: str) -> int:
        return sum(1 for _, p in self.requests if path_part in p)

    @staticmethod
    def _account_reply(data: dict[str, Any], cookies: dict[str, str] | None = None) -> web.Response:
        # Bare integers for userId and nonce, as Xiaomi sends them (json.dumps keeps big ints exact).
        resp = web.Response(text=JSON_PREFIX + json.dumps(data, ensure_ascii=False), content_type="application/json")
        for k, v in (cookies or {}).items():
            resp.set_cookie(k, v, path="/")
        return resp

    def _login_failed_body(self, sid: str, code: int = 70016) -> dict[str, Any]:
        return {"serviceParam": "{\"checkSafePhone\":false}", "qs": f"%3Fsid%3D{sid}%26_json%3Dtrue", "code": code,
                "description": "登录验证失败", "securityStatus": 0, "_sign": SIGNS.get(sid, "x"), "sid": sid,
                "result": "error", "captchaUrl": None, "callback": f"{self.url}/sts/{sid}",
                "location": "", "pwd": 0, "child": 0, "desc": "登录验证失败"}

    def _credentials(self, account: FakeAccount, sid: str, login_device_id: str, pass_token: str) -> dict[str, Any]:
        ssecurity = base64.b64encode(os.urandom(16)).decode()
        nonce = secrets.randbelow(2**63 - 2**60) + 2**60  # always above 2**53
        key = secrets.token_hex(8)
        self._pending_sts[key] = (account.user_id, sid, nonce, ssecurity, login_device_id)
        location = (f"{self.url}/sts/{sid}?d={login_device_id}&ticket=0&pwd=1&p_ts={int(time.time() * 1000)}"
                    f"&fid=0&nonce={secrets.token_urlsafe(12)}&tk={key}&_userIdNeedEncrypt=true")
        return {"code": 0, "result": "ok", "description": "成功", "desc": "成功", "securityStatus": 0,
                "userId": int(account.user_id), "cUserId": "cU_" + account.user_id[-4:], "passToken": pass_token,
                "ssecurity": ssecurity, "psecurity": base64.b64encode(os.urandom(16)).decode(), "nonce": nonce,
                "location": location, "notificationUrl": "", "captchaUrl": None, "pwd": 1, "child": 0}

    # -- account -----------------------------------------------------------------------------------

    async def _service_login(self, request: web.Request) -> web.Response:
        sid = request.query.get("sid", "")
        if request.query.get("_json") != "true" or sid not in SIGNS:
            return web.Response(text="<html>bad request</html>", content_type="text/html")
        c = request.cookies
        account = self.accounts.get(c.get("userId", ""))
        token = c.get("passToken", "")
        device = c.get("deviceId", "")
        if account is not None and token and account.pass_tokens.get(token) == device and device:
            if account.login_mode == "captcha":
                return self._account_reply(self._login_failed_body(sid, 87001) | {"captchaUrl": f"{self.url}/captcha"})
            self.logins.append((account.user_id, sid, "pass_token"))
            return self._account_reply(self._credentials(account, sid, device, token))
        return self._account_reply(self._login_failed_body(sid))

    async def _service_login_auth2(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-www-form-urlencoded":
            return web.Response(text="<html><body>login</body></html>", content_type="text/html")
        form = await request.post()
        sid = str(form.get("sid", ""))
        expected = {"_json": "true", "qs": f"%3Fsid%3D{sid}%26_json%3Dtrue", "_sign": SIGNS.get(sid),
                    "callback": f"{self.url}/sts/{sid}"}
        if any(form.get(k) != v for k, v in expected.items()):
            return self._account_reply(self._login_failed_body(sid) | {"code": 70002, "description": "参数错误"})
        account = self.accounts.get(str(form.get("user", "")))
        device = request.cookies.get("deviceId", "")
        if account is None or form.get("hash") != hashlib.md5(account.password.encode()).hexdigest().upper():
            return self._account_reply(self._login_failed_body(sid))
        if account.login_mode == "captcha":
            return self._account_reply(self._login_failed_body(sid, 87001) | {"captchaUrl": f"{self.url}/captcha"})
        unknown_device = account.login_mode == "new_device" and device not in account.approved_devices
        if account.login_mode == "verify" or unknown_device:
            context = secrets.token_hex(8)
            return self._account_reply({
                "notificationUrl": f"{self.url}/account/identity/authStart?sid={sid}&context={context}&_locale=zh_CN",
                "result": "ok", "code": 0, "captchaUrl": None, "description": "成功", "location": "",
                "securityStatus": 16, "pwd": 0, "child": 0, "desc": "成功"})
        pass_token = "V1:" + secrets.token_urlsafe(24)
        account.pass_tokens[pass_token] = device
        self.logins.append((account.user_id, sid, "password"))
        return self._account_reply(self._credentials(account, sid, device, pass_token),
                                   cookies={"passToken": pass_token, "userId": account.user_id})

    async def _auth_start(self, request: web.Request) -> web.Response:
        return web.Response(text="<html>身份验证</html>", content_type="text/html")

    async def _sts(self, request: web.Request) -> web.Response:
        pending = self._pending_sts.pop(request.query.get("tk", ""), None)
        if pending is None:
            return web.Response(status=401, text="unknown ticket")
        user_id, sid, nonce, ssecurity, client = pending
        if request.match_info["sid"] != sid or request.query.get("clientSign") != client_sign(nonce, ssecurity):
            return web.Response(status=401, text="bad clientSign")
        token = secrets.token_urlsafe(40)
        self._sessions[token] = _Session(user_id, sid, ssecurity, client=client)
        resp = web.Response(text="ok")
        resp.set_cookie("serviceToken", token, path="/")
        resp.set_cookie("userId", user_id, path="/")
        return resp

    def _session(self, request: web.Request, sid: str) -> _Session | None:
        c = request.cookies
        s = self._sessions.get(c.get("serviceToken", ""))
        if s is None or not s.valid or s.sid != sid or c.get("userId") != s.user_id:
            return None
        return s

    # -- MiNA --------------------------------------------------------------------------------------

    async def _mina_device_list(self, request: web.Request) -> web.Response:
        s = self._session(request, "micoapi")
        if s is None:
            return web.Response(status=401, text="<html>401</html>", content_type="text/html")
        data = [{"deviceID": sp.device_id, "serialNumber": sp.serial_number, "name": sp.name,
                 "alias": sp.alias or sp.name, "current": False, "presence": "online" if sp.online else "offline",
                 "address": "127.0.0.1", "miotDID": sp.miot_did, "hardware": sp.hardware, "romVersion": "1.88.51",
                 "capabilities": {"yunduantts": 1}, "mac": "AA:BB:CC:DD:EE:FF"}
                for sp in self.accounts[s.user_id].speakers]
        return web.json_response({"code": 0, "message": "Success", "data": data})

    @staticmethod
    def _ok(info: Any = "{}") -> web.Response:
        return web.json_response({"code": 0, "message": "Success", "data": {"code": 0, "info": info}})

    async def _ubus(self, request: web.Request) -> web.Response:
        s = self._session(request, "micoapi")
        if s is None:
            return web.Response(status=401, text="<html>401</html>", content_type="text/html")
        form = await request.post()
        try:
            message = json.loads(str(form.get("message", "")))
        except ValueError:
            return web.json_response({"code": 400, "message": "message is not JSON"})
        sp = next((x for x in self.accounts[s.user_id].speakers if x.device_id == form.get("deviceId")), None)
        if sp is None or not sp.online:
            return web.json_response({"code": 101, "message": "ubus server or device returned invalid result",
                                      "data": {"device_data": json.dumps({"msg": "ROM端未响应", "code": 3012},
                                                                         ensure_ascii=False),
                                               "reqID": str(form.get("requestId", ""))}})
        method = str(form.get("method", ""))
        sp.commands.append(Command(time.monotonic(), "ubus", method, message, s.client))
        model = sp.model
        if method == "text_to_speech":
            text = str(message.get("text", ""))
            sp._play("tts" if model.mina_tts else "silent_tts", text, self._speech_s(text))
            return self._ok()
        if method == "player_play_operation":
            action = message.get("action")
            if action in ("pause", "stop"):
                sp._cut(time.monotonic())
                sp.stopped = True
            return self._ok()
        if method == "player_set_volume":
            sp.volume = int(message.get("volume", sp.volume))
            return self._ok()
        if method in ("player_play_url", "player_play_music"):
            if method == "player_play_url":
                url = str(message.get("url", ""))
            else:
                music = json.loads(message.get("music", "{}"))
                url = music["payload"]["audio_items"][0]["stream"]["url"]
            silent = method == "player_play_url" and not model.play_url_works
            event = sp._play("silent_url" if silent else "url", url, 3600)
            task = asyncio.get_running_loop().create_task(self._fetch_audio(event))
            self._fetches.add(task)  # referenced until done, or it could be collected mid-flight
            task.add_done_callback(self._fetches.discard)
            return self._ok()
        if method == "player_get_play_status":
            current = sp.current()
            status = 1 if (current is not None and model.play_status) else (3 if sp.stopped else 0)
            if not model.play_status:
                status = 0
            info = {"status": status, "volume": sp.volume, "loop_type": 1,
                    "media_type": 3 if current is not None and current.kind == "url" else None,
                    "play_song_detail": {"title": "", "position": 0, "duration": 0}}
            return self._ok(json.dumps(info))
        return web.json_response({"code": 0, "message": "Success", "data": {"code": -1, "info": "unknown method"}})

    def _speech_s(self, text: str) -> float:
        return max(0.2, len(text) / 4.5) * self.speech_scale

    async def _fetch_audio(self, event: AudioEvent) -> None:
        """Like the speaker: download the URL, play it for its decoded duration."""
        host = urlsplit(event.text).hostname
        if host not in ("127.0.0.1", "localhost"):  # never leave this machine
            event.end = time.monotonic()
            return
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        try:
            async with self._http.get(event.text) as r:
                body = await r.read()
                ok = r.status == 200
        except aiohttp.ClientError:
            body, ok = b"", False
        duration = audio_seconds(body) if ok else 0.0
        event.audio = body
        event.end = time.monotonic() + duration * self.speech_scale

    # -- conversation ------------------------------------------------------------------------------

    async def _conversation(self, request: web.Request) -> web.Response:
        s = self._session(request, "micoapi")
        sp = None
        if s is not None:
            sp = next((x for x in self.accounts[s.user_id].speakers
                       if x.device_id == request.cookies.get("deviceId")), None)
        if s is None or sp is None or request.query.get("source") != "dialogu":
            return web.Response(status=401, text="<html><body>401 Unauthorized</body></html>",
                                content_type="text/html")
        now = time.monotonic()
        self.polls[sp.device_id] = self.polls.get(sp.device_id, 0) + 1
        self.poll_log.append((now, sp.device_id, s.client))
        upper = int(request.query.get("timestamp") or time.time() * 1000)
        limit = int(request.query.get("limit") or 10)
        visible = [r for at, r in sp.records if at <= now and r["time"] <= upper]
        visible.sort(key=lambda r: r["time"], reverse=True)
        page = visible[:limit]
        for r in page:
            self.first_served.setdefault(r["requestId"], now)
        data = {"bitSet": [0, 1, 1], "records": page,
                "nextEndTime": (page[-1]["time"] - 1) if page else 0}
        return web.json_response({"code": 0, "message": "Success", "data": json.dumps(data, ensure_ascii=False)})

    # -- MIoT --------------------------------------------------------------------------------------

    def _miot_auth_error(self) -> web.Response:
        if self.miot_auth_style == "401":
            return web.Response(status=401, text="auth err")
        return web.json_response({"code": 0, "message": "auth err"})

    async def _miot(self, request: web.Request) -> web.Response:
        s = self._session(request, "xiaomiio")
        if s is None:
            return self._miot_auth_error()
        form = await request.post()
        uri = "/" + request.match_info["path"]
        nonce, data, signature = (str(form.get(k, "")) for k in ("_nonce", "data", "signature"))
        try:
            expected = miot_signature(uri, signed_nonce(s.ssecurity, nonce), nonce, data)
        except (ValueError, TypeError):
            expected = None
        if not signature or signature != expected:
            return web.json_response({"code": 0, "message": "invalid signature"})
        payload = json.loads(data)
        speakers = self.accounts[s.user_id].speakers
        if uri == "/home/device_list":
            return self._miot_ok({"list": [
                {"did": sp.miot_did, "token": secrets.token_hex(16), "name": sp.name,
                 "model": f"xiaomi.wifispeaker.{sp.hardware.lower()}", "localip": "127.0.0.1",
                 "mac": "AA:BB:CC:DD:EE:FF", "isOnline": sp.online, "desc": "", "uid": int(s.user_id),
                 "pd_id": 0, "rssi": -40, "extra": {"fw_version": "1.88.51"}} for sp in speakers]})
        if uri in ("/miotspec/prop/get", "/miotspec/prop/set"):
            out = []
            for p in payload.get("params", []):
                sp = next((x for x in speakers if x.miot_did == str(p.get("did"))), None)
                key = (int(p.get("siid", 0)), int(p.get("piid", 0)))
                item = {"did": p.get("did"), "siid": key[0], "piid": key[1], "code": 0}
                if sp is None or not sp.online:
                    item["code"] = -704042011
                elif uri.endswith("get") and key == (3, 1) and sp.model.playing_prop:
                    item["value"] = 1 if sp.playing() else 0
                elif uri.endswith("get") and key == (2, 1):
                    item["value"] = sp.volume
                elif uri.endswith("set") and key == (2, 1):
                    sp.volume = int(p.get("value", sp.volume))
                else:
                    item["code"] = -704220043
                if sp is not None:
                    sp.commands.append(Command(time.monotonic(), "miot", f"prop {key[0]}-{key[1]}", p.get("value"),
                                               s.client))
                out.append(item)
            return self._miot_ok(out)
        if uri == "/miotspec/action":
            p = payload.get("params", {})
            sp = next((x for x in speakers if x.miot_did == str(p.get("did"))), None)
            siid, aiid = int(p.get("siid", 0)), int(p.get("aiid", 0))
            result = {"did": p.get("did"), "siid": siid, "aiid": aiid, "code": 0, "out": []}
            if sp is None or not sp.online:
                result["code"] = -704042011
                return self._miot_ok(result)
            args = p.get("in", [])
            sp.commands.append(Command(time.monotonic(), "miot", f"action {siid}-{aiid}", args, s.client))
            if (siid, aiid) == sp.model.tts_action:
                text = str(args[0]) if args else ""
                sp._play("miot_tts", text, self._speech_s(text))
            elif (siid, aiid) == sp.model.wake_action or (siid, aiid) == (5, 5) and args[:1] == ["小爱同学"]:
                sp.wakes += 1
                sp._play("wake", "", 0.0)
            else:
                result["code"] = -704220043
            return self._miot_ok(result)
        return web.json_response({"code": -1, "message": "unknown path"})

    @staticmethod
    def _miot_ok(result: Any) -> web.Response:
        return web.json_response({"code": 0, "message": "ok", "result": result})


def audio_seconds(body: bytes) -> float:
    """Decoded duration of an audio file (MP3, WAV, ...), 0 if it does not decode."""
    if not body:
        return 0.0
    try:
        import av

        with contextlib.closing(av.open(io.BytesIO(body))) as container:
            samples, rate = 0, 0
            for frame in container.decode(audio=0):
                samples += frame.samples
                rate = frame.sample_rate
        return samples / rate if rate else 0.0
    except Exception:  # noqa: BLE001 - anything undecodable is "nothing to play"
        return 0.0
