"""The bench fakes in a process of their own (`--fakes-process`).

In the tester's process the fakes share one event loop with every simulated device: at 50 or
100 talking devices the fake LLM's token stream, the fake ASR and TTS and the devices' frame
timing all wait for each other, and the tester measures itself. Here they run in a child
process with the same `BenchFakes`, so the devices' clock and the fakes' answers are independent.

The child's protocol, over its stdin/stdout (one JSON document per line):
  child -> parent: {"overrides": ..., "describe": ...} once the fakes listen;
  parent -> child: {"server_turns": [...]} at the end (or EOF: nothing to report);
  child -> parent: the fakes' report for those turns, then it exits.
Both processes use this machine's CLOCK_MONOTONIC, so the fakes' timestamps and the server's
/metrics milestones still line up (see bench/fakes.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sys
from typing import Any

from bench.fakes import BenchFakes, FakeOptions

READY_TIMEOUT_S = 60.0


class FakesProcess:
    """Stands in for `BenchFakes` in the tester: start, overrides, report, close."""

    def __init__(self, options: FakeOptions) -> None:
        self.options = options
        self._proc: asyncio.subprocess.Process | None = None
        self._overrides: dict[str, Any] = {}
        self._describe: dict[str, Any] = {}
        self._user: dict[str, Any] | None = None

    async def start(self, user_overrides: dict[str, Any] | None = None) -> FakesProcess:
        self._user = user_overrides or {}
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.fakes_process", json.dumps(dataclasses.asdict(self.options)),
            json.dumps(self._user), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024)
        assert self._proc.stdout is not None
        line = await asyncio.wait_for(self._proc.stdout.readline(), READY_TIMEOUT_S)
        if not line:
            raise RuntimeError(f"the fakes process exited before it was ready (code {await self._proc.wait()})")
        hello = json.loads(line)
        self._overrides, self._describe = hello["overrides"], hello["describe"]
        self._describe["process"] = self._proc.pid
        return self

    def overrides(self, user_overrides: dict[str, Any]) -> dict[str, Any]:
        return self._overrides

    def describe(self) -> dict[str, Any]:
        return dict(self._describe)

    async def report_async(self, server_turns: list[dict[str, Any]]) -> dict[str, Any]:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None or proc.returncode is not None:
            return self.describe()
        proc.stdin.write((json.dumps({"server_turns": server_turns}) + "\n").encode())
        await proc.stdin.drain()
        proc.stdin.close()
        line = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT_S)
        report = json.loads(line) if line else self.describe()
        report["process"] = proc.pid
        return report

    async def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def _child(options: FakeOptions, user_overrides: dict[str, Any]) -> None:
    fakes = await BenchFakes(options).start()
    try:
        print(json.dumps({"overrides": fakes.overrides(user_overrides), "describe": fakes.describe()}), flush=True)
        line = await asyncio.to_thread(sys.stdin.readline)
        if line.strip():
            turns = json.loads(line).get("server_turns") or []
            print(json.dumps(fakes.report(turns)), flush=True)
    finally:
        await fakes.close()


if __name__ == "__main__":
    asyncio.run(_child(FakeOptions(**json.loads(sys.argv[1])), json.loads(sys.argv[2])))
