"""`python -m server devices pair CODE | list | revoke ID`: the owner's side of pairing.

It opens the same registry file as the running server (SQLite in WAL mode), so it works while
the server runs: a paired device's next activation poll gets 200, a revoked device's tokens are
refused from its next connection, and its open session ends within a few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import sys
import time
from pathlib import Path
from typing import Any

from server.pairing.config import PairingConfig
from server.pairing.registry import Unproven
from server.pairing.service import Pairing, normalize_key
from server.pairing.sqlite_registry import SqliteDeviceRegistry
from server.transport.device_id import normalize_device_id


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("devices", help="pair, list and revoke devices (server.auth pairing)")
    actions = p.add_subparsers(dest="action", required=True)
    pair = actions.add_parser("pair", help="confirm the 6-digit code a device shows")
    pair.add_argument("code")
    pair.add_argument("--owner", default="", help="who paired it (default: your login name)")
    actions.add_parser("list", help="paired and revoked devices, and codes waiting for you")
    revoke = actions.add_parser("revoke", help="unpair a device: its tokens stop working at once")
    revoke.add_argument("device_id")
    key = actions.add_parser("key", help="register a device's activation HMAC key (Activation-Version 2): "
                                         "its code is then accepted only from a board that holds the key")
    key.add_argument("device_id")
    key.add_argument("key_hex", help="the eFuse HMAC key (firmware) or efuse.json's hmac_key (py-xiaozhi), "
                                     "hex; 'none' removes it")
    release = actions.add_parser("release", help="forget which client owns a device id's memory (auth off): "
                                                 "the next client to connect with that id takes it over")
    release.add_argument("device_id")


async def run(args: argparse.Namespace, data_dir: Path, config: PairingConfig, state: Any = None) -> int:
    backend = None
    if state is not None and state.shared:
        # A fleet: the registry every server process uses is in the shared PostgreSQL.
        from server.state import open_state
        from server.state.pg_registry import PgDeviceRegistry

        backend = await open_state(state, None)
        registry: Any = PgDeviceRegistry(backend.extras["pg_pool"])
    else:
        registry = SqliteDeviceRegistry(data_dir / config.db)
    await registry.open()
    pairing = Pairing(registry, config)
    try:
        if args.action in ("key", "release", "revoke"):
            device_id = normalize_device_id(args.device_id)
            if device_id is None:
                print(f"{args.device_id!r} is not a device id (a MAC address or UUID)", file=sys.stderr)
                return 1
            args.device_id = device_id
        if args.action == "key":
            key_hex = None if args.key_hex.strip().lower() == "none" else normalize_key(args.key_hex)
            if key_hex is None and args.key_hex.strip().lower() != "none":
                print("the key must be hex, 16 to 64 bytes (32 to 128 hex digits)", file=sys.stderr)
                return 1
            await registry.set_key(args.device_id, key_hex, time.time())
            print(f"{args.device_id}: " + ("key removed; its code is accepted without an HMAC" if key_hex is None
                                          else "key registered; its code is accepted only with a matching HMAC"))
            return 0
        if args.action == "release":
            released = await registry.release_memory(args.device_id)
            print(f"{args.device_id}: " + ("released; the next client to connect with this id owns its memory"
                                          if released else "no client owned its memory yet"))
            return 0
        if args.action == "pair":
            owner = args.owner or getpass.getuser()
            try:
                record = await pairing.confirm(args.code, owner=owner)
            except Unproven as exc:
                print(f"not paired: {exc.device_id} has a registered HMAC key and the board asking with this code "
                      "did not prove it holds it (another board claiming its id, or the wrong key registered)",
                      file=sys.stderr)
                return 1
            if record is None:
                print(f"no device is waiting with code {args.code!r} (wrong, or expired: the device shows a new "
                      "code after a restart)", file=sys.stderr)
                return 1
            print(f"paired {record.device_id} (board {record.board or '?'}, firmware {record.firmware or '?'}, "
                  f"client {record.client_id or '-'}); it finishes activation within a few seconds")
            return 0
        if args.action == "revoke":
            record = await registry.revoke(args.device_id)
            if record is None:
                print(f"no device {args.device_id!r} in the registry (see: devices list)", file=sys.stderr)
                return 1
            print(f"revoked {record.device_id}: its tokens no longer work; it must be paired again")
            return 0
        devices = await registry.list_devices()
        pending = await registry.list_pending(time.time())
        if not devices and not pending:
            print("no devices yet: with server.auth.enabled a new device shows a 6-digit code; confirm it with "
                  "`python -m server devices pair CODE`")
            return 0
        if devices:
            print(f"{'device id':<20} {'status':<8} {'board':<22} {'firmware':<10} {'paired':<17} "
                  f"{'last seen':<17} owner")
            for d in devices:
                print(f"{d.device_id:<20} {'paired' if d.paired else 'revoked':<8} {d.board[:22]:<22} "
                      f"{d.firmware[:10]:<10} {_when(d.paired_at):<17} {_when(d.last_seen):<17} {d.owner}")
        if pending:
            print("\nwaiting for pairing:")
            for p in pending:
                left = max(0, int(p.expires - time.time()))
                print(f"  {p.device_id:<20} board {p.board or '?'} from {p.address}, code expires in {left} s "
                      "(the code is shown on the device)")
        return 0
    finally:
        await registry.close()
        if backend is not None:
            await backend.close()


def main(args: argparse.Namespace, data_dir: Path, config: PairingConfig, state: Any = None) -> int:
    return asyncio.run(run(args, data_dir, config, state))
