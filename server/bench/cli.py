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

from server.bench.components import KINDS, ComponentOptions
from server.bench.console import Console

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT_DIR = ROOT / "data" / "bench"

EPILOG = """\
modes (combine freely; with none given: --components and --e2e, or only --e2e with --url):
  --components   each configured provider on its own, loaded in this process
  --e2e          simulated devices against the real server
  --ramp         add devices until p95 first-reply latency passes --threshold-ms
  --compare A B  ratios between two saved reports (nothing is measured)

examples:
  python performance_tester.py                          # components + 1 device x 3 questions
  python performance_tester.py --only asr,tts           # two components only
  python performance_tester.py --e2e --devices 4 --prompts 5
  python performance_tester.py --ramp --ramp-max 12 --threshold-ms 2500
  python performance_tester.py --url ws://127.0.0.1:8000/xiaozhi/v1/ --http-url http://127.0.0.1:8003
  python performance_tester.py --compare data/bench/old.json data/bench/new.json

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
    m.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"), help="print new/old ratios of two JSON reports")

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

    e = p.add_argument_group("end to end and ramp")
    e.add_argument("--devices", type=int, default=1, metavar="N", help="simulated devices talking at once (default 1)")
    e.add_argument("--prompts", type=int, default=3, metavar="K", help="spoken questions per device (default 3)")
    e.add_argument("--stagger-ms", type=int, default=200, metavar="MS",
                   help="delay between device starts, so they do not all finish speaking together (default 200)")
    e.add_argument("--no-abort", action="store_true", help="skip the abort trial each device runs after its questions")
    e.add_argument("--turn-timeout", type=float, default=60.0, metavar="S",
                   help="give up on a turn after this many seconds (default 60)")
    e.add_argument("--threshold-ms", type=float, default=2000.0, metavar="MS",
                   help="ramp: p95 first-reply latency that ends the ramp (default 2000)")
    e.add_argument("--ramp-start", type=int, default=1, metavar="N", help="ramp: first device count (default 1)")
    e.add_argument("--ramp-step", type=int, default=1, metavar="N", help="ramp: devices added per step (default 1)")
    e.add_argument("--ramp-max", type=int, default=16, metavar="N", help="ramp: last device count tried (default 16)")

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
    if (args.http_url or args.server_pid) and not args.url:
        parser.error("--http-url and --server-pid describe a running server: give its --url too")
    for name in ("devices", "prompts", "ramp_start", "ramp_step", "ramp_max"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.ramp and args.ramp_max < args.ramp_start:
        parser.error("--ramp-max must be at least --ramp-start")
    args.languages = tuple(x.strip() for x in args.languages.split(",") if x.strip())
    if not args.components and not args.e2e and not args.ramp:
        args.e2e = True
        args.components = not args.url
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compare:
        return compare_main(*args.compare)
    try:
        return asyncio.run(run_main(args, list(sys.argv if argv is None else ["performance_tester.py", *argv])))
    except KeyboardInterrupt:  # a second Ctrl-C while the report was being written
        print("interrupted", file=sys.stderr)
        return 130


def compare_main(old_path: str, new_path: str) -> int:
    from server.bench.compare import CompareError, compare, load_report, render

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
    from server.bench.machine import load_average, machine_info
    from server.bench.report import BenchRun, print_report, redact
    from server.config.loader import ConfigError, load_config, read_yaml

    console = Console(quiet=args.quiet)
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

    if args.url:
        # Before anything else: an unreachable target is one line and exit 2, not a report.
        from server.bench.e2e import Target, probe

        problem = await probe(Target(args.url, args.http_url))
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2

    modes = [m for m in ("components", "e2e", "ramp") if getattr(args, m)]
    source = str(override) if override else "config.yaml (no override file)"
    if args.url:
        source += "; read locally: the server at --url may run another config"
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

    run.finished_at = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    run.duration_s = round(time.monotonic() - started, 1)
    run.load_average_after = load_average()
    print_report(run, console)
    save(args, run, console)
    if run.interrupted:
        return 130
    return 1 if run.failed() else 0


def save(args: argparse.Namespace, run: Any, console: Console) -> None:
    from server.bench.chart import render_chart
    from server.bench.report import write_json

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
    from server.bench.components import run_components
    from server.bench.e2e import E2EOptions, E2EResult, run_e2e
    from server.bench.load import RampOptions, RampResult, run_ramp

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
    if not (args.e2e or args.ramp):
        return
    e2e_opts = E2EOptions(devices=args.devices, prompts=args.prompts, stagger_ms=args.stagger_ms,
                          abort_trial=not args.no_abort, turn_timeout_s=args.turn_timeout,
                          language=config.assistant.language)
    try:
        async with target(args, overrides, console) as tgt:
            if args.e2e:
                run.e2e = E2EResult(e2e_opts, tgt)
                await run_e2e(tgt, e2e_opts, console, run.e2e)
            if args.ramp:
                ramp_opts = RampOptions(start=args.ramp_start, step=args.ramp_step, max_devices=args.ramp_max,
                                        threshold_ms=args.threshold_ms)
                run.ramp = RampResult(ramp_opts)
                await run_ramp(tgt, ramp_opts, dataclasses.replace(e2e_opts, abort_trial=False), console, run.ramp)
    except RuntimeError as exc:  # start_server: the server exited or never became ready
        run.errors.append(f"server: {' '.join(str(exc).split())[:500]}")
        console.log(f"server failed: {str(exc).splitlines()[0]}")


@contextlib.asynccontextmanager
async def target(args: argparse.Namespace, overrides: dict[str, Any], console: Console) -> AsyncIterator[Any]:
    from server.bench.e2e import Target
    from server.bench.resources import find_listening_pid
    from server.devsim.server_process import start_server

    if args.url:
        pid = args.server_pid or await asyncio.to_thread(find_listening_pid, args.url)
        yield Target(args.url, args.http_url, pid, spawned=False)
        return
    console.log("starting the server (loading models)...")
    t0 = time.monotonic()
    async with start_server(overrides, echo=args.server_log) as srv:
        console.log(f"server ready in {time.monotonic() - t0:.1f} s at {srv.ws_url} (pid {srv.pid})")
        yield Target(srv.ws_url, srv.http_url, srv.pid, spawned=True)
