"""Real PostgreSQL, Redis and HAProxy on 127.0.0.1 for the fleet tests and benchmarks: each
started from its Debian binaries in a throwaway directory on a free port, ended by its pid."""
