"""The event-loop lag probe counts a blocked loop into /metrics counters and logs a long block."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from server.conversation.metrics import MetricsLog
from server.loop_lag import watch_loop_lag


async def test_a_blocked_loop_is_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    metrics = MetricsLog()
    probe = asyncio.create_task(watch_loop_lag(metrics))
    try:
        await asyncio.sleep(0.12)  # a few clean periods first
        assert not any(k.startswith("loop_lag_over") for k in metrics.counters)
        with caplog.at_level(logging.WARNING, logger="server.loop"):
            time.sleep(0.4)  # noqa: ASYNC251 - the blocking call on the loop that the probe exists to catch
            await asyncio.sleep(0.12)
    finally:
        probe.cancel()
        await asyncio.gather(probe, return_exceptions=True)
    c = metrics.counters
    assert c["loop_lag_over_20ms"] >= 1 and c["loop_lag_over_100ms"] >= 1 and c["loop_lag_over_250ms"] >= 1
    assert metrics.gauges["loop_lag_max_ms"] >= 300  # 0.4 s minus at most one 50 ms probe period
    assert any("event loop was held" in r.getMessage() for r in caplog.records)
