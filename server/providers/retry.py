"""Retry before the first item: the one rule every streaming provider call follows.

A stream (LLM deltas, TTS audio) that fails before it produced anything may be tried again, on
the same provider (a retryable error: timeout, 429, 5xx) or on the next one of a fallback chain.
Once an item went out it never is: a restarted answer or sentence would be heard twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from server.providers.base import ProviderError

log = logging.getLogger("server.providers")

T = TypeVar("T")
Attempt = Callable[[], AsyncIterator[T]]
# Given the error of the attempt that failed before its first item: the next attempt, or None
# to give up (the error propagates). May wait (backoff) or raise an error of its own.
NextAttempt = Callable[[ProviderError], Awaitable["Attempt[T] | None"]]


async def retry_before_first_item(first: Attempt[T], next_attempt: NextAttempt[T]) -> AsyncIterator[T]:
    """Yield the items of `first()`; when an attempt raises ProviderError before its first item,
    ask `next_attempt` what to run instead. An error after the first item always propagates.
    Closing this generator closes the running attempt at once (its HTTP stream with it), so an
    interrupted answer stops the vendor's generation too."""
    attempt: Attempt[T] | None = first
    while attempt is not None:
        produced = False
        try:
            async with contextlib.aclosing(attempt()) as items:
                async for item in items:
                    produced = True
                    yield item
            return
        except ProviderError as exc:
            if produced:
                raise
            attempt = await next_attempt(exc)
            if attempt is None:
                raise


def backoff_s(attempt: int, base: float, retry_after: float | None, cap: float = 5.0) -> float:
    """Exponential backoff with jitter; a server's Retry-After wins, capped (a voice turn
    cannot wait long anyway)."""
    delay = base * (2 ** (attempt - 1)) * (0.75 + random.random() / 2)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, cap)


def exponential(base_s: float) -> Callable[[int, ProviderError], float]:
    """The delay before retry `n` (1-based): `backoff_s` on `base_s` and the error's Retry-After."""
    return lambda n, exc: backoff_s(n, base_s, exc.retry_after)


def stream_with_retries(name: str, retries: int, delay_s: Callable[[int, ProviderError], float],
                        attempt: Attempt[T]) -> AsyncIterator[T]:
    """`attempt()`'s items; a retryable ProviderError before the first item starts a new attempt
    after `delay_s(n, error)`, at most `retries` times."""
    tries = 0

    async def again(exc: ProviderError) -> Attempt[T] | None:
        nonlocal tries
        if not exc.retryable or tries >= retries:
            return None
        tries += 1
        delay = delay_s(tries, exc)
        log.warning("%s: %s; retry %d/%d in %.2f s", name, exc, tries, retries, delay)
        await asyncio.sleep(delay)
        return attempt

    return retry_before_first_item(attempt, again)


async def call_with_retries(name: str, retries: int, delay_s: Callable[[int, ProviderError], float],
                            call: Callable[[], Awaitable[T]]) -> T:
    """One request/answer call under the same policy: a single answer is never heard in part,
    so every retryable failure may be retried."""

    async def once() -> AsyncIterator[T]:
        yield await call()

    results = [result async for result in stream_with_retries(name, retries, delay_s, once)]
    return results[0]
