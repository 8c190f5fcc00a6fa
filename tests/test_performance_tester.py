"""performance_tester.py: every mode, run quickly on the embedded stack (1 device, 2 prompts, tiny
component sets, a ramp capped at 2 devices), checking that reports hold real measured values.

No assertion is about how fast anything is: the figures belong in docs/performance.md. We check
that values exist, are positive, and are ordered the way time flows (stt before the first reply
frame before tts stop).
"""

from __future__ import annotations

import asyncio
import copy
import json
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.chart import ChartUnavailable, render_chart
from bench.cli import build_parser, parse_args
from bench.compare import compare
from bench.components import ComponentOptions, run_components
from bench.console import Console
from bench.stats import percentile, summarize
from bench.testset import builtin_source, error_rate, speech, user_samples
from harness.devsim.server_process import ServerProcess
from server.audio.pcm import write_wav
from server.config.loader import load_config
from server.providers.base import AudioChunk, ProviderUnavailable

pytestmark = pytest.mark.e2e
P50_RGB = (0x34, 0x65, 0xA4)  # bench/chart.py P50

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "performance_tester.py"


async def run_tool(*args: str, timeout: float = 300) -> tuple[int, str, str]:
    # Async subprocess: the shared server's log pipe is read on this event loop, so blocking it
    # for the length of a run could stall the server.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(TOOL), *args, cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def check_png(path: Path) -> tuple[int, int]:
    """A PNG that Pillow (an independent decoder) reads, with the p50 bars' colour in it."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        pixels = set(image.convert("RGB").getdata())
        width, height = image.size
    assert width > 0 and height > 0
    assert P50_RGB in pixels, "no p50 bar or line drawn"
    return width, height


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and value > 0


@pytest.fixture(scope="module")
async def e2e_run(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "e2e.json"
    code, stdout, stderr = await run_tool(
        "--e2e", "--url", server.ws_url, "--http-url", server.http_url, "--devices", "1", "--prompts", "2",
        "--out", str(out))
    return {"code": code, "stdout": stdout, "stderr": stderr, "path": out,
            "report": json.loads(out.read_text(encoding="utf-8"))}


# ------------------------------------------------------------------------------ end to end


async def test_e2e_report_holds_real_ordered_values(e2e_run: dict[str, Any]) -> None:
    assert e2e_run["code"] == 0, e2e_run["stdout"] + e2e_run["stderr"]
    report = e2e_run["report"]
    assert report["schema"] == "xiaozhi-bench/1" and report["interrupted"] is False
    for key in ("cpu_model", "cores_logical", "ram_gb", "python", "os", "load_average"):
        assert report["machine"][key], key
    assert report["config"]["asr"]["type"] and report["config"]["llm"]["type"]

    e2e = report["e2e"]
    questions = [t for t in e2e["turns"] if t["kind"] == "question"]
    assert len(questions) == 2
    for turn in questions:
        assert turn["ok"], turn
        assert 0 < turn["stt_ms"] < turn["first_frame_ms"] < turn["tts_stop_ms"], turn
        assert turn["stt_text"] and turn["frames"] > 0 and positive(turn["reply_audio_ms"])
    aborts = [t for t in e2e["turns"] if t["kind"] == "abort"]
    assert len(aborts) == 1 and aborts[0]["ok"] and positive(aborts[0]["abort_to_stop_ms"])
    assert aborts[0]["frames_after_stop"] == 0

    s = e2e["summary"]
    assert s["turns_ok"] == 2 and s["turns_failed"] == 0
    for metric in ("stt_ms", "first_frame_ms", "tts_stop_ms"):
        assert all(positive(s[metric][k]) for k in ("p50", "p95", "max")), metric
    assert s["stt_ms"]["p50"] < s["first_frame_ms"]["p50"] < s["tts_stop_ms"]["p50"]
    assert e2e["per_device"]["0"]["turns_ok"] == 2

    # The server's own stage breakdown, for our two voice turns.
    stages = e2e["server_stages_ms"]
    assert stages["speech_end_to_first_frame"]["n"] == 2
    for stage in ("endpoint_wait", "asr", "llm_first_clause", "speech_end_to_first_frame", "total_to_stop"):
        assert positive(stages[stage]["p50"]), stage

    # CPU and memory of the server we pointed at (pid found from its port).
    r = e2e["resources"]
    assert r["samples"] >= 2 and positive(r["cpu_s"]) and positive(r["rss_peak_mb"])
    assert r["rss_peak_mb"] >= r["rss_baseline_mb"] and positive(r["cpu_percent_per_device"])

    # Counters are the server's change over this run: both questions were transcribed during the
    # endpoint wait (early ASR is on by default), and nothing is left of earlier tests' turns.
    counters = e2e["server_counters"]
    assert counters["early_asr_used"] == 2 and counters["early_asr_started"] >= 2, counters
    assert "Early ASR:" in e2e_run["stdout"]

    assert positive(report["summary"]["e2e.first_frame_ms.p50"])
    assert "END TO END" in e2e_run["stdout"] and "-> first reply frame" in e2e_run["stdout"]
    check_png(e2e_run["path"].with_suffix(".png"))


async def test_unreachable_url_is_one_line_and_nonzero(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    url = f"ws://127.0.0.1:{port}/xiaozhi/v1/"
    code, stdout, stderr = await run_tool("--url", url, "--out", str(tmp_path / "x.json"), timeout=60)
    assert code == 2
    lines = [line for line in (stdout + stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and url in lines[0], lines
    assert not (tmp_path / "x.json").exists()


async def test_ctrl_c_reports_what_was_measured(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "interrupted.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(TOOL), "--url", server.ws_url, "--http-url", server.http_url, "--prompts", "6",
        "--out", str(out), cwd=str(ROOT), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    seen: list[str] = []
    async with asyncio.timeout(120):
        while True:  # not a TTY: one line per finished turn
            line = (await proc.stdout.readline()).decode()
            assert line, "the tool ended before finishing a turn:\n" + "".join(seen)
            seen.append(line)
            if "turn 1 stt" in line:
                break
    proc.send_signal(signal.SIGINT)
    rest, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = "".join(seen) + rest.decode()
    assert proc.returncode == 130, text
    assert "INTERRUPTED" in text and "-> first reply frame" in text
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["interrupted"] is True
    done = [t for t in report["e2e"]["turns"] if t["ok"]]
    assert done and 0 < done[0]["stt_ms"] < done[0]["first_frame_ms"] < done[0]["tts_stop_ms"]
    assert report["e2e"]["summary"]["turns_failed"] == 0  # the cut-off turn is not a server failure


# ------------------------------------------------------------------------------ ramp and compare


async def test_ramp_capped_at_two_devices_on_its_own_server(tmp_path: Path) -> None:
    out = tmp_path / "ramp.json"
    # No --url: the tool starts the real server itself. The threshold is out of reach on purpose
    # (this test is about the mechanics, not about speed), so the ramp runs to --ramp-max.
    code, stdout, stderr = await run_tool("--ramp", "--ramp-max", "2", "--prompts", "1", "--threshold-ms", "1e9",
                                          "--out", str(out))
    assert code == 0, stdout + stderr
    ramp = json.loads(out.read_text(encoding="utf-8"))["ramp"]
    assert [s["devices"] for s in ramp["steps"]] == [1, 2]
    assert ramp["capacity_devices"] == 2 and ramp["capacity_is_lower_bound"] is True
    for step in ramp["steps"]:
        assert step["passed"] and step["turns_failed"] == 0 and step["turns"] == step["devices"]
        assert positive(step["p95_first_frame_ms"]) and positive(step["cpu_percent_mean"])
        for turn in step["e2e"]["turns"]:
            assert 0 < turn["stt_ms"] < turn["first_frame_ms"] < turn["tts_stop_ms"]
    assert "Capacity: at least 2" in stdout
    check_png(out.with_suffix(".png"))


async def test_compare_two_generated_reports(e2e_run: dict[str, Any], tmp_path: Path) -> None:
    old = e2e_run["report"]
    new = copy.deepcopy(old)
    new["summary"]["e2e.first_frame_ms.p50"] *= 2
    new_path = tmp_path / "new.json"
    new_path.write_text(json.dumps(new), encoding="utf-8")
    ratios = {r.metric: r for r in compare(old, new)}
    assert ratios["e2e.first_frame_ms.p50"].ratio == pytest.approx(2.0)
    assert ratios["e2e.first_frame_ms.p50"].verdict == "worse"
    assert ratios["e2e.stt_ms.p50"].verdict == "same"

    code, stdout, _ = await run_tool("--compare", str(e2e_run["path"]), str(new_path), timeout=60)
    assert code == 0
    line = next(x for x in stdout.splitlines() if x.startswith("e2e.first_frame_ms.p50"))
    assert "2.00x" in line and "worse" in line

    code, stdout, stderr = await run_tool("--compare", str(tmp_path / "missing.json"), str(new_path), timeout=60)
    assert code == 2 and len((stdout + stderr).strip().splitlines()) == 1


# ------------------------------------------------------------------------------ idle devices


async def test_idle_two_devices_rss_and_cpu_per_step(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "idle.json"
    code, stdout, stderr = await run_tool("--idle", "2", "--idle-settle", "2", "--url", server.ws_url,
                                          "--http-url", server.http_url, "--out", str(out))
    assert code == 0, stdout + stderr
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["modes"] == ["idle"] and report["e2e"] is None
    idle = report["idle"]
    assert idle["options"] == {"devices": 2, "settle_s": 2.0, "audio": "silence"}
    assert [s["devices"] for s in idle["steps"]] == [0, 1, 2]
    for step in idle["steps"]:
        assert step["connected"] == step["devices"], step  # nobody was hung up on
        assert positive(step["rss_mb"]) and step["rss_peak_mb"] >= step["rss_mb"], step
        assert step["samples"] >= 2 and positive(step["window_s"]) and step["cpu_percent"] >= 0, step
    assert positive(idle["steps"][2]["cpu_percent"])  # two microphones streaming: decode + VAD per frame
    assert all(isinstance(v, float) for v in idle["increments"].values()), idle["increments"]
    assert not idle["connect_errors"] and not idle["closed_by_server"]
    assert positive(report["summary"]["idle.2dev.rss_mb"])
    assert "IDLE DEVICES" in stdout and "each further device" in stdout


# ------------------------------------------------------------------------------ fake providers


def test_fake_and_idle_options() -> None:
    args = parse_args(["--fake-tools"])
    assert args.fake_llm and args.e2e and not args.components  # tools need the fake LLM; e2e by default
    args = parse_args(["--idle", "3"])
    assert args.idle == 3 and not args.e2e and not args.components
    for bad in (["--fake-edge", "--url", "ws://127.0.0.1:1/"], ["--idle", "0"],
                ["--fake-llm", "--fake-tokens-per-s", "0"], ["--fakes-process"], ["--server-cpus", "0-99"]):
        with pytest.raises(SystemExit) as exc:
            parse_args(bad)
        assert exc.value.code == 2, bad


def check_spans(e2e: dict[str, Any], turns: int) -> dict[str, Any]:
    """The server's spans from the LLM's first token: present for every answered turn, positive,
    and the three steps adding up to the whole."""
    spans = e2e["server_spans_ms"]
    for key in ("llm_first_token_to_first_clause", "first_clause_to_tts_first_chunk",
                "tts_first_chunk_to_first_frame_sent", "llm_first_token_to_first_frame_sent"):
        assert spans[key]["n"] == turns and positive(spans[key]["p50"]) and positive(spans[key]["p95"]), key
    assert spans["memory_ms"]["n"] == turns and positive(spans["memory_ms"]["p50"])
    for turn in e2e["server_turns"]:
        if turn["kind"] != "voice":
            continue
        t = turn["spans_ms"]
        parts = (t["llm_first_token_to_first_clause"] + t["first_clause_to_tts_first_chunk"]
                 + t["tts_first_chunk_to_first_frame_sent"])
        assert parts == pytest.approx(t["llm_first_token_to_first_frame_sent"], abs=0.05), t
    return spans


async def test_fake_llm_with_piper_reports_server_spans(tmp_path: Path) -> None:
    out = tmp_path / "fake-llm.json"
    # The tester starts its own server, its LLM pointed at the fake OpenAI server in the tester.
    code, stdout, stderr = await run_tool("--fake-llm", "--devices", "2", "--prompts", "1", "--no-abort",
                                          "--out", str(out))
    assert code == 0, stdout + stderr
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["modes"] == ["e2e"] and report["components"] == {}
    llm = report["config"]["llm"]
    assert llm["type"] == "openai" and llm["base_url"].startswith("http://127.0.0.1:")
    assert report["config"]["tts"]["type"] == "piper"
    e2e = report["e2e"]
    assert e2e["summary"]["turns_ok"] == 2
    spans = check_spans(e2e, 2)
    assert spans["tool_turns"] == 0 and spans["tool_ms"]["n"] == 0
    fake = report["fakes"]["llm"]
    assert (fake["ttft_ms"], fake["tokens_per_s"], fake["tools"]) == (300.0, 50.0, False)
    assert fake["chat_requests"] >= 2 and positive(fake["ttft_ms_measured"]["p50"])
    # The fake's writes set against the server's milestones of the same turns (one clock).
    assert len(fake["delivery_turns"]) == 2
    assert positive(fake["token_delivery_ms"]["p50"]) and positive(fake["clause_delivery_ms"]["p50"])
    assert positive(report["summary"]["server.llm_first_token_to_first_frame_sent_ms.p50"])
    assert "llm_first_token -> first_frame_sent" in stdout and "FAKE LLM" in stdout


async def test_fakes_in_their_own_process(tmp_path: Path) -> None:
    """--fakes-process: the same fakes and the same report, from a child process."""
    out = tmp_path / "fakes-process.json"
    code, stdout, stderr = await run_tool("--fakes-process", "--fake-llm", "--fake-asr", "--fake-tts", "--devices",
                                          "2", "--prompts", "1", "--no-abort", "--out", str(out))
    assert code == 0, stdout + stderr
    report = json.loads(out.read_text(encoding="utf-8"))
    for kind in ("llm", "asr", "tts"):
        assert report["config"][kind]["type"] == "openai", kind
    assert report["e2e"]["summary"]["turns_ok"] == 2
    fakes = report["fakes"]
    assert isinstance(fakes["process"], int) and fakes["process"] > 0
    fake = fakes["llm"]
    assert fake["chat_requests"] >= 2 and positive(fake["ttft_ms_measured"]["p50"])
    assert len(fake["delivery_turns"]) == 2  # the child's timestamps lined up with the server's turns
    assert "tester_loop_lag" in report["e2e"]["resources"]


async def test_fake_edge_and_tool_rounds(tmp_path: Path) -> None:
    out = tmp_path / "fake-tools.json"
    code, stdout, stderr = await run_tool("--fake-edge", "--fake-tools", "--fake-ttft-ms", "100", "--prompts", "2",
                                          "--no-abort", "--out", str(out))
    assert code == 0, stdout + stderr
    report = json.loads(out.read_text(encoding="utf-8"))
    tts = report["config"]["tts"]
    assert tts["type"] == "edge" and tts["endpoint"].startswith("ws://127.0.0.1:")
    e2e = report["e2e"]
    assert e2e["summary"]["turns_ok"] == 2
    spans = check_spans(e2e, 2)
    # Every question called the device's volume tool once, then got its answer.
    assert spans["tool_turns"] == 2 and spans["tool_calls"]["p50"] == 1 and positive(spans["tool_ms"]["p50"])

    fakes = report["fakes"]
    assert fakes["llm"]["ttft_ms"] == 100.0 and fakes["llm"]["chat_requests"] >= 4
    assert fakes["llm"]["token_delivery_ms"]["n"] == 2 and positive(fakes["llm"]["clause_delivery_ms"]["p50"])
    rounds = fakes["tool_rounds"]
    assert len(rounds) == 2
    for r in rounds:
        assert r["call_received"] < r["call_first_token"] < r["call_stream_end"] < r["follow_received"] \
            < r["follow_first_token"], r
        for key in ("call_stream_ms", "end_to_follow_request_ms", "end_to_follow_first_token_ms", "added_to_turn_ms",
                    "server_tool_ms"):
            assert positive(r[key]), (key, r)
        assert r["end_to_follow_request_ms"] >= r["server_tool_ms"], r
    edge = fakes["edge"]
    assert edge["requests"] >= 2 and edge["fake_synth_ms"]["n"] >= 2 and positive(edge["fake_synth_ms"]["p50"])
    assert edge["turns"], "no turn matched to its first Edge request"
    for turn in edge["turns"]:
        assert turn["first_clause_to_tts_first_chunk_ms"] > turn["fake_synth_ms"] > 0, turn
    assert positive(report["summary"]["fake.tool_round.added_to_turn_ms.p50"])
    assert "Tool-call rounds" in stdout and "FAKE EDGE" in stdout


# ------------------------------------------------------------------------------ components


class BrokenASR:
    """Fails at load, the way a provider with a bad API key or a missing model does."""

    name = "asr.broken"

    async def load(self) -> None:
        raise ProviderUnavailable("asr.broken: no such model")

    async def close(self) -> None:
        pass


class FlakyTTS:
    """Loads, then fails on every second sentence."""

    name = "tts.flaky"

    def __init__(self) -> None:
        self.calls = 0

    async def load(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def synthesize(self, text: str):  # noqa: ANN201 - async generator
        self.calls += 1
        if self.calls % 2 == 1 and self.calls > 1:
            raise RuntimeError("connection reset by peer")
        yield AudioChunk(pcm=b"\x00\x01" * 2400, sample_rate=24000)


class SteadyTTS(FlakyTTS):
    name = "tts.steady"

    async def synthesize(self, text: str):  # noqa: ANN201 - async generator
        yield AudioChunk(pcm=b"\x00\x01" * 4800, sample_rate=24000)


async def test_failing_providers_are_reported_and_the_run_goes_on(tmp_path: Path) -> None:
    # A fallback chain (tts: [a, b]) is measured member by member.
    override = tmp_path / "chain.yaml"
    override.write_text("tts:\n  - {type: piper}\n  - {type: piper, length_scale: 1.5}\n", encoding="utf-8")
    config = load_config(override=override)
    fakes: dict[str, list[Any]] = {"asr": [BrokenASR()], "tts": [FlakyTTS(), SteadyTTS()]}
    reports: list[Any] = []
    await run_components(config, ROOT, ["asr", "tts"], ComponentOptions(tts_sentences=4), Console(quiet=True),
                         reports, factory=lambda kind, settings, ctx: fakes[kind].pop(0))
    asr, tts, tts2 = reports
    assert asr.status == "failed" and "no such model" in asr.error
    assert tts.status == "ok" and tts.summary["success_rate"] == 0.5
    assert [bool(i.get("error")) for i in tts.items] == [False, True, False, True]
    assert "connection reset" in tts.items[1]["error"]
    assert (tts2.key, tts2.status, tts2.summary["success_rate"]) == ("tts[tts.steady]", "ok", 1.0)


async def test_components_on_the_embedded_stack(tmp_path: Path) -> None:
    # A user test folder: one WAV with its transcript, one WAV without (skipped with a note).
    pcm = await speech("Please open the window.", "en")
    (tmp_path / "window.wav").write_bytes(write_wav(pcm, 16000))
    (tmp_path / "window.txt").write_text("Please open the window.", encoding="utf-8")
    (tmp_path / "stray.wav").write_bytes(write_wav(pcm, 16000))
    options = ComponentOptions(vad_per_language=1, asr_per_language=1, testset_dir=str(tmp_path),
                               llm_prompts=2, tts_sentences=2)
    reports: list[Any] = []
    await run_components(load_config(), ROOT, ["vad", "asr", "llm", "tts"], options, Console(quiet=True), reports)
    by_kind = {r.kind: r for r in reports}
    assert all(r.status == "ok" for r in reports), [(r.kind, r.error) for r in reports]

    vad = by_kind["vad"].summary
    assert vad["frames"] > 0 and positive(vad["vad_ms_per_frame"]["mean"])
    assert vad["detected"] == 2 and vad["missed"] == 0
    assert positive(vad["endpoint_delay_ms"]["p50"])
    for item in by_kind["vad"].items:  # the detected span lies around the known one
        assert item["true_start_ms"] < item["true_end_ms"]
        assert item["detected_start_ms"] < item["detected_end_ms"]
        assert item["endpoint_delay_ms"] > item["offset_error_ms"]

    asr = by_kind["asr"]
    # Mandarin speech comes from the Chinese TTS when the Mandarin extras are installed.
    zh_set = f"{builtin_source('zh')}_zh"
    assert {"espeak_en", zh_set, "user_en"} <= set(asr.summary["by_set"])
    assert asr.summary["by_set"]["espeak_en"]["metric"] == "wer"
    assert asr.summary["by_set"][zh_set]["metric"] == "cer"
    assert all(positive(i["rtf"]) and i["hypothesis"] is not None for i in asr.items)
    assert any("stray.wav" in n for n in asr.notes)
    assert any("English-only" in n for n in asr.notes)

    llm = by_kind["llm"]
    assert llm.summary["success_rate"] == 1.0 and len(llm.items) == 2
    for item in llm.items:
        assert 0 < item["ttft_ms"] <= item["first_clause_ms"] <= item["total_ms"] and item["reply"]

    tts = by_kind["tts"]
    for item in tts.items:
        assert positive(item["first_chunk_ms"]) and positive(item["rtf"]) and positive(item["audio_ms"])


# ------------------------------------------------------------------------------ small parts


def test_error_rates() -> None:
    assert error_rate("Please set a timer for ten minutes.", "please set a timer for 10 minutes", "en") == 0
    assert error_rate("the cat sat", "the cat sat down", "en") == pytest.approx(1 / 3)
    assert error_rate("今天天气很好", "今天天气不好", "zh") == pytest.approx(1 / 6)
    assert error_rate("今天天气很好。", "今天，天气很好", "zh") == 0


def test_percentiles_and_summary() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5 and percentile([], 50) is None
    assert percentile([5.0], 95) == 5.0
    assert percentile([1, 2, float("inf")], 95) == float("inf")
    s = summarize([3, None, 1, 2])
    assert (s["n"], s["p50"], s["max"], s["mean"]) == (3, 2, 3, 2)


def test_user_testset_requires_transcripts(tmp_path: Path) -> None:
    (tmp_path / "a.wav").write_bytes(write_wav(b"\x00\x00" * 160, 16000))
    (tmp_path / "a.txt").write_text("你好", encoding="utf-8")
    (tmp_path / "b.wav").write_bytes(write_wav(b"\x00\x00" * 160, 16000))
    samples, notes = user_samples(tmp_path)
    assert [(s.name, s.language) for s in samples] == [("a", "zh")]
    assert notes and "b.wav" in notes[0]


def test_chart_of_a_saved_report(tmp_path: Path) -> None:
    report = {
        "started_at": "2026-12-01T15:00:00", "machine": {"cpu_model": "test", "cores_logical": 2},
        "e2e": {"summary": {"stt_ms": {"p50": 300, "p95": 420, "max": 500},
                            "first_frame_ms": {"p50": 900, "p95": 1400, "max": 9000}},
                "server_stages_ms": {"speech_end_to_first_frame": {"p50": 800}}},
        "ramp": {"steps": [{"devices": 1, "first_frame_ms": {"p50": 900}, "p95_first_frame_ms": 1300},
                           {"devices": 2, "first_frame_ms": {"p50": 1100}, "p95_first_frame_ms": "inf"}],
                 "options": {"threshold_ms": 2000}, "capacity_devices": 1},
        "components": {"llm": {"summary": {"ttft_ms": {"p50": 120, "p95": 200, "max": 250}}}},
    }
    path = tmp_path / "r.png"
    png = render_chart(report)
    assert png is not None
    path.write_bytes(png)
    check_png(path)
    assert render_chart({"started_at": "x"}) is None  # nothing measured: no chart


def test_chart_without_matplotlib_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    # The server and the JSON report never need matplotlib; the chart names the missing extra.
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ChartUnavailable, match=r"\[bench\]"):
        render_chart({"components": {"llm": {"summary": {"ttft_ms": {"p50": 1}}}}})


def test_help_documents_every_option() -> None:
    parser = build_parser()
    text = parser.format_help()
    for action in parser._actions:
        for option in action.option_strings:
            assert option in text
        assert action.help, action.option_strings


async def test_bad_usage_exits_2() -> None:
    code, _, stderr = await run_tool("--http-url", "http://127.0.0.1:1", timeout=60)
    assert code == 2 and "--url" in stderr
    code, _, stderr = await run_tool("--only", "asr,nope", timeout=60)
    assert code == 2 and "nope" in stderr


async def test_url_of_a_server_without_health_or_metrics(tmp_path: Path) -> None:
    """Pointed at a server that is not ours (no /health, no /metrics, and it closes the socket
    after an abort, as the reference server did): the run goes on without the stage breakdown
    and ends with a report, not a traceback."""
    from harness.fakes.reference_like import ReferenceLikeServer

    async with ReferenceLikeServer() as ref:
        out = tmp_path / "ref.json"
        code, stdout, stderr = await run_tool("--e2e", "--url", ref.ws_url, "--http-url", ref.http_url,
                                              "--devices", "1", "--prompts", "1", "--out", str(out), timeout=180)
        assert ref.aborts == 1
    assert "Traceback" not in stdout + stderr, stdout + stderr
    assert code in (0, 1), stdout + stderr
    assert "no /health" in stderr
    e2e = json.loads(out.read_text(encoding="utf-8"))["e2e"]
    question = next(t for t in e2e["turns"] if t["kind"] == "question")
    assert question["ok"] and question["stt_text"] == "hello" and question["frames"] > 0, question
    assert any("no /metrics" in note for note in e2e["notes"]), e2e["notes"]
    assert e2e["server_turns"] == []
