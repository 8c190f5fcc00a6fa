"""Opus packets of silence, for the quiet tail a reply ends with before `tts stop`.

Clients written for the reference server hold back part of what they receive (the browser page
plays only in 120 ms blocks once 240 ms are decoded, so up to 240 ms of the end wait for more
audio) and clear everything on `tts stop`. A short tail of silence pushes the real end of the
reply through their buffers; the firmware simply plays it. Encoded once per format per process.
"""

from __future__ import annotations

import functools

from server.audio.opus import OpusEncoder


@functools.lru_cache(maxsize=8)
def _silence(sample_rate: int, frame_ms: int, bitrate: int, frames: int) -> tuple[bytes, ...]:
    encoder = OpusEncoder(sample_rate=sample_rate, frame_ms=frame_ms, bitrate=bitrate, complexity=0)
    return tuple(encoder.encode(b"\x00\x00" * encoder.frame_samples * frames))


def silence_frames(duration_ms: int, *, sample_rate: int, frame_ms: int, bitrate: int) -> tuple[bytes, ...]:
    """At least `duration_ms` of silence as Opus packets of `frame_ms` (empty for 0)."""
    if duration_ms <= 0:
        return ()
    frames = -(-duration_ms // frame_ms)
    return _silence(sample_rate, frame_ms, bitrate, frames)
