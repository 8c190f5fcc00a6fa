"""`server.auth.pairing` settings (part of auth: only used when server.auth.enabled is true)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PairingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # On: only devices the owner paired (`python -m server devices pair CODE`) get a token.
    # Off: every device that calls the OTA endpoint gets one (the reference server's behaviour).
    enabled: bool = True
    # SQLite file of the device registry, relative to data_dir.
    db: str = "devices.sqlite3"
    # How long a pairing code stays valid; the device asks for a new one afterwards.
    code_ttl_s: float = Field(default=600, ge=30, le=86400)
    # Codes waiting for the owner, in all and per client address. When full, new devices are
    # told to retry later: a flood of made-up device ids never evicts a real device's code.
    max_pending: int = Field(default=64, ge=1, le=100000)
    max_pending_per_address: int = Field(default=3, ge=1, le=1000)
    # How often connected devices are checked against the registry, so a revoked device's open
    # session ends within this many seconds (new connections are refused at once).
    revocation_check_s: float = Field(default=2.0, gt=0, le=300)
