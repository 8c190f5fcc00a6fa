"""Opus at the edge of the server (libopus through opuslib).

Inside, audio is PCM16 mono. Uplink packets are decoded with a buffer big enough for the longest
legal Opus packet (120 ms), so 20 ms (py-xiaozhi) and 60 ms (firmware) uplinks both decode
without being told the duration. Downlink PCM is cut into fixed frames of exactly the duration we
declared in the server hello: the firmware sizes its decode buffer from that value.
"""

from __future__ import annotations

import ctypes.util
import functools
from dataclasses import dataclass, field

MAX_PACKET_MS = 120


class OpusUnavailable(RuntimeError):
    pass


@functools.cache
def _libopus_found() -> bool:
    # find_library runs `ldconfig -p` in a subprocess: once per process, not once per decoder
    # (every device that connects creates one).
    return ctypes.util.find_library("opus") is not None


def load_opuslib():  # noqa: ANN202 - module object
    if not _libopus_found():
        raise OpusUnavailable(
            "libopus is not installed: run scripts/install.sh, or 'apt-get install libopus0' "
            "(Debian/Ubuntu), 'brew install opus' (macOS)")
    import opuslib

    return opuslib


class OpusDecoder:
    """Decodes one stream of packets to PCM16 mono at `sample_rate`."""

    def __init__(self, sample_rate: int = 16000) -> None:
        opuslib = load_opuslib()
        self.sample_rate = sample_rate
        self._max_samples = sample_rate * MAX_PACKET_MS // 1000
        self._decoder = opuslib.Decoder(sample_rate, 1)
        self._error = opuslib.OpusError

    def decode(self, packet: bytes) -> bytes:
        """Raises ValueError on a corrupt packet (the caller drops it and goes on)."""
        if not packet:
            raise ValueError("empty Opus packet")
        try:
            return self._decoder.decode(bytes(packet), self._max_samples)
        except self._error as exc:
            raise ValueError(f"undecodable Opus packet ({exc})") from None


@dataclass(slots=True)
class OpusEncoder:
    """Encodes PCM16 mono into packets of exactly `frame_ms`; keeps the remainder between calls
    and zero-pads it on `flush()`."""

    sample_rate: int = 24000
    frame_ms: int = 60
    bitrate: int = 24000
    complexity: int = 5
    _encoder: object = field(init=False, repr=False)
    _pending: bytearray = field(init=False, repr=False, default_factory=bytearray)

    def __post_init__(self) -> None:
        opuslib = load_opuslib()
        enc = opuslib.Encoder(self.sample_rate, 1, opuslib.APPLICATION_AUDIO)
        enc.bitrate = self.bitrate
        enc.complexity = self.complexity
        enc.signal = opuslib.SIGNAL_VOICE
        self._encoder = enc

    @property
    def frame_samples(self) -> int:
        return self.sample_rate * self.frame_ms // 1000

    def encode(self, pcm: bytes) -> list[bytes]:
        self._pending.extend(pcm)
        frame_bytes = self.frame_samples * 2
        out: list[bytes] = []
        while len(self._pending) >= frame_bytes:
            chunk = bytes(self._pending[:frame_bytes])
            del self._pending[:frame_bytes]
            out.append(self._encoder.encode(chunk, self.frame_samples))  # type: ignore[attr-defined]
        return out

    def flush(self) -> list[bytes]:
        if not self._pending:
            return []
        frame_bytes = self.frame_samples * 2
        self._pending.extend(b"\x00" * (frame_bytes - len(self._pending)))
        return self.encode(b"")

    def reset(self) -> None:
        self._pending.clear()
        self._encoder.reset_state()  # type: ignore[attr-defined]


# Frame duration in 1/10 ms for each of the 32 TOC configurations (RFC 6716 section 3.1):
# 0-11 SILK (10/20/40/60 ms), 12-15 hybrid (10/20), 16-31 CELT (2.5/5/10/20).
_TOC_FRAME_TENTHS = (100, 200, 400, 600) * 3 + (100, 200) * 2 + (25, 50, 100, 200) * 4
# opus_encode() documents packets of 2 bytes or less as DTX: nothing to transmit (the firmware
# sends them anyway). They carry no audio; a decoder would only conceal or make comfort noise.
DTX_MAX_BYTES = 2
# Between DTX packets the encoder sends comfort-noise updates of a few bytes. Speech needs far
# more: SILK's lowest speech rate is 6 kbit/s, the firmware's VBR speech is 100+ bytes per 60 ms.
# A packet at or under 2.4 kbit/s (3 bytes per 10 ms) carries no speech and counts as silence.
COMFORT_NOISE_BYTES_PER_10MS = 3


def packet_samples(packet: bytes, sample_rate: int = 16000) -> int | None:
    """Samples one Opus packet decodes to, from its TOC byte (None if malformed)."""
    if not packet:
        return None
    toc = packet[0]
    code = toc & 0x03
    if code == 0:
        count = 1
    elif code in (1, 2):
        count = 2
    elif len(packet) < 2 or not packet[1] & 0x3F:
        return None
    else:
        count = packet[1] & 0x3F
    tenths = _TOC_FRAME_TENTHS[toc >> 3] * count
    return tenths * sample_rate // 10000 if tenths <= MAX_PACKET_MS * 10 else None


def dtx_samples(packet: bytes, sample_rate: int = 16000) -> int | None:
    """For a DTX or comfort-noise packet (no speech in it): the samples of silence it stands
    for; else None."""
    if len(packet) > COMFORT_NOISE_BYTES_PER_10MS * MAX_PACKET_MS // 10:
        return None  # fast exit for ordinary audio
    samples = packet_samples(packet, sample_rate)
    if samples is None:
        return None
    if len(packet) <= DTX_MAX_BYTES or len(packet) * sample_rate // 100 <= COMFORT_NOISE_BYTES_PER_10MS * samples:
        return samples
    return None
