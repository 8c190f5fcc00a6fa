"""`server.auth.pairing` settings (part of auth: only used when server.auth.enabled is true)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from server.pairing.networks import PendingCaps


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
    # Codes from one public network (IPv4 /24, IPv6 /64): one attacker holds many addresses of one
    # network. Not applied to local (private, link-local, loopback) addresses: the owner's LAN.
    max_pending_per_network: int = Field(default=6, ge=1, le=100000)
    # Codes from public addresses together. The rest of max_pending stays free for devices on the
    # local network, which a flood from the internet can never fill (a device physically present
    # can always pair). Set it to max_pending to give public addresses the whole table.
    max_pending_public: int = Field(default=32, ge=0, le=100000)
    # How often connected devices are checked against the registry, so a revoked device's open
    # session ends within this many seconds (new connections are refused at once).
    revocation_check_s: float = Field(default=2.0, gt=0, le=300)

    @property
    def caps(self) -> PendingCaps:
        return PendingCaps(self.max_pending, self.max_pending_per_address, self.max_pending_per_network,
                           min(self.max_pending_public, self.max_pending))
