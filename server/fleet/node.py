"""This process as a member of a fleet (or the only process, in embedded mode): its node id, the
device presence on the state bus, the Prometheus listener and, when embedded, the data
directory lock. Started by server/app.py after the services are built."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

from server.fleet.leased import Job, LeasedJob
from server.fleet.presence import DevicePresence

log = logging.getLogger("server.fleet")


def new_node_id() -> str:
    """Unique per process start: a restarted process is a new lease owner, never the old one."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class FleetNode:
    services: Any
    node_id: str = field(default_factory=new_node_id)
    presence: DevicePresence | None = None
    prometheus: Any = None  # PrometheusMetrics when the listener is on
    prometheus_port: int = 0
    jobs: list[LeasedJob] = field(default_factory=list)
    _runners: list[Any] = field(default_factory=list)

    async def start(self) -> None:
        services = self.services
        state = services.state
        self.presence = DevicePresence(state.bus, self.node_id, services.sessions)
        await self.presence.start()
        listen = services.config.prometheus.listen
        if listen:
            from server.fleet.prometheus import PrometheusMetrics, start_listener

            self.prometheus = PrometheusMetrics(services, {"node": self.node_id, "state": state.kind})
            presence = self.presence
            self.prometheus.extra_counters["xz_stale_connections_closed_total"] = (
                "Sessions closed because their device connected again (on any process).", lambda: presence.kicked)
            jobs = self.jobs
            self.prometheus.extra_counters["xz_lease_terms_lapsed_total"] = (
                "Lease terms that ended because the lease ran out or was taken over (a pause, a lost "
                "store), not by a clean stop.", lambda: sum(j.lapsed for j in jobs))
            services.metrics.observers.append(self.prometheus.observe_turn)
            runner, self.prometheus_port = await start_listener(self.prometheus, listen)
            self._runners.append(runner)
        log.info("fleet: node %s, state %s", self.node_id, state.kind)

    async def session_started(self, session: Any) -> None:
        if self.presence is not None:
            await self.presence.connected(session.device.device_id, session.session_id)

    def run_exclusive(self, name: str, job: Job) -> LeasedJob:
        """Run `job` on exactly one process of the fleet at a time (e.g. polling one Xiaomi
        speaker): this process runs it while it holds the lease `name`, and another takes over
        within about `state.lease_ttl_s` if this one dies. Embedded: in-process, always ours."""
        leased = LeasedJob(self.services.state.leases, name, self.node_id,
                           self.services.config.state.lease_ttl_s, job)
        leased.start()
        self.jobs.append(leased)
        return leased

    async def close(self) -> None:
        # Give the leases up at once, so another process takes over without waiting for the TTL.
        for leased in self.jobs:
            await leased.release()
        self.jobs.clear()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
