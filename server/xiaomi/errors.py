"""What can go wrong talking to the Xiaomi cloud, one class per thing a user (or the bridge) does
about it. Every message is a full sentence that says what to do next."""

from __future__ import annotations


class XiaomiError(Exception):
    """Base class. `retry_after_s` hints how long a caller should wait before trying again."""

    retry_after_s: float = 10.0


class LoginError(XiaomiError):
    """Logging in failed; retrying with the same input will not help by itself."""

    retry_after_s = 300.0


class WrongPassword(LoginError):
    def __init__(self, user_id: str) -> None:
        super().__init__(
            f"Xiaomi account {user_id}: wrong password or account (code 70016). Use the numeric Xiaomi ID "
            "(小米ID), not a phone number or e-mail, and check the password.")


class VerificationRequired(LoginError):
    """Xiaomi wants an SMS/e-mail check for this login (securityStatus 16 + notificationUrl)."""

    def __init__(self, user_id: str, notification_url: str) -> None:
        self.notification_url = notification_url
        super().__init__(
            f"Xiaomi account {user_id}: Xiaomi asks for a security verification before this login. Open "
            f"{notification_url} in a browser and verify, then run `python -m server.xiaomi login` again; or log "
            "in with a passToken instead (log in at https://account.xiaomi.com in a browser, copy the cookies "
            "passToken and userId, and run `python -m server.xiaomi login --pass-token`). "
            "小米要求安全验证：请在浏览器打开上面的链接完成验证后重新登录，或改用 passToken 登录。")


class CaptchaRequired(LoginError):
    """Too many logins (87001) or a captcha: only waiting helps."""

    retry_after_s = 1800.0

    def __init__(self, user_id: str, captcha_url: str = "") -> None:
        self.captcha_url = captcha_url
        where = f" ({captcha_url})" if captcha_url else ""
        super().__init__(
            f"Xiaomi account {user_id}: Xiaomi asks for a captcha / rate-limits logins{where}. Wait an hour "
            "before trying again, or log in with a passToken. 登录过于频繁，请一小时后再试，或使用 passToken 登录。")


class PassTokenRejected(LoginError):
    def __init__(self, user_id: str) -> None:
        super().__init__(
            f"Xiaomi account {user_id}: the passToken was not accepted (expired, from another account, or "
            "the device id changed). Copy a fresh passToken from a browser login, or log in with the password.")


class NoCredentials(LoginError):
    def __init__(self, user_id: str) -> None:
        super().__init__(
            f"Xiaomi account {user_id}: no stored tokens and neither a password nor a passToken configured. "
            "Run `python -m server.xiaomi login` once, or set password / pass_token in the xiaomi section.")


class AuthExpired(XiaomiError):
    """A service call was refused (HTTP 401, or MIoT 'auth err' / 'invalid signature')."""

    retry_after_s = 30.0


class SpeakerOffline(XiaomiError):
    """ubus code 101 with the ROM answering 3012: the speaker is off or unreachable."""

    retry_after_s = 30.0


class CloudUnavailable(XiaomiError):
    """Network error, timeout, or a 5xx from Xiaomi."""

    retry_after_s = 5.0


class BadResponse(XiaomiError):
    """The cloud answered something we cannot read (not JSON, an HTML page, a missing field)."""

    retry_after_s = 10.0


class CommandFailed(XiaomiError):
    """The cloud understood the request but the speaker refused it (non-zero code)."""

    retry_after_s = 5.0


class NotOurSpeaker(XiaomiError):
    """This process no longer holds the fleet lease of the speaker (another process polls it now,
    or this one was paused past its lease): nothing may be sent to the speaker any more."""

    retry_after_s = 0.0
