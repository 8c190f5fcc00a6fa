"""Start the real server as a child process on free loopback ports (tests and benchmarks).

The server prints "ready in ... WebSocket ws://HOST:PORT..., OTA http://HOST:PORT/..." once its
models are loaded; we wait for that line, so callers never race the model loading.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(r"ready in .*ws://[^:]+:(\d+)(\S*), OTA http://[^:]+:(\d+)/")


@dataclass
class ServerProcess:
    proc: asyncio.subprocess.Process
    ws_port: int
    http_port: int
    ws_path: str
    data_dir: Path
    log_lines: list[str] = field(default_factory=list)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}{self.ws_path}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return "\n".join(self.log_lines)

    async def wait_for_log(self, text: str, timeout: float = 5.0) -> bool:
        """Whether `text` shows up in the log within `timeout`: the server writes its log from a
        thread of its own, and this process reads it asynchronously, so a line can trail the
        event it describes by a few milliseconds."""
        deadline = asyncio.get_running_loop().time() + timeout
        while text not in self.log_text():
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def rss_bytes(self) -> int:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss


async def _pump(stream: asyncio.StreamReader, lines: list[str], echo: bool) -> None:
    while True:
        raw = await stream.readline()
        if not raw:
            return
        line = raw.decode("utf-8", "replace").rstrip()
        lines.append(line)
        if len(lines) > 20000:
            del lines[:5000]
        if echo:
            print(f"[server] {line}", file=sys.stderr)


@contextlib.asynccontextmanager
async def start_server(overrides: dict[str, Any] | None = None, *, startup_timeout: float = 180,
                       echo: bool = False, python: str | None = None) -> AsyncIterator[ServerProcess]:
    """Run `python -m server` with config.yaml + `overrides` (merged like a user override file),
    listening on 127.0.0.1 with OS-chosen ports and a throwaway data dir."""
    with tempfile.TemporaryDirectory(prefix="xz-server-") as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        config: dict[str, Any] = {"server": {"host": "127.0.0.1"}, "data_dir": str(data_dir)}
        _merge(config, overrides or {})
        override_file = Path(tmp) / "override.yaml"
        override_file.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = await asyncio.create_subprocess_exec(
            python or sys.executable, "-m", "server", "--config", str(override_file), "--port", "0",
            "--http-port", "0", cwd=str(ROOT), env=env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        lines: list[str] = []
        assert proc.stdout is not None
        pump = asyncio.create_task(_pump(proc.stdout, lines, echo))
        try:
            server = await _wait_ready(proc, lines, data_dir, startup_timeout)
            yield server
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), timeout=15)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    await proc.wait()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pump, timeout=5)


async def _wait_ready(proc: asyncio.subprocess.Process, lines: list[str], data_dir: Path,
                      timeout: float) -> ServerProcess:
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        while seen < len(lines):
            m = READY.search(lines[seen])
            seen += 1
            if m:
                return ServerProcess(proc, int(m.group(1)), int(m.group(3)), m.group(2) or "/", data_dir, lines)
        if proc.returncode is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n" + "\n".join(lines[-30:]))
        await asyncio.sleep(0.05)
    raise RuntimeError("server did not become ready in time:\n" + "\n".join(lines[-30:]))


def _merge(base: dict[str, Any], override: dict[str, Any]) -> None:
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
