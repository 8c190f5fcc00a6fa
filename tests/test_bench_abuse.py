"""`performance_tester.py --abuse`, small: the real tester against its own real server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import parse_args
from tests.test_performance_tester import run_tool

pytestmark = pytest.mark.e2e


def test_abuse_options() -> None:
    args = parse_args(["--abuse", "--fake-llm"])
    assert args.abuse and args.abuse_clients == 200 and args.abuse_seconds == 60 and args.devices_good == 4
    assert not args.e2e and not args.components
    for bad in (["--abuse", "--url", "ws://127.0.0.1:1/"], ["--abuse", "--abuse-clients", "0"]):
        with pytest.raises(SystemExit) as exc:
            parse_args(bad)
        assert exc.value.code == 2, bad


async def test_small_abuse_soak(tmp_path: Path) -> None:
    out = tmp_path / "abuse.json"
    code, stdout, stderr = await run_tool(
        "--abuse", "--fake-llm", "--abuse-clients", "12", "--abuse-seconds", "8", "--good-devices", "1",
        "--prompts", "1", "--abuse-settle", "2", "--out", str(out), timeout=400)
    assert code == 0, stdout[-2000:] + stderr[-2000:]
    report = json.loads(out.read_text())
    summary = report["summary"]
    assert summary["clean"]["turns"] == summary["abuse"]["turns"] == 1
    assert summary["clean"]["failed"] == summary["abuse"]["failed"] == 0
    assert summary["abuse"]["first_audio_ms"]["p50"] > 0
    outcomes = report["abuser_outcomes"]
    assert "ACCEPTED" not in outcomes["token"] and outcomes["token"].get("401", 0) > 0
    assert outcomes["metrics"] and set(outcomes["metrics"]) == {"401"}
    assert report["sessions_after_settle"] == 0
    assert set(report["rss_mb"]) >= {"ready", "after_clean", "after_abuse", "after_settle"}
    assert "ABUSE" in stdout
