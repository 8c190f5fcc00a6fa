"""Device-side Opus helpers: the firmware's uplink encoder and a TOC parser.

The uplink encoder mirrors the firmware's AS_OPUS_ENC_CONFIG: 16 kHz mono, application AUDIO,
complexity 0, VBR, bitrate auto, DTX on (so silence becomes 1-3 byte packets, which a server
must accept). server.audio.opus.OpusEncoder is the server's TTS encoder (fixed bitrate, signal
voice, no DTX), so the device uses opuslib directly here.
"""

from __future__ import annotations

from server.audio.opus import load_opuslib

UPLINK_SAMPLE_RATE = 16000

# Frame duration in ms for each of the 32 TOC configurations (RFC 6716 section 3.1):
# 0-11 SILK (10/20/40/60), 12-15 hybrid (10/20), 16-31 CELT (2.5/5/10/20).
_TOC_FRAME_MS: tuple[float, ...] = (
    (10.0, 20.0, 40.0, 60.0) * 3 + (10.0, 20.0) * 2 + (2.5, 5.0, 10.0, 20.0) * 4
)


def opus_packet_duration_ms(packet: bytes) -> float | None:
    """Audio duration carried by one Opus packet, from its TOC byte; None if the packet is
    malformed. Used to model playback time without depending on a successful decode."""
    if not packet:
        return None
    toc = packet[0]
    frame_ms = _TOC_FRAME_MS[toc >> 3]
    code = toc & 0x03
    if code == 0:
        count = 1
    elif code in (1, 2):
        count = 2
    else:
        if len(packet) < 2:
            return None
        count = packet[1] & 0x3F
        if count == 0:
            return None
    total = frame_ms * count
    return total if total <= 120.0 else None  # RFC 6716: a packet never exceeds 120 ms


class UplinkEncoder:
    """Encodes PCM16 mono 16 kHz into Opus packets of exactly `frame_ms` (60 for the firmware,
    20 for py-xiaozhi on x86). Keeps the remainder between calls, like a microphone stream."""

    def __init__(self, frame_ms: int = 60, complexity: int = 0, dtx: bool = True) -> None:
        opuslib = load_opuslib()  # raises OpusUnavailable with install hints if libopus is missing
        from opuslib.api import ctl
        from opuslib.api import encoder as api_encoder

        self.frame_ms = frame_ms
        self.frame_samples = UPLINK_SAMPLE_RATE * frame_ms // 1000
        self._encoder = opuslib.Encoder(UPLINK_SAMPLE_RATE, 1, opuslib.APPLICATION_AUDIO)
        self._encoder.complexity = complexity
        self._encoder.vbr = 1
        self.dtx = False
        if dtx:
            # opuslib's Encoder.dtx setter passes the GET request (a bug in opuslib 3.0.1), so
            # issue OPUS_SET_DTX through the raw ctl API instead.
            try:
                api_encoder.encoder_ctl(self._encoder.encoder_state, ctl.set_dtx, 1)
                self.dtx = True
            except Exception:
                self.dtx = False
        self._pending = bytearray()

    @property
    def frame_bytes(self) -> int:
        return self.frame_samples * 2

    def encode(self, pcm: bytes) -> list[bytes]:
        self._pending.extend(pcm)
        out: list[bytes] = []
        while len(self._pending) >= self.frame_bytes:
            chunk = bytes(self._pending[: self.frame_bytes])
            del self._pending[: self.frame_bytes]
            out.append(self._encoder.encode(chunk, self.frame_samples))
        return out

    def flush(self) -> list[bytes]:
        """Zero-pad and encode the partial frame left over (end of an utterance)."""
        if not self._pending:
            return []
        self._pending.extend(b"\x00" * (self.frame_bytes - len(self._pending)))
        return self.encode(b"")

    def encode_all(self, pcm: bytes) -> list[bytes]:
        return self.encode(pcm) + self.flush()

    def reset(self) -> None:
        self._pending.clear()
        self._encoder.reset_state()
