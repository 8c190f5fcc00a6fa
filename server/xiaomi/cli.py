"""`python -m server.xiaomi login | devices`: the first thing a XiaoAi owner runs.

login   asks for the password (or a passToken), logs in to MiNA and MIoT, stores the tokens under
        data/xiaomi/<id>/ and lists the account's speakers with what to put in config.yaml.
devices lists the speakers again with the stored tokens (no login unless they expired).

Only this command line ever asks a question; the server never blocks on input.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from pathlib import Path

from server.xiaomi.account import Endpoints, XiaomiAccount
from server.xiaomi.config import XiaomiConfig
from server.xiaomi.devices import Speaker, list_speakers
from server.xiaomi.errors import LoginError, VerificationRequired, XiaomiError
from server.xiaomi.http import new_http_session
from server.xiaomi.mina import MinaService
from server.xiaomi.miot import MiotService
from server.xiaomi.store import AccountStore


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m server.xiaomi",
                                description="Log in to a Xiaomi account and list its XiaoAi speakers "
                                            "(登录小米账号并列出小爱音箱).")
    p.add_argument("--config", help="override config file (default data/.config.yaml if present)")
    sub = p.add_subparsers(dest="command", required=True)
    login = sub.add_parser("login", help="log in and store the tokens (登录并保存令牌)")
    login.add_argument("--user-id", help="numeric Xiaomi ID (小米ID); default: the one in config.yaml")
    login.add_argument("--pass-token", action="store_true",
                       help="log in with a passToken copied from a browser instead of the password")
    login.add_argument("--stdin", action="store_true",
                       help="read the password (or passToken) from the first line of stdin, without a prompt")
    devices = sub.add_parser("devices", help="list the speakers of the logged-in accounts (列出音箱)")
    devices.add_argument("--user-id", help="only this account")
    return p


def _settings(config_file: str | None) -> tuple[XiaomiConfig, Path]:
    from server.config.loader import ROOT_DIR, load_config

    # The same root and files as `python -m server`, so both find the same data/xiaomi/ folder.
    root = Path(os.environ.get("XZ_ROOT", ROOT_DIR))
    config = load_config(override=config_file, base=root / "config.yaml", cwd=root)
    return config.xiaomi, root / config.data_dir


def _endpoints(cfg: XiaomiConfig) -> Endpoints:
    e = cfg.endpoints
    return Endpoints(account=e.account, mina=e.mina, userprofile=e.userprofile, miot=e.miot)


def print_speakers(speakers: list[Speaker], out: object = None) -> None:
    def say(line: str = "") -> None:
        print(line, file=out or sys.stdout)

    if not speakers:
        say("No speakers on this account (shared speakers are not listed by Xiaomi; log in with the owner's "
            "account). 该账号下没有音箱（共享的设备不会列出，请用设备主人的账号登录）。")
        return
    say(f"Speakers on this account / 账号下的音箱 ({len(speakers)}):")
    for i, s in enumerate(speakers, 1):
        m = s.mina
        alias = f" (alias/别名 {m.alias})" if m.alias and m.alias != m.name else ""
        say(f"  {i}. {m.name}{alias}")
        unknown = "" if s.known_model else " (not in our table, defaults used / 未知型号，使用默认设置)"
        say(f"     model/型号: {m.hardware} {s.profile.name}{unknown}")
        say(f"     MiNA deviceID: {m.device_id}")
        say(f"     MIoT did: {s.miot_did or '?'}    serial/序列号: {m.serial_number or '?'}"
            f"    {'online/在线' if m.presence in ('online', '') else 'offline/离线'}")
        if not s.profile.supported:
            say("     ! this model is known not to work through the cloud API / 该型号无法通过云端接口使用")
        elif not s.profile.mina_tts:
            say("     note: its MiNA TTS is silent; the bridge speaks with the MIoT action "
                f"{s.profile.tts_action[0]}-{s.profile.tts_action[1]} (自动使用 MIoT 播报)")
        say(f"     config.yaml:  - match: {m.name}    (memory identity / 记忆身份: xiaomi-{m.device_id})")
    say()
    say("Put `match:` under xiaomi.accounts[].speakers in your config (name, alias, deviceID or did). "
        "在配置文件 xiaomi.accounts[].speakers 中填写 match。")


def _ask_login(args: argparse.Namespace, cfg: XiaomiConfig) -> tuple[str, str] | int:
    """User id and password/passToken, from flags, config, stdin or a prompt (before any event
    loop runs: asking blocks)."""
    configured = {a.user_id: a for a in cfg.accounts}
    user_id = args.user_id or (next(iter(configured)) if len(configured) == 1 else "")
    if not user_id:
        if not sys.stdin.isatty() or args.stdin:
            print("Give --user-id (the numeric Xiaomi ID). 请用 --user-id 指定小米ID。", file=sys.stderr)
            return 2
        user_id = input("Xiaomi ID (numeric 小米ID, see the account page of the Mi Home app): ").strip()
    if not user_id.isdigit():
        print(f"{user_id!r} is not a numeric Xiaomi ID (小米ID是一串数字，不是手机号或邮箱).", file=sys.stderr)
        return 2
    secret_name = "passToken" if args.pass_token else "password / 密码"
    if args.stdin:
        secret = sys.stdin.readline().rstrip("\n")
    else:
        acct = configured.get(user_id)
        secret = (acct.pass_token if args.pass_token else acct.password) if acct else ""
        if not secret:
            if not sys.stdin.isatty():
                print("No terminal to ask for the secret: use --stdin. 无法提示输入，请使用 --stdin。", file=sys.stderr)
                return 2
            secret = getpass.getpass(f"{secret_name} for {user_id}: ")
    if not secret:
        print(f"No {secret_name} given. 未输入{secret_name}。", file=sys.stderr)
        return 2
    return user_id, secret


async def _login(args: argparse.Namespace, cfg: XiaomiConfig, data_dir: Path, user_id: str, secret: str) -> int:
    store = AccountStore(data_dir, user_id)
    async with new_http_session() as http:
        account = XiaomiAccount(http, store, _endpoints(cfg),
                                password="" if args.pass_token else secret,
                                pass_token=secret if args.pass_token else "")
        try:
            await account.login()
        except VerificationRequired as exc:
            print(f"✘ {exc}", file=sys.stderr)
            print(f"  Login device id (kept, never changes) / 登录设备ID: {account.device_id}", file=sys.stderr)
            return 3
        except XiaomiError as exc:
            print(f"✘ {exc}", file=sys.stderr)
            return 3 if isinstance(exc, LoginError) else 4
        print(f"✔ Logged in as {user_id} / 登录成功. Tokens saved to {store.tokens_file} (mode 0600); "
              "the server reuses them. 令牌已保存，服务器重启后无需再次登录。")
        try:
            speakers = await list_speakers(MinaService(account), MiotService(account))
        except XiaomiError as exc:
            print(f"✘ Logged in, but listing the speakers failed: {exc}", file=sys.stderr)
            return 4
    print_speakers(speakers)
    return 0


async def _devices(args: argparse.Namespace, cfg: XiaomiConfig, data_dir: Path) -> int:
    folder = data_dir / "xiaomi"
    ids = [args.user_id] if args.user_id else sorted(
        {a.user_id for a in cfg.accounts} | {p.parent.name for p in folder.glob("*/tokens.json")})
    if not ids:
        print("No Xiaomi account yet: run `python -m server.xiaomi login`. 还没有登录：请先运行 login。",
              file=sys.stderr)
        return 2
    configured = {a.user_id: a for a in cfg.accounts}
    status = 0
    async with new_http_session() as http:
        for user_id in ids:
            acct = configured.get(user_id)
            account = XiaomiAccount(http, AccountStore(data_dir, user_id), _endpoints(cfg),
                                    password=acct.password if acct else "", pass_token=acct.pass_token if acct else "")
            print(f"Account / 账号 {user_id}:")
            try:
                speakers = await list_speakers(MinaService(account), MiotService(account))
            except XiaomiError as exc:
                print(f"✘ {exc}", file=sys.stderr)
                status = 3
                continue
            print_speakers(speakers)
    return status


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg, data_dir = _settings(args.config)
    except Exception as exc:  # noqa: BLE001 - ConfigError and friends: one line, no traceback
        print(f"config: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "login":
            asked = _ask_login(args, cfg)
            if isinstance(asked, int):
                return asked
            return asyncio.run(_login(args, cfg, data_dir, *asked))
        return asyncio.run(_devices(args, cfg, data_dir))
    except KeyboardInterrupt:
        return 130
