"""Device pairing: which devices the owner accepted, and the short codes that get them accepted.

`DeviceRegistry` is the storage interface (a typing.Protocol); `SqliteDeviceRegistry` the
embedded default. `Pairing` holds the policy the OTA endpoint applies (codes, caps, expiry).
"""

from server.pairing.config import PairingConfig
from server.pairing.registry import DeviceRecord, DeviceRegistry, PendingCode
from server.pairing.service import OtaDecision, Pairing
from server.pairing.sqlite_registry import SqliteDeviceRegistry

__all__ = ["DeviceRecord", "DeviceRegistry", "OtaDecision", "Pairing", "PairingConfig", "PendingCode",
           "SqliteDeviceRegistry"]
