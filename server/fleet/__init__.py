"""Running several server processes as one: connection presence across processes, jobs that
exactly one process may run (leases), Prometheus metrics. Storage lives in server/state."""
