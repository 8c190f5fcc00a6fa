"""How late the event loop runs: the one number that shows whether anything blocks it.

Every device shares one event loop, so a callback that holds it (a synchronous call, a large
JSON, CPU work that belongs on a thread) delays every device's paced audio at once. A probe
sleeps `PERIOD_S` again and again and measures how late it wakes up. The lateness is counted
into buckets that /metrics shows as counters (`loop_lag_over_20ms`, ...), the worst since start
as the gauge `loop_lag_max_ms`, and a lag long enough to stall playback is logged (at most once a minute).
"""

from __future__ import annotations

import asyncio
import logging
import time

from server.conversation.metrics import MetricsLog

log = logging.getLogger("server.loop")

PERIOD_S = 0.05
BUCKETS_MS = (20, 50, 100, 250, 1000)
WARN_MS = 250  # past the firmware's usual queue lead: a device can run dry
WARN_EVERY_S = 60.0


async def watch_loop_lag(metrics: MetricsLog) -> None:
    """Runs until cancelled."""
    last_warning = 0.0
    while True:
        due = time.monotonic() + PERIOD_S
        await asyncio.sleep(PERIOD_S)
        lag_ms = (time.monotonic() - due) * 1000
        if lag_ms > metrics.gauges.get("loop_lag_max_ms", 0):
            metrics.gauges["loop_lag_max_ms"] = round(lag_ms, 1)
        for bucket in BUCKETS_MS:
            if lag_ms <= bucket:
                break
            metrics.count(f"loop_lag_over_{bucket}ms")
        if lag_ms >= WARN_MS and time.monotonic() - last_warning >= WARN_EVERY_S:
            last_warning = time.monotonic()
            log.warning("the event loop was held for %.0f ms: every device's audio waited (a blocking call, "
                        "or the machine is out of CPU)", lag_ms)
