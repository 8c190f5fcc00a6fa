"""The speakers of an account: MiNA's list (what the bridge needs) joined with MIoT's (the did
the MIoT actions need, when MiNA does not report it), and finding the one a config entry means."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from server.xiaomi.errors import XiaomiError
from server.xiaomi.mina import MinaDevice, MinaService
from server.xiaomi.miot import MiotDevice, MiotService
from server.xiaomi.models import ModelProfile, model_table

log = logging.getLogger("server.xiaomi")


@dataclass(frozen=True, slots=True)
class Speaker:
    mina: MinaDevice
    miot_did: str
    profile: ModelProfile
    known_model: bool

    @property
    def label(self) -> str:
        return self.mina.alias or self.mina.name or self.mina.device_id

    def describe(self) -> str:
        return (f"{self.mina.name!r} (alias {self.mina.alias!r}, model {self.mina.hardware}, "
                f"MiNA deviceID {self.mina.device_id}, MIoT did {self.miot_did or '?'})")


async def list_speakers(mina: MinaService, miot: MiotService | None = None) -> list[Speaker]:
    devices = await mina.device_list()
    miot_devices: list[MiotDevice] = []
    if miot is not None and any(not d.miot_did for d in devices):
        try:
            miot_devices = await miot.device_list()
        except XiaomiError as exc:
            log.warning("MIoT device list unavailable (%s); MIoT actions need the did from MiNA", exc)
    table = model_table()
    out = []
    for d in devices:
        did = d.miot_did or next((m.did for m in miot_devices if m.model.lower().endswith("." + d.hardware.lower())
                                  and (m.name == d.name or len(devices) == 1)), "")
        profile, known = table.profile(d.hardware)
        out.append(Speaker(d, did, profile, known))
    return out


def find_speaker(speakers: list[Speaker], key: str) -> Speaker | None:
    return next((s for s in speakers if s.mina.matches(key)), None)
