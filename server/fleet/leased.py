"""Run a job only while holding its lease: exactly one process of the fleet runs it at a time.

`LeasedJob` keeps trying to take the lease; once it has it, it starts the job and renews every
third of the TTL. The job is cancelled the moment the lease is lost (renewal refused: someone
else holds it) or when the local deadline passes without a successful renewal (the database was
unreachable, or this process was frozen and woke up late). The job receives a `LeaseHandle`:
`valid()` to check before acting, and `fenced_set()` for the writes that record progress (the
store refuses them once another process took over, so even a holder that passed its `valid()`
check just before freezing cannot overwrite the new holder's progress).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from server.state.base import Lease, Leases

log = logging.getLogger("server.fleet")


class LeaseLost(Exception):
    """A fenced write was refused: the job must stop, another process owns it now."""


class LeaseHandle:
    def __init__(self, leases: Leases, lease: Lease) -> None:
        self.leases = leases
        self.lease = lease

    @property
    def generation(self) -> int:
        return self.lease.generation

    def valid(self) -> bool:
        return self.lease.valid()

    async def fenced_set(self, key: str, value: str) -> None:
        """Record progress; raises LeaseLost when the store refuses it."""
        if not await self.try_fenced_set(key, value):
            raise LeaseLost(f"{self.lease.name}: write refused for generation {self.lease.generation}")

    async def try_fenced_set(self, key: str, value: str) -> bool:
        """Record progress; False when the store refuses it (another process holds the lease now)."""
        return await self.leases.fenced_set(self.lease, key, value)

    async def still_held(self) -> bool:
        """Ask the store (not our clock) whether this term is still the live holding: checked
        before an action a store write cannot fence, e.g. a command to a Xiaomi speaker."""
        return await self.leases.holder(self.lease.name) == (self.lease.owner, self.lease.generation)

    async def fenced_get(self, key: str) -> str | None:
        got = await self.leases.fenced_get(key)
        return got[0] if got else None


Job = Callable[[LeaseHandle], Awaitable[None]]


class LeasedJob:
    def __init__(self, leases: Leases, name: str, owner: str, ttl_s: float, job: Job,
                 retry_s: float | None = None) -> None:
        self.leases = leases
        self.name = name
        self.owner = owner
        self.ttl_s = ttl_s
        self.job = job
        self.retry_s = retry_s if retry_s is not None else ttl_s / 3
        self.handle: LeaseHandle | None = None
        self.terms = 0  # how many times this process took the lease
        self.lapsed = 0  # terms that ended because the lease ran out or was taken (not a clean stop)
        self._task: asyncio.Task[None] | None = None

    @property
    def holding(self) -> bool:
        return self.handle is not None and self.handle.valid()

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self.run(), name=f"lease-{self.name}")
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _try_acquire(self, timeout: float | None = None) -> Lease | None:
        """None when refused, failed, or not answered within `timeout` (a store that hangs must
        not keep a holder acting past its deadline)."""
        try:
            return await asyncio.wait_for(self.leases.acquire(self.name, self.owner, self.ttl_s),
                                          timeout if timeout is not None else self.ttl_s)
        except Exception as exc:  # noqa: BLE001 - the store is down or slow: try again later
            log.warning("lease %s: acquire failed: %s", self.name, exc if str(exc) else type(exc).__name__)
            return None

    async def run(self) -> None:
        while True:
            lease = await self._try_acquire()
            if lease is None:
                await asyncio.sleep(self.retry_s)
                continue
            await self._hold(lease)

    async def _hold(self, lease: Lease) -> None:
        self.terms += 1
        self.handle = handle = LeaseHandle(self.leases, lease)
        log.info("lease %s: taken by %s (generation %d)", self.name, self.owner, lease.generation)
        task = asyncio.create_task(self._run_job(handle), name=f"leased-{self.name}")
        try:
            while not task.done():
                renew_at = min(time.monotonic() + self.ttl_s / 3, handle.lease.deadline)
                done, _ = await asyncio.wait({task}, timeout=max(0.0, renew_at - time.monotonic()))
                if done:
                    break
                if not handle.valid():
                    self.lapsed += 1
                    log.warning("lease %s: deadline passed before renewal (paused or store unreachable); "
                                "stopping", self.name)
                    break
                renewed = await self._try_acquire(timeout=max(0.05, handle.lease.deadline - time.monotonic()))
                if renewed is None:
                    if handle.valid():
                        continue  # store unreachable: keep going until our own deadline
                    self.lapsed += 1
                    log.warning("lease %s: could not renew in time; stopping", self.name)
                    break
                if renewed.generation != lease.generation:
                    self.lapsed += 1
                    log.warning("lease %s: lost it meanwhile (generation %d -> %d); stopping",
                                self.name, lease.generation, renewed.generation)
                    handle.lease = renewed  # the old term is over; a new one starts below
                    break
                handle.lease = renewed
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            self.handle = None
        log.info("lease %s: %s stopped holding it (generation %d)", self.name, self.owner, lease.generation)

    async def _run_job(self, handle: LeaseHandle) -> None:
        try:
            await self.job(handle)
        except LeaseLost as exc:
            log.warning("lease %s: %s", self.name, exc)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a crashing job is restarted by the next term
            log.exception("lease %s: job failed", self.name)
            await asyncio.sleep(1)

    async def release(self) -> None:
        """Stop and give the lease up at once (clean shutdown), so another process takes over now."""
        handle = self.handle
        await self.stop()
        if handle is not None:
            with contextlib.suppress(Exception):
                await self.leases.release(handle.lease)
