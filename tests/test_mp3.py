"""The streaming MP3 decoder on real MP3s: espeak-ng speech encoded by LAME (through PyAV)."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from harness.audio_files import encode_pcm
from server.audio.mp3 import Mp3DecodeError, Mp3StreamDecoder, decode_mp3
from server.audio.pcm import read_wav, resample

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                reason="needs espeak-ng (scripts/install.sh)")

TEXT = "Hello, this is a test of the streaming decoder. One two three four five."
# LAME delays the signal by 576 samples and FFmpeg's decoder by 529 more; with no LAME tag in the
# file (Edge sends none, and encode_pcm writes none) nothing can trim that, so the decoded audio
# is the source shifted by it.
# At the end LAME pads the last frame, plus up to one more frame to flush its filter bank.
CODEC_DELAY = 576 + 529


def padding_ok(decoded: int, source: int, frame: int) -> bool:
    return 0 <= decoded - CODEC_DELAY - source < 2 * frame


def make_mp3(tmp: Path, rate: int, kbps: int, channels: int = 1) -> tuple[bytes, np.ndarray]:
    """(MP3 bytes, the source PCM resampled to `rate`) for espeak-ng speaking TEXT."""
    wav = tmp / "speech.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(wav), TEXT], check=True, capture_output=True)
    pcm, src_rate = read_wav(wav.read_bytes())
    mp3 = encode_pcm(pcm, src_rate, "mp3", out_rate=rate, channels=channels, kbps=kbps)
    return mp3, np.frombuffer(resample(pcm, src_rate, rate), np.int16)


@pytest.fixture(scope="module")
def edge_like(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, np.ndarray]:
    # What Edge sends: MPEG-2 layer III, 24 kHz mono, 48 kbit/s (576-sample frames).
    return make_mp3(tmp_path_factory.mktemp("mp3"), 24000, 48)


def feed_in_chunks(data: bytes, sizes: list[int]) -> tuple[bytes, Mp3StreamDecoder, int]:
    decoder = Mp3StreamDecoder()
    out, i, empty = [], 0, 0
    rng = random.Random(7)
    while i < len(data):
        n = rng.choice(sizes)
        pcm = decoder.feed(data[i:i + n])
        empty += not pcm
        out.append(pcm)
        i += n
    out.append(decoder.flush())
    return b"".join(out), decoder, empty


@pytest.mark.parametrize("sizes", [[1], [7, 13, 333], [1, 100, 1001, 4096], [10_000_000]])
def test_chunked_feeding_equals_whole_file_decoding(edge_like: tuple[bytes, np.ndarray], sizes: list[int]) -> None:
    data, _ = edge_like
    whole, rate = decode_mp3(data)
    streamed, decoder, _ = feed_in_chunks(data, sizes)
    assert rate == decoder.sample_rate == 24000 and decoder.channels == 1
    assert streamed == whole
    assert decoder.errors == 0


def test_pcm_comes_out_while_feeding(edge_like: tuple[bytes, np.ndarray]) -> None:
    data, _ = edge_like
    decoder = Mp3StreamDecoder()
    assert decoder.sample_rate is None and decoder.feed(b"") == b""
    first = decoder.feed(data[:2048])  # ~8 frames of 144 bytes
    assert len(first) >= 2 * 576 * 4 and decoder.sample_rate == 24000


def test_duration_and_content_match_the_source(edge_like: tuple[bytes, np.ndarray]) -> None:
    data, source = edge_like
    pcm, rate = decode_mp3(data)
    out = np.frombuffer(pcm, np.int16).astype(np.float64)
    src = source.astype(np.float64)
    # Same length as the source once the fixed codec delay is off, give or take the final padding.
    assert padding_ok(len(out), len(src), 576), (len(out), len(src))
    # And the same signal: the cross-correlation peaks at the codec delay.
    n = 1 << int(np.ceil(np.log2(len(out) + len(src))))
    corr = np.fft.irfft(np.fft.rfft(out, n) * np.conj(np.fft.rfft(src, n)), n)
    lag = int(np.argmax(corr))
    assert abs(lag - CODEC_DELAY) <= 2, lag
    aligned = out[lag:lag + len(src)]
    assert np.corrcoef(aligned, src[:len(aligned)])[0, 1] > 0.98
    # Speech, not silence.
    assert np.sqrt(np.mean(out ** 2)) > 500


def test_an_independent_decoder_agrees(edge_like: tuple[bytes, np.ndarray]) -> None:
    miniaudio = pytest.importorskip("miniaudio")
    data, _ = edge_like
    pcm, rate = decode_mp3(data)
    ref = miniaudio.decode(data, output_format=miniaudio.SampleFormat.SIGNED16, nchannels=1, sample_rate=rate)
    theirs = np.asarray(ref.samples, dtype=np.float64)
    ours = np.frombuffer(pcm, np.int16).astype(np.float64)
    assert len(theirs) == len(ours)
    assert np.corrcoef(theirs, ours)[0, 1] > 0.999


def test_stereo_44k_music_file_is_downmixed(tmp_path: Path) -> None:
    data, source = make_mp3(tmp_path, 44100, 128, channels=2)
    decoder = Mp3StreamDecoder()
    pcm = decoder.feed(data) + decoder.flush()
    assert decoder.channels == 2 and decoder.sample_rate == 44100
    out = np.frombuffer(pcm, np.int16)
    assert padding_ok(len(out), len(source), 1152), (len(out), len(source))  # MPEG-1: 1152-sample frames
    assert np.sqrt(np.mean(out.astype(np.float64) ** 2)) > 500


def test_id3_tag_is_skipped_even_across_chunks(edge_like: tuple[bytes, np.ndarray]) -> None:
    data, _ = edge_like
    # A 4 KB tag whose body is full of MP3 sync words (as cover art can be).
    body = b"\xff\xfb\x90\x64" * 1024
    size = len(body)
    syncsafe = bytes([(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F])
    tagged = b"ID3\x04\x00\x00" + syncsafe + body + data
    whole, _ = decode_mp3(data)
    streamed, decoder, _ = feed_in_chunks(tagged, [3, 500])
    assert streamed == whole and decoder.errors == 0


def test_damaged_bytes_are_skipped_not_fatal(edge_like: tuple[bytes, np.ndarray]) -> None:
    data, _ = edge_like
    mid = len(data) // 2
    damaged = data[:mid] + bytes(random.Random(1).randrange(256) for _ in range(700)) + data[mid + 700:]
    pcm, _ = decode_mp3(damaged)
    whole, _ = decode_mp3(data)
    assert abs(len(pcm) - len(whole)) < len(whole) // 10


def test_not_mp3_raises() -> None:
    with pytest.raises(Mp3DecodeError):
        decode_mp3(b"RIFF....WAVEfmt " + bytes(4000))
    with pytest.raises(Mp3DecodeError):
        decode_mp3(b"")
