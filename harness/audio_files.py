"""Real audio files for tests and fakes, encoded in-process with PyAV (FFmpeg: LAME for MP3,
FLAC, Vorbis), so nothing needs sox or its MP3 plugin (`libsox-fmt-mp3`, missing on a fresh
Debian machine, failed 29 tests there).

`encode_pcm()` writes PCM16 at any rate and channel count into a container. MP3 comes out the
way Edge sends it and sox wrote it: bare MPEG frames, no ID3 tag and no Xing/LAME info frame
(so no decoder can trim the encoder delay: the decoded audio is the source shifted by it).
"""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np

# container format, codec, sample format per kind; options keep MP3 bare (see above).
_FORMATS = {
    "mp3": ("mp3", "libmp3lame", "s16p", {"write_xing": "0", "id3v2_version": "0", "write_id3v1": "0"}),
    "flac": ("flac", "flac", "s16", {}),
    "ogg": ("ogg", "vorbis", "fltp", {}),
    "wav": ("wav", "pcm_s16le", "s16", {}),
}


def encode_pcm(pcm: bytes, rate: int, kind: str = "mp3", *, out_rate: int | None = None, channels: int = 1,
               kbps: int = 48) -> bytes:
    """PCM16 mono at `rate` -> a `kind` file (mp3, flac, ogg, wav) at `out_rate` (default: the
    same) with `channels` (mono is duplicated for stereo; ogg is always stereo). CPU work: call it off the event loop
    in async code (`asyncio.to_thread`)."""
    import av

    container_format, codec, sample_format, options = _FORMATS[kind]
    if kind == "ogg":
        channels = 2  # FFmpeg's own Vorbis encoder writes stereo only
    out_rate = out_rate or rate
    samples = np.frombuffer(pcm, np.int16)
    if out_rate != rate:
        from server.audio.pcm import resample

        samples = np.frombuffer(resample(pcm, rate, out_rate), np.int16)
    layout = "mono" if channels == 1 else "stereo"
    buf = io.BytesIO()
    with av.open(buf, "w", format=container_format, options=options) as out:
        stream = out.add_stream(codec, rate=out_rate, layout=layout)
        if kind == "ogg":
            # FFmpeg's own Vorbis encoder (PyAV's wheels carry no libvorbis) is marked experimental.
            stream.codec_context.options = {"strict": "experimental"}
        if kind == "mp3":
            stream.bit_rate = kbps * 1000
        frame_size = 1152
        planar = np.tile(samples, (channels, 1))
        pts = 0
        for start in range(0, len(samples), frame_size):
            block = np.ascontiguousarray(planar[:, start:start + frame_size])
            frame = av.AudioFrame.from_ndarray(block, format="s16p", layout=layout)
            frame.sample_rate = out_rate
            frame.pts = pts
            frame.time_base = Fraction(1, out_rate)
            pts += block.shape[1]
            if sample_format != "s16p":
                frame = _convert(frame, sample_format, layout, out_rate)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def _convert(frame, sample_format: str, layout: str, rate: int):  # noqa: ANN001, ANN202 - av objects
    import av

    resampler = av.AudioResampler(format=sample_format, layout=layout, rate=rate)
    converted = resampler.resample(frame)
    out = converted[0]
    out.pts = frame.pts
    return out


def tone(seconds: float, rate: int, hz: float = 440.0, amplitude: int = 8000) -> bytes:
    """A sine tone as PCM16 mono (for test songs that need no speech)."""
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.int16).tobytes()
