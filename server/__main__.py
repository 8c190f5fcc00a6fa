"""python -m server [--config FILE] [--check] [--doctor]"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from server.config.loader import ROOT_DIR, ConfigError, load_config, with_ports
from server.logging_setup import setup_logging
from server.providers.base import ProviderUnavailable


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m server", description="xiaozhi voice server")
    p.add_argument("--config", help="override file merged over config.yaml (default: data/.config.yaml if present)")
    p.add_argument("--check", action="store_true", help="validate the configuration and exit")
    p.add_argument("--doctor", action="store_true",
                   help="check system pieces (libopus, MP3, espeak-ng, models, ports), say how to fix what is missing")
    p.add_argument("--port", type=int, help="WebSocket port (overrides server.port)")
    p.add_argument("--http-port", type=int, help="HTTP/OTA port (overrides server.http_port)")
    return p.parse_args(argv)


async def _serve(config, root: Path) -> None:  # noqa: ANN001
    from server.app import running_server

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with running_server(config, root):
        await stop.wait()
        logging.getLogger("server").info("shutting down")


def devices_main(argv: list[str]) -> int:
    """`python -m server devices ...` (works while the server runs)."""
    from server.pairing import cli

    p = argparse.ArgumentParser(prog="python -m server")
    p.add_argument("--config", help="override file merged over config.yaml")
    cli.add_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    root = Path(os.environ.get("XZ_ROOT", ROOT_DIR))
    try:
        config = load_config(override=args.config, base=root / "config.yaml", cwd=root)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if not config.server.auth.enabled and args.action != "release":
        print("note: server.auth.enabled is false, so pairing is not enforced", file=sys.stderr)
    return cli.main(args, root / config.data_dir, config.server.auth.pairing, config.state)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "devices" in argv[:3]:
        return devices_main(argv)
    args = parse_args(argv)
    root = Path(os.environ.get("XZ_ROOT", ROOT_DIR))
    ports = {key: value for key, value in (("port", args.port), ("http_port", args.http_port)) if value is not None}
    try:
        config = with_ports(load_config(override=args.config, base=root / "config.yaml", cwd=root), ports)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print("config OK")
        return 0
    if args.doctor:
        from server.doctor import report, run_checks

        text, code = report(run_checks(config, root))
        print(text)
        return code
    setup_logging(config.log.level, root / config.data_dir / config.log.file if config.log.file else None)
    try:
        asyncio.run(_serve(config, root))
    except ProviderUnavailable as exc:
        print(f"startup error: {exc}", file=sys.stderr)
        return 3
    except OSError as exc:
        print(f"startup error: {exc.strerror or exc} (is another server already using the port?)", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
