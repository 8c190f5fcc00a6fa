"""MP3 -> PCM16 mono, in-process and incremental (FFmpeg's decoder through PyAV).

Cloud TTS services (EdgeTTS) stream MP3. The reference server collected a whole sentence and ran
an ffmpeg subprocess per sentence; here bytes are fed as they arrive and PCM comes out as soon as
whole MP3 frames are in, so the first audio reaches the device before the sentence is finished.

PyAV's `CodecContext.parse()` buffers partial frames across calls (a network chunk may end in the
middle of a frame) and `decode()` keeps the bit reservoir between frames, which a per-chunk
decoder could not. PyAV comes with faster-whisper; it is imported on first use.

The decoder is CPU work: call `feed`/`flush` off the event loop (`Provider.run_blocking`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# ID3v2 tags (title, cover art) precede the audio in music files. Their bytes can contain MP3
# sync patterns, so they are skipped before the parser sees them rather than decoded as noise.
_ID3_HEADER = 10


class Mp3DecodeError(ValueError):
    pass


class Mp3StreamDecoder:
    """Feed MP3 bytes in any chunking; get PCM16 mono at `sample_rate` (known after the first
    decoded frame, None before). Not thread-safe: one stream, one caller at a time."""

    def __init__(self) -> None:
        self.sample_rate: int | None = None
        self.channels: int | None = None
        self.frames = 0  # MP3 frames decoded
        self.errors = 0  # damaged frames skipped
        self._ctx: Any = None
        self._pending = b""  # the first bytes, until we know whether an ID3 tag is there
        self._skip = 0  # ID3 bytes still to drop
        self._probing = True  # looking at the first bytes for an ID3 tag
        self._resampler: Any = None  # only if the rate changes mid-stream

    # ------------------------------------------------------------------ public

    def feed(self, data: bytes) -> bytes:
        """Decode what `data` completes; return the PCM16 mono bytes ready so far (may be b"")."""
        data = self._strip_id3(data)
        if not data:
            return b""
        return self._decode(self._codec().parse(data))

    def flush(self) -> bytes:
        """End of stream: decode the buffered tail. The decoder cannot be fed afterwards."""
        if self._pending:  # a stream shorter than an ID3 header: let the parser judge it
            data, self._pending = self._pending, b""
            out = self._decode(self._codec().parse(data))
        else:
            out = b""
        if self._ctx is None:
            return out
        out += self._decode(self._ctx.parse(None))
        out += self._decode([None])  # drain the decoder itself
        return out

    # ------------------------------------------------------------------ internals

    def _codec(self) -> Any:
        if self._ctx is None:
            import av

            # "mp3" is FFmpeg's fixed-point decoder: it outputs s16 directly.
            self._ctx = av.CodecContext.create("mp3", "r")
        return self._ctx

    def _strip_id3(self, data: bytes) -> bytes:
        while True:
            if self._skip:
                n = min(self._skip, len(data))
                self._skip -= n
                data = data[n:]
                if self._skip:
                    return b""
                self._probing = True  # files re-tagged by several tools can carry two tags
            if not self._probing:
                return data
            self._pending += data
            if len(self._pending) < _ID3_HEADER:
                return b""
            data, self._pending = self._pending, b""
            if data[:3] != b"ID3":
                self._probing = False
                return data
            self._skip = _syncsafe(data[6:10]) + _ID3_HEADER * (2 if data[5] & 0x10 else 1)  # + footer

    def _decode(self, packets: Any) -> bytes:
        import av

        out: list[bytes] = []
        for packet in packets:
            try:
                frames = self._ctx.decode(packet)
            except av.error.FFmpegError:
                # A damaged frame (network glitch, junk between frames): skip it, keep the stream.
                self.errors += 1
                continue
            for frame in frames:
                pcm = self._frame_pcm(frame)
                if pcm:
                    out.append(pcm)
        return b"".join(out)

    def _frame_pcm(self, frame: Any) -> bytes:
        samples = _to_mono_int16(frame)
        if samples.size == 0:
            return b""
        self.frames += 1
        rate = int(frame.sample_rate)
        if self.sample_rate is None:
            self.sample_rate = rate
            self.channels = len(frame.layout.channels)
        elif rate != self.sample_rate:
            # Concatenated files with different rates: keep one output rate for the consumer.
            from server.audio.pcm import StreamResampler

            if self._resampler is None or self._resampler.src_rate != rate:
                self._resampler = StreamResampler(rate, self.sample_rate)
            return self._resampler.process(samples.tobytes())
        return samples.tobytes()


def _syncsafe(b: bytes) -> int:
    return (b[0] & 0x7F) << 21 | (b[1] & 0x7F) << 14 | (b[2] & 0x7F) << 7 | (b[3] & 0x7F)


def _to_mono_int16(frame: Any) -> np.ndarray:
    arr = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:
        # Packed formats come as one row of interleaved samples.
        arr = arr.reshape(-1, channels).T
    if arr.dtype.kind == "f":
        arr = np.clip(arr, -1.0, 1.0) * 32767.0
    arr = arr.astype(np.float32).mean(axis=0) if channels > 1 else arr[0]
    return np.asarray(arr).astype(np.int16, copy=False)


def decode_mp3(data: bytes) -> tuple[bytes, int]:
    """A whole MP3 file (bytes) -> (PCM16 mono, sample rate). Raises Mp3DecodeError if no audio."""
    decoder = Mp3StreamDecoder()
    pcm = decoder.feed(data) + decoder.flush()
    if not pcm or decoder.sample_rate is None:
        raise Mp3DecodeError(f"no MP3 audio found in {len(data)} bytes ({decoder.errors} damaged frames)")
    return pcm, decoder.sample_rate
