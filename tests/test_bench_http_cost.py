"""bench.http_cost runs both clients against the fake and reports CPU per request for each."""

from __future__ import annotations

from bench.http_cost import measure


async def test_both_clients_measured() -> None:
    result = await measure(3)
    assert set(result) == {"openai_sdk", "aiohttp"}
    assert all(v > 0 for v in result.values()), result
