"""`performance_tester.py --abuse`: the server under attack while good devices talk.

Phases, on one server the tester starts (auth on, pairing on, default limits):
  1. clean: G good devices (allow-listed ids, at 127.0.0.1) each ask K spoken questions;
  2. abuse: A abusive clients (from 127.1.x.y: other "hosts" on the loopback network) hammer
     every way in for S seconds, and meanwhile the good devices ask the same questions again;
  3. settle: the abusers are gone; the server must be back to no sessions.
Reported: the good devices' latency (end of speech -> first reply audio) clean vs under abuse,
their failures, what the abusers got (status codes / outcomes), and the server's RSS before,
after the clean phase, right after the abuse and after settling (nothing may grow unbounded).

Abuser kinds (round robin): forged/malformed tokens, OTA floods with made-up ids (and deep JSON
bodies), activation polls, /metrics without a token, half-open handshakes, and "compromised"
allow-listed devices that hold connections and flood typed text, iot descriptors, deep JSON,
junk binary frames and pings while not reading what the server sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.console import Console
from bench.stats import summarize
from bench.testset import E2E_QUESTIONS, speech
from harness.devsim import DeviceConnectError, DeviceIdentity, SimDevice

ROOT = Path(__file__).resolve().parents[1]
RSS_EVERY_S = 30.0  # RSS timeline sampling during the abuse
KINDS = ("token", "ota", "activate", "metrics", "half_open", "holder")
METRICS_TOKEN = "bench-abuse-metrics"


@dataclass
class AbuseOptions:
    abusers: int = 200
    seconds: float = 60.0
    good_devices: int = 4
    prompts: int = 2
    language: str = "en"
    turn_timeout_s: float = 60.0
    settle_s: float = 10.0  # after the abuse, before the last RSS sample


@dataclass
class GoodTurn:
    phase: str
    device: int
    ok: bool
    first_audio_ms: float | None = None
    total_ms: float | None = None
    error: str | None = None
    stt_ms: float | None = None


@dataclass
class AbuseResult:
    options: AbuseOptions
    good: list[GoodTurn] = field(default_factory=list)
    abuser_outcomes: dict[str, dict[str, int]] = field(default_factory=dict)
    rss_mb: dict[str, float] = field(default_factory=dict)
    # (seconds since the abuse started, RSS MB) every RSS_EVERY_S: growth over a long soak.
    rss_timeline: list[tuple[float, float]] = field(default_factory=list)
    good_rounds: int = 0  # rounds of questions the good devices asked during the abuse
    sessions_after_settle: int | None = None
    load_average: dict[str, list[float]] = field(default_factory=dict)
    counters: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for phase in ("clean", "abuse"):
            turns = [t for t in self.good if t.phase == phase]
            out[phase] = {
                "turns": len(turns), "failed": sum(not t.ok for t in turns),
                "first_audio_ms": summarize([t.first_audio_ms for t in turns if t.first_audio_ms is not None]),
                "stt_ms": summarize([t.stt_ms for t in turns if t.stt_ms is not None]),
            }
        return out

    def to_json(self) -> dict[str, Any]:
        return {"options": asdict(self.options), "summary": self.summary(),
                "good_turns": [asdict(t) for t in self.good],
                "abuser_outcomes": self.abuser_outcomes, "rss_mb": self.rss_mb,
                "rss_timeline": self.rss_timeline, "good_rounds": self.good_rounds,
                "sessions_after_settle": self.sessions_after_settle, "counters": self.counters,
                "load_average": self.load_average,
                "errors": self.errors}


def abuse_overrides(good: list[DeviceIdentity], holders: list[str]) -> dict[str, Any]:
    return {"server": {"auth": {"enabled": True, "allowed_devices": [g.mac for g in good] + holders},
                       "metrics_token": METRICS_TOKEN}}


def abuser_address(i: int) -> str:
    return f"127.1.{i // 200}.{i % 200 + 1}"


def rss_mb(pid: int) -> float:
    import psutil

    return round(psutil.Process(pid).memory_info().rss / 2**20, 1)


# ------------------------------------------------------------------------------ good devices


async def good_device_run(phase: str, index: int, ident: DeviceIdentity, ws_url: str,
                          questions: list[tuple[str, bytes]], opts: AbuseOptions, out: list[GoodTurn]) -> None:
    dev = SimDevice(identity=ident)
    try:
        await dev.connect(url=ws_url, token="")
        for _text, pcm in questions:
            try:
                result = await asyncio.wait_for(dev.ask_audio(pcm, mode="auto"), opts.turn_timeout_s)
            except Exception as exc:  # noqa: BLE001 - recorded as a failed turn
                out.append(GoodTurn(phase, index, False, error=f"{type(exc).__name__}: {exc}"[:200]))
                continue
            t = result.timings()
            out.append(GoodTurn(phase, index, bool(result.completed), t.get("first_audio_ms"), t.get("total_ms"),
                                None if result.completed else (result.error or "no tts stop"), t.get("stt_ms")))
    except DeviceConnectError as exc:
        out.append(GoodTurn(phase, index, False, error=f"connect: {exc}"))
    finally:
        await dev.close()


async def good_phase(phase: str, good: list[DeviceIdentity], ws_url: str, questions: list[tuple[str, bytes]],
                     opts: AbuseOptions, out: list[GoodTurn]) -> None:
    async def one(i: int, ident: DeviceIdentity) -> None:
        await asyncio.sleep(i * 0.2)
        await good_device_run(phase, i, ident, ws_url, questions, opts, out)

    await asyncio.gather(*(one(i, g) for i, g in enumerate(good)))


# ------------------------------------------------------------------------------ abusers


class Abusers:
    def __init__(self, ws_url: str, http_url: str, ws_port: int, holders: list[str], deadline: float) -> None:
        self.ws_url, self.http_url, self.ws_port = ws_url, http_url, ws_port
        self.holders = holders
        self.deadline = deadline
        self.outcomes: dict[str, Counter[str]] = {k: Counter() for k in KINDS}

    def alive(self) -> bool:
        return time.monotonic() < self.deadline

    def note(self, kind: str, outcome: str) -> None:
        self.outcomes[kind][outcome] += 1

    async def run(self, i: int) -> None:
        kind = KINDS[i % len(KINDS)]
        address = abuser_address(i)
        await asyncio.sleep(random.random())
        while self.alive():
            try:
                await getattr(self, f"_{kind}")(i, address)
            except (OSError, aiohttp.ClientError, TimeoutError, asyncio.IncompleteReadError) as exc:
                self.note(kind, type(exc).__name__)
                await asyncio.sleep(0.2)

    async def _http(self, address: str, method: str, path: str, **kw: Any) -> int:
        connector = aiohttp.TCPConnector(local_addr=(address, 0))
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http, \
                http.request(method, self.http_url + path, **kw) as resp:
            await resp.read()
            return resp.status

    async def _token(self, i: int, address: str) -> None:
        forged = random.choice(["v1.².x", "v2.0.9999999999." + "A" * 43, "Bearer é", "v2.1.1." + "x" * 43])
        dev = SimDevice(identity=DeviceIdentity(), local_address=address)
        try:
            await dev.connect(url=self.ws_url, token=forged)
            self.note("token", "ACCEPTED")  # must never happen
        except DeviceConnectError as exc:
            self.note("token", str(exc.status))
        finally:
            await dev.close()

    async def _ota(self, i: int, address: str) -> None:
        mac = "02:" + ":".join(f"{random.randrange(256):02x}" for _ in range(5))
        body = ("[" * 50_000 + "]" * 50_000) if random.random() < 0.3 else json.dumps({"mac_address": mac})
        status = await self._http(address, "POST", "/xiaozhi/ota/", data=body,
                                  headers={"Device-Id": mac, "Client-Id": "c", "Content-Type": "application/json"})
        self.note("ota", str(status))

    async def _activate(self, i: int, address: str) -> None:
        status = await self._http(address, "POST", "/xiaozhi/ota/activate", data="{}",
                                  headers={"Device-Id": "02:00:00:00:00:01", "Content-Type": "application/json"})
        self.note("activate", str(status))

    async def _metrics(self, i: int, address: str) -> None:
        self.note("metrics", str(await self._http(address, "GET", "/metrics")))

    async def _half_open(self, i: int, address: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.ws_port, local_addr=(address, 0))
        try:
            writer.write(b"GET /xiaozhi/v1/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")  # never finished
            await writer.drain()
            try:
                data = await asyncio.wait_for(reader.read(100), timeout=max(0.1, self.deadline - time.monotonic()))
                self.note("half_open", "closed by server" if not data else data[:12].decode("latin-1"))
            except TimeoutError:
                self.note("half_open", "held until the end")
        finally:
            writer.close()

    async def _holder(self, i: int, address: str) -> None:
        mac = self.holders[i % len(self.holders)]
        dev = SimDevice(identity=DeviceIdentity(mac=mac), local_address=address)
        try:
            await dev.connect(url=self.ws_url, token="")
        except DeviceConnectError as exc:
            self.note("holder", f"refused {exc.status}")
            await dev.close()
            await asyncio.sleep(1.0)
            return
        self.note("holder", "connected")
        ws = dev._ws  # noqa: SLF001 - the abuser misbehaves below the simulated firmware
        assert ws is not None
        ws.transport.pause_reading()  # a client that stops reading what we send
        descriptor = {"type": "iot", "update": True, "descriptors": [
            {"name": f"Thing{n}", "description": "x" * 200, "properties": {}, "methods": {
                "Do": {"description": "y" * 200, "parameters": {}}}} for n in range(20)]}
        try:
            while self.alive() and not dev.closed:
                choice = random.random()
                if choice < 0.3:
                    await ws.send(json.dumps({"type": "listen", "state": "detect", "text": "tell me " * 500}))
                elif choice < 0.5:
                    await ws.send(json.dumps(descriptor))
                elif choice < 0.6:
                    await ws.send("[" * 50_000)
                elif choice < 0.8:
                    await ws.send(bytes(random.randrange(256) for _ in range(200)))
                else:
                    await ws.send(json.dumps({"type": "ping"}))
                self.note("holder", "messages sent")
                await asyncio.sleep(0.05)
        except Exception as exc:  # noqa: BLE001 - the server closed us: that is an outcome
            self.note("holder", f"closed: {type(exc).__name__}")
        finally:
            with contextlib.suppress(Exception):
                ws.transport.abort()
            await dev.close(abrupt=True)


# ------------------------------------------------------------------------------ the run


async def run_abuse(ws_url: str, http_url: str, ws_port: int, pid: int, good: list[DeviceIdentity],
                    holders: list[str], opts: AbuseOptions, console: Console) -> AbuseResult:
    result = AbuseResult(opts)
    texts = list(E2E_QUESTIONS.get(opts.language, E2E_QUESTIONS["en"]))[:opts.prompts]
    questions = [(q, await speech(q, opts.language)) for q in texts]
    result.rss_mb["ready"] = rss_mb(pid)
    result.load_average["start"] = list(os.getloadavg())
    console.log(f"clean phase: {len(good)} devices x {len(questions)} questions")
    await good_phase("clean", good, ws_url, questions, opts, result.good)
    result.rss_mb["after_clean"] = rss_mb(pid)
    result.load_average["after_clean"] = list(os.getloadavg())
    console.log(f"abuse phase: {opts.abusers} abusive clients for {opts.seconds:.0f} s, good devices talking")
    deadline = time.monotonic() + opts.seconds
    # The abusers run in their own process: in ours they would slow down the good devices'
    # own sending and receiving, and we would measure the tester instead of the server.
    attack = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.abuse", ws_url, http_url, str(ws_port), str(opts.abusers), str(opts.seconds),
        ",".join(holders), cwd=str(ROOT), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    peak = 0.0
    started = time.monotonic()

    async def good_rounds() -> None:
        # The good devices keep talking for the whole abuse, round after round (a long soak
        # measures them at its end too, not only in its first minute).
        while True:
            t0 = time.monotonic()
            await good_phase("abuse", good, ws_url, questions, opts, result.good)
            result.good_rounds += 1
            if time.monotonic() + (time.monotonic() - t0) > deadline:
                return  # no time for another whole round inside the abuse

    try:
        await asyncio.sleep(min(5.0, opts.seconds / 4))
        good_task = asyncio.create_task(good_rounds())
        next_sample = started
        while time.monotonic() < deadline or not good_task.done():
            now_rss = rss_mb(pid)
            peak = max(peak, now_rss)
            if time.monotonic() >= next_sample:
                result.rss_timeline.append((round(time.monotonic() - started), now_rss))
                next_sample += RSS_EVERY_S
            await asyncio.sleep(1.0)
            if time.monotonic() > deadline + opts.turn_timeout_s * 2:
                break
        await good_task
        out, err = await asyncio.wait_for(attack.communicate(), 60)
    finally:
        if attack.returncode is None:
            attack.kill()
            await attack.wait()
    result.rss_mb["peak_during_abuse"] = peak
    result.rss_mb["after_abuse"] = rss_mb(pid)
    result.load_average["after_abuse"] = list(os.getloadavg())
    try:
        result.abuser_outcomes = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        result.errors.append(f"the abuser process reported nothing: {err.decode()[-500:]}")
    await asyncio.sleep(opts.settle_s)
    result.rss_mb["after_settle"] = rss_mb(pid)
    async with aiohttp.ClientSession() as http:
        async with http.get(http_url + "/health") as resp:
            result.sessions_after_settle = (await resp.json()).get("sessions")
        async with http.get(http_url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}) as resp:
            if resp.status == 200:
                result.counters = (await resp.json()).get("counters", {})
    return result


def print_abuse(result: AbuseResult, console: Console) -> None:
    s = result.summary()
    console.print()
    console.print(f"ABUSE  {result.options.abusers} abusive clients for {result.options.seconds:.0f} s, "
                  f"{result.options.good_devices} good devices x {result.options.prompts} spoken questions per phase")
    console.print(f"{'phase':<8} {'turns':>5} {'failed':>6} {'first audio p50':>16} {'p95':>8} {'max':>8} "
                  f"{'stt p50':>8}")
    for phase in ("clean", "abuse"):
        fa = s[phase]["first_audio_ms"] or {}

        def ms(key: str, fa: dict[str, Any] = fa) -> str:
            v = fa.get(key)
            return f"{v:.0f}" if isinstance(v, int | float) else "-"

        stt = (s[phase]["stt_ms"] or {}).get("p50")
        console.print(f"{phase:<8} {s[phase]['turns']:>5} {s[phase]['failed']:>6} {ms('p50'):>16} {ms('p95'):>8} "
                      f"{ms('max'):>8} {f'{stt:.0f}' if stt is not None else '-':>8}")
    console.print("RSS MB: " + ", ".join(f"{k} {v}" for k, v in result.rss_mb.items()))
    if result.rss_timeline:
        console.print("RSS MB during the abuse: " + ", ".join(f"{t:.0f} s {v}" for t, v in result.rss_timeline)
                      + f" ({result.good_rounds} rounds of good questions)")
    console.print(f"sessions after settling: {result.sessions_after_settle}; load average "
                  + ", ".join(f"{k} {v[0]:.1f}" for k, v in result.load_average.items()))
    for kind, outcomes in result.abuser_outcomes.items():
        shown = ", ".join(f"{k}: {v}" for k, v in list(outcomes.items())[:6])
        console.print(f"  {kind:<10} {shown}")
    interesting = {k: v for k, v in result.counters.items() if any(
        w in k for w in ("rejected", "refused", "limited", "busy", "dropped", "bad_", "too_"))}
    if interesting:
        console.print("server counters: " + ", ".join(f"{k} {v}" for k, v in sorted(interesting.items())))
    for err in result.errors:
        console.print(f"error: {err}")


async def abuse_main(args: Any, overrides: dict[str, Any], console: Console, out_dir: Path) -> int:
    from harness.devsim.server_process import start_server
    from server.config.loader import deep_merge

    opts = AbuseOptions(abusers=args.abuse_clients, seconds=args.abuse_seconds, good_devices=args.devices_good,
                        prompts=args.prompts, turn_timeout_s=args.turn_timeout, settle_s=args.abuse_settle)
    good = [DeviceIdentity(mac=f"02:0a:00:00:00:{i + 1:02x}") for i in range(opts.good_devices)]
    holders = [f"02:0b:00:00:00:{i + 1:02x}" for i in range(50)]
    merged = deep_merge(overrides, abuse_overrides(good, holders))
    console.log("starting the server (loading models)...")
    async with start_server(merged, echo=args.server_log) as srv:
        opts.language = "en"
        result = await run_abuse(srv.ws_url, srv.http_url, srv.ws_port, srv.pid, good, holders, opts, console)
        if "Traceback" in srv.log_text():
            result.errors.append("the server logged a traceback during the run")
    print_abuse(result, console)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else out_dir / f"abuse-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
    console.print(f"\nJSON report: {out}")
    s = result.summary()
    failed = s["abuse"]["failed"] or s["clean"]["failed"] or result.errors or any(
        "ACCEPTED" in o for o in result.abuser_outcomes.get("token", {}))
    return 1 if failed else 0


async def _abusers_main(argv: list[str]) -> None:
    ws_url, http_url, ws_port, count, seconds, holders = argv
    abusers = Abusers(ws_url, http_url, int(ws_port), holders.split(","), time.monotonic() + float(seconds))
    tasks = [asyncio.create_task(abusers.run(i)) for i in range(int(count))]
    await asyncio.wait(tasks, timeout=float(seconds) + 20)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({k: dict(v.most_common()) for k, v in abusers.outcomes.items()}))


if __name__ == "__main__":
    asyncio.run(_abusers_main(sys.argv[1:]))
