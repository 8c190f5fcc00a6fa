"""Where the server's shared state lives: embedded SQLite (default) or a PostgreSQL fleet store,
optionally with Redis for leases and pub/sub. See config.py for the keys and base.py for the
interfaces; clients of the chosen engine are imported only when it is chosen."""

from __future__ import annotations

from pathlib import Path

from server.state.base import Bus, Lease, Leases, StateBackend
from server.state.config import StateConfig, fleet_problems

__all__ = ["Bus", "Lease", "Leases", "StateBackend", "StateConfig", "fleet_problems", "open_state"]


async def open_state(state: StateConfig, data_dir: Path | None, memory_db: str = "memory.sqlite3", *,
                     max_exchanges_per_user: int = 0) -> StateBackend:
    """Open the configured backend. Raises ProviderUnavailable with one line when it cannot."""
    if not state.url:
        from server.memory.store import SqliteMemoryStore
        from server.state.embedded import LocalBus, LocalLeases

        if data_dir is None:
            raise ValueError("the embedded state needs a data directory")
        store = SqliteMemoryStore(data_dir / memory_db, max_exchanges_per_user=max_exchanges_per_user)
        await store.open()
        return StateBackend("embedded", store, LocalLeases(), LocalBus(), _closers=[store.close])
    from server.state.postgres import open_postgres

    backend = await open_postgres(state, max_exchanges_per_user)
    if state.redis_url:
        from server.state.redis_store import open_redis

        try:
            leases, bus, client = await open_redis(state.redis_url, state.connect_timeout_s)
        except BaseException:
            await backend.close()
            raise
        # Closed in reverse: the pub/sub reader before the client it reads from.
        backend._closers += [client.aclose, bus.close]
        backend.leases, backend.bus, backend.kind = leases, bus, "postgresql+redis"
        backend.extras["redis"] = client
    return backend
