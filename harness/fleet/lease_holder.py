"""A separate process that holds leases, for the lease tests (SIGKILL, SIGSTOP/SIGCONT).

    python -m harness.fleet.lease_holder --url postgresql://... [--redis-url redis://...]
        --owner NAME --ttl 2 --interval 0.2 [--raw] NAME...

Prints one JSON object per line: {"event": "acquired"|"wrote"|"lost", "name", "generation", "ok"}.

Default mode runs each name through the server's own LeasedJob, whose job records progress with
fenced writes every `interval`: the well-behaved holder. `--raw` takes the lease once and then
writes progress (then renews) every `interval` *without* checking its own deadline first: a holder
that passed its check just before it froze. It is the case fencing exists for; it exits when a
write is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from server.fleet.leased import LeasedJob, LeaseHandle
from server.state.config import StateConfig


def say(**fields: object) -> None:
    # `at`: when it happened, on the machine-wide monotonic clock (the test reads the line later,
    # possibly much later on a loaded machine).
    print(json.dumps({**fields, "at": time.monotonic()}), flush=True)


async def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--redis-url", default="")
    p.add_argument("--owner", required=True)
    p.add_argument("--ttl", type=float, default=2.0)
    p.add_argument("--interval", type=float, default=0.2)
    p.add_argument("--raw", action="store_true")
    p.add_argument("names", nargs="+")
    args = p.parse_args(argv)
    from server.state import open_state

    state = await open_state(StateConfig(url=args.url, redis_url=args.redis_url), data_dir=None)
    leases = state.leases
    try:
        if args.raw:
            return await raw_holder(leases, args)
        jobs = [LeasedJob(leases, name, args.owner, args.ttl, progress_job(name, args.owner, args.interval))
                for name in args.names]
        say(event="started", owner=args.owner)
        await asyncio.gather(*(job.run() for job in jobs))
        return 0
    finally:
        await state.close()


def progress_job(name: str, owner: str, interval: float):  # noqa: ANN201
    async def job(handle: LeaseHandle) -> None:
        say(event="acquired", name=name, owner=owner, generation=handle.generation)
        n = 0
        while True:
            n += 1
            ok = await handle.leases.fenced_set(handle.lease, f"{name}:progress", f"{owner}:{n}")
            say(event="wrote", name=name, owner=owner, generation=handle.generation, ok=ok)
            if not ok:
                return
            await asyncio.sleep(interval)
    return job


async def raw_holder(leases, args) -> int:  # noqa: ANN001
    name = args.names[0]
    lease = None
    while lease is None:
        lease = await leases.acquire(name, args.owner, args.ttl)
        if lease is None:
            await asyncio.sleep(args.interval)
    say(event="acquired", name=name, owner=args.owner, generation=lease.generation)
    n = 0
    while True:
        n += 1
        ok = await leases.fenced_set(lease, f"{name}:progress", f"{args.owner}:{n}")
        say(event="wrote", name=name, owner=args.owner, generation=lease.generation, ok=ok)
        if not ok:
            return 0
        renewed = await leases.acquire(name, args.owner, args.ttl)
        if renewed is not None and renewed.generation == lease.generation:
            lease = renewed
        await asyncio.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
