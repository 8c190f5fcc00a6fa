"""The `state` section: where memory, leases and fleet messages live.

One key decides it. `state.url` empty keeps today's embedded store (SQLite files under data/,
nothing to install or run); a `postgresql://` URL makes every process that points at the same
database share memory, persona, summaries, leases and connection presence, so several processes
behind a balancer behave as one server. `state.redis_url` optionally moves leases and fleet
messages (pub/sub) to Redis; memory always stays in the SQL store.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class StateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Empty: embedded (SQLite in data_dir, one process per data dir). postgresql://user:pass@host:5432/db:
    # shared by every process that uses the same URL.
    url: str = ""
    # Optional, with a PostgreSQL url: leases and fleet pub/sub in Redis (redis://host:6379/0).
    redis_url: str = ""
    # A lease (e.g. "who polls this Xiaomi speaker") lasts this long unless renewed; a dead
    # holder is replaced within about this time.
    lease_ttl_s: float = Field(default=15, ge=2, le=600)
    # Connections each process keeps to PostgreSQL.
    pool_size: int = Field(default=5, ge=1, le=100)
    connect_timeout_s: float = Field(default=10, gt=0, le=120)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        v = v.strip()
        if v and not v.startswith(POSTGRES_SCHEMES):
            raise ValueError("must be empty (embedded SQLite) or a postgresql:// URL")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str) -> str:
        v = v.strip()
        if v and not v.startswith(REDIS_SCHEMES):
            raise ValueError("must be empty or a redis://, rediss:// or unix:// URL")
        return v

    @property
    def shared(self) -> bool:
        return bool(self.url)


def fleet_problems(config: Any) -> list[str]:
    """What a process sharing its state with others must configure, as `key: advice` lines.

    With a shared store several processes answer the same devices, so anything one process
    hands a device must be valid on every other: tokens are signed with one secret, and the OTA
    answer must name the balancer, not the process that happened to answer (the firmware keeps
    that URL until its next boot, so a process's own address would defeat failover).
    """
    state: StateConfig = config.state
    problems: list[str] = []
    if state.redis_url and not state.url:
        problems.append("state.redis_url: needs state.url (a shared PostgreSQL); the embedded store is "
                        "one process and has nothing to share")
    if not state.shared:
        return problems
    if not config.server.auth.secret:
        problems.append("server.auth.secret: required with a shared state.url, so a token minted by one "
                        "process is accepted by every other (e.g. secret: ${XZ_AUTH_SECRET})")
    if not config.server.websocket_url:
        problems.append("server.websocket_url: required with a shared state.url: the OTA answer must give "
                        "devices the balancer's address (e.g. wss://voice.example.org/xiaozhi/v1/), not "
                        "this process's own")
    vision = config.vision
    if getattr(vision, "base_url", "") and getattr(vision, "model", "") and not getattr(vision, "url", ""):
        problems.append("vision.url: required with a shared state.url and vision on: devices must upload "
                        "photos through the balancer (e.g. https://voice.example.org/mcp/vision/explain)")
    return problems
