"""A virtual clock for tests: time passes only when the code under test waits on it."""

from __future__ import annotations

import asyncio


class VirtualClock:
    """Call it for the time (a `clock=` argument); await `sleep` to let time pass (a `sleep=`
    argument). Sleeping still yields to the event loop once, so other tasks run."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)
