"""Start and stop the real engines a fleet runs on, on loopback, for tests and benchmarks.

PostgreSQL refuses to run as root, so when we are root (CI) the cluster belongs to the
`postgres` system user the Debian package creates and runs under its uid. Every engine is a
direct child (never daemonized), so it is ended by its own pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class EngineMissing(RuntimeError):
    """A binary the fleet tests need is not installed (scripts/install.sh installs it)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, proc: subprocess.Popen[Any] | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGCONT)  # a stopped process cannot handle SIGTERM
        os.kill(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def postgres_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    which = shutil.which("initdb")
    if which:
        return Path(which).parent
    raise EngineMissing("PostgreSQL server binaries (initdb, postgres) not found: install the Debian "
                        "package 'postgresql' (scripts/install.sh does)")


def binary(name: str, package: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if not path:
        raise EngineMissing(f"{name} not found: install the Debian package '{package}' (scripts/install.sh does)")
    return path


@dataclass
class Postgres:
    port: int
    datadir: Path
    proc: subprocess.Popen[Any]
    user: str = "postgres"
    _dbs: int = 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    async def new_database(self, prefix: str = "xz") -> str:
        """A fresh empty database (tests stay independent on one cluster); returns its URL."""
        import asyncpg

        self._dbs += 1
        name = f"{prefix}_{os.getpid()}_{self._dbs}"
        conn = await asyncpg.connect(self.url())
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url(name)


@contextlib.contextmanager
def postgres_cluster(startup_timeout: float = 60) -> Iterator[Postgres]:
    bindir = postgres_bindir()
    run_as: dict[str, Any] = {}
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")  # created by the Debian package
        run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    tmp = Path(tempfile.mkdtemp(prefix="xz-pg-"))
    try:
        if run_as:
            os.chown(tmp, run_as["user"], run_as["group"])
        datadir = tmp / "data"
        subprocess.run([str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--no-sync", "--no-instructions"], check=True, capture_output=True,
                       cwd=tmp, **run_as)
        port = free_port()
        log = open(tmp / "postgres.log", "wb")  # noqa: SIM115 - closed below
        # Durability off: a test cluster is thrown away; it makes the suite faster, not different.
        proc = subprocess.Popen(
            [str(bindir / "postgres"), "-D", str(datadir), "-p", str(port), "-k", str(tmp),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "max_connections=200", "-c", "shared_buffers=32MB"],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True, **run_as)
        try:
            wait_port(port, startup_timeout, proc, "postgres")
            _wait_accepting(bindir, port, startup_timeout)
            yield Postgres(port, datadir, proc)
        finally:
            stop_process(proc, signal.SIGINT)  # SIGINT: PostgreSQL's fast shutdown
            log.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_accepting(bindir: Path, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run([str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"]).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError("postgres did not accept connections in time")


@dataclass
class Redis:
    port: int
    proc: subprocess.Popen[Any]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@contextlib.contextmanager
def redis_server() -> Iterator[Redis]:
    exe = binary("redis-server", "redis-server")
    tmp = Path(tempfile.mkdtemp(prefix="xz-redis-"))
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp), "--daemonize", "no", "--protected-mode", "yes"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_port(port, 20, proc, "redis-server")
        yield Redis(port, proc)
    finally:
        stop_process(proc)
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class Backend:
    name: str
    ws_port: int
    http_port: int


@dataclass
class HAProxy:
    ws_port: int
    http_port: int
    stats_socket: Path
    proc: subprocess.Popen[Any]
    config: str
    log_lines: list[str] = field(default_factory=list)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/xiaozhi/v1/"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    async def command(self, line: str) -> str:
        """One command on the runtime API (stats socket), e.g. 'set server ws/a state maint'."""
        reader, writer = await asyncio.open_unix_connection(str(self.stats_socket))
        writer.write(line.encode() + b"\n")
        await writer.drain()
        data = await reader.read()
        writer.close()
        return data.decode()


def haproxy_config(backends: list[Backend], ws_port: int, http_port: int, stats_socket: Path) -> str:
    """The configuration docs/deployment.md describes, on loopback: WebSocket upgrades hashed on
    the device id (header, or the ?device-id= query of browser clients), OTA round-robin, the
    process's own /metrics never exposed."""
    ws_servers = "\n".join(
        f"    server {b.name} 127.0.0.1:{b.ws_port} check port {b.http_port} inter 500ms fall 2 rise 1"
        for b in backends)
    http_servers = "\n".join(
        f"    server {b.name} 127.0.0.1:{b.http_port} check inter 500ms fall 2 rise 1" for b in backends)
    return f"""global
    # HAProxy raises its descriptor limit to about 2 x maxconn at start: keep it under a
    # default ulimit (the bench's idle runs stay far below this many devices).
    maxconn 8000
    stats socket {stats_socket} mode 600 level admin

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    # Idle devices keep their WebSocket for minutes (the server says goodbye after 120 s of
    # silence): the tunnel timeout must be longer than that.
    timeout tunnel 10m
    timeout http-request 10s
    option redispatch
    option forwardfor
    retries 2

frontend devices_ws
    bind 127.0.0.1:{ws_port}
    http-response set-header X-Served-By %s
    default_backend ws

backend ws
    # The firmware sends Device-Id on every connect; browser test pages pass ?device-id=.
    acl has_header req.hdr(Device-Id) -m found
    acl has_query url_param(device-id) -m found
    http-request set-header Device-Id %[url_param(device-id)] if !has_header has_query
    http-request set-header Device-Id %[req.hdr(Device-Id),lower]
    balance hdr(Device-Id)
    hash-type consistent
{ws_servers}

frontend devices_http
    bind 127.0.0.1:{http_port}
    http-request deny deny_status 403 if {{ path_beg /metrics }}
    http-response set-header X-Served-By %s
    default_backend http

backend http
    balance roundrobin
    option httpchk GET /health
{http_servers}
"""


@contextlib.contextmanager
def haproxy(backends: list[Backend], ws_port: int | None = None, http_port: int | None = None) -> Iterator[HAProxy]:
    exe = binary("haproxy", "haproxy")
    tmp = Path(tempfile.mkdtemp(prefix="xz-haproxy-"))
    ws_port = ws_port or free_port()
    http_port = http_port or free_port()
    sock = tmp / "stats.sock"
    text = haproxy_config(backends, ws_port, http_port, sock)
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(text)
    check = subprocess.run([exe, "-c", "-q", "-f", str(cfg)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"haproxy rejected its configuration: {check.stderr or check.stdout}")
    log = open(tmp / "haproxy.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([exe, "-db", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        try:
            wait_port(ws_port, 20, proc, "haproxy")
            wait_port(http_port, 20, proc, "haproxy")
        except RuntimeError as exc:
            log.flush()
            raise RuntimeError(f"{exc}: {(tmp / 'haproxy.log').read_text(errors='replace')[-1500:]}") from None
        yield HAProxy(ws_port, http_port, sock, proc, text)
    finally:
        stop_process(proc)  # SIGTERM: stop now (a soft stop would wait for every tunnel to end)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.asynccontextmanager
async def in_thread(cm: Any) -> AsyncIterator[Any]:
    """Enter a blocking context manager (engine start-up waits) without blocking the loop."""
    value = await asyncio.to_thread(cm.__enter__)
    try:
        yield value
    finally:
        await asyncio.to_thread(cm.__exit__, None, None, None)
