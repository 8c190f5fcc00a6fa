"""performance_tester.py --xiaomi, run small (2 speakers, 2 rounds): the report holds real measured
values in the order time flows. How fast is for docs/performance.md, not for a test."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]


async def test_xiaomi_bench_reports_latency_cpu_and_memory_per_step(tmp_path: Path) -> None:
    out = tmp_path / "xiaomi.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "performance_tester.py"), "--xiaomi", "2", "--prompts", "2", "--idle-settle", "2",
        "--fake-ttft-ms", "100", "--out", str(out), cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 0, (stdout.decode()[-2000:], stderr.decode()[-2000:])
    assert "vis->speak" in stdout.decode()
    report = json.loads(out.read_text())
    steps = {s["speakers"]: s for s in report["steps"]}
    assert set(steps) == {0, 1, 2}
    assert steps[0]["polls_per_s"] == 0 and steps[2]["polls_per_s"] > steps[1]["polls_per_s"] > 0
    for n in (1, 2):
        s = steps[n]
        assert s["rss_mb"] > 0 and s["cpu_percent"] >= 0 and s["missed"] == 0 and not s["errors"]
        v, p, q = s["visible_to_speak_ms"], s["visible_to_poll_ms"], s["poll_to_speak_ms"]
        assert v["n"] == 2 * n and p["n"] == 2 * n
        # The speak command needs the poll first, then at least the LLM's time to first token.
        assert p["min"] >= 0 and q["min"] >= 100 and v["min"] >= q["min"]
    assert "rss_per_speaker_mb" in report["increments"]
