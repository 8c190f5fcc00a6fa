"""Real test speech from espeak-ng, as PCM16 mono 16 kHz (what the device's microphone path
feeds its Opus encoder).

Synthesis costs a subprocess per utterance, and test suites and benchmarks ask for the same
sentences over and over, so results are cached twice: in a process-wide dict, and on disk as WAV
files (keyed by a hash of text, voice and rate) so later runs skip espeak entirely. The WAV files
can be listened to, which helps when an ASR test fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from server.audio.pcm import read_wav, resample, write_wav

SAMPLE_RATE = 16000
# Anchored at the repository root, not the working directory, so pytest and the benchmark
# share one cache wherever they are started from.
DEFAULT_CACHE_DIR = Path(__file__).resolve().parents[2] / "data" / "cache" / "speech"
# Module-level so tests (and unusual installs) can point it elsewhere.
ESPEAK_BINARY = "espeak-ng"
# Bump when the synthesis recipe changes, so stale cache files are not reused.
_CACHE_VERSION = "1"

_memory_cache: dict[str, bytes] = {}


class SpeechSynthesisError(RuntimeError):
    """espeak-ng failed (unknown voice, bad output, ...)."""


class EspeakNotFound(SpeechSynthesisError):
    """espeak-ng is not installed or not on PATH."""


def cache_key(text: str, voice: str, rate_wpm: int) -> str:
    blob = "\0".join((_CACHE_VERSION, voice, str(rate_wpm), text)).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:32]


def clear_memory_cache() -> None:
    _memory_cache.clear()


def silence(ms: float, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Digital silence of `ms` milliseconds (PCM16 mono)."""
    return b"\x00\x00" * int(round(sample_rate * ms / 1000))


def pad(pcm: bytes, before_ms: float = 0, after_ms: float = 0, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Surround speech with silence, e.g. to give a server VAD a clean onset and end."""
    return silence(before_ms, sample_rate) + pcm + silence(after_ms, sample_rate)


def duration_ms(pcm: bytes, sample_rate: int = SAMPLE_RATE) -> float:
    return len(pcm) / 2 / sample_rate * 1000


async def synthesize_speech(
    text: str,
    voice: str = "en-us",
    rate_wpm: int = 150,
    *,
    cache_dir: str | os.PathLike[str] | None = DEFAULT_CACHE_DIR,
) -> bytes:
    """Speak `text` with espeak-ng and return PCM16 mono at 16 kHz.

    `voice` is an espeak-ng voice name (`en-us`, `cmn` for Mandarin, ...). `cache_dir=None`
    disables the disk cache (the in-process cache is always used).
    Raises EspeakNotFound if espeak-ng is missing, SpeechSynthesisError on any other failure.
    """
    if not text.strip():
        raise ValueError("cannot synthesize empty text")
    key = cache_key(text, voice, rate_wpm)
    cached = _memory_cache.get(key)
    if cached is not None:
        return cached

    path = Path(cache_dir) / f"{key}.wav" if cache_dir is not None else None
    if path is not None and path.is_file():
        pcm = await asyncio.to_thread(_load_cached, path)
        if pcm is not None:
            _memory_cache[key] = pcm
            return pcm

    wav = await _run_espeak(text, voice, rate_wpm)
    # Decoding, resampling (soxr) and the file write are CPU/disk work: keep them off the loop.
    pcm = await asyncio.to_thread(_to_16k, wav)
    if len(pcm) < 2:
        raise SpeechSynthesisError(f"espeak-ng produced no audio for {text!r} (voice {voice!r})")
    if path is not None:
        await asyncio.to_thread(_store_cached, path, pcm)
    _memory_cache[key] = pcm
    return pcm


async def _run_espeak(text: str, voice: str, rate_wpm: int) -> bytes:
    binary = shutil.which(ESPEAK_BINARY)
    if binary is None:
        raise EspeakNotFound(
            f"{ESPEAK_BINARY} not found on PATH: install it (Debian/Ubuntu: 'apt-get install espeak-ng', "
            "macOS: 'brew install espeak-ng') to generate test speech")
    # espeak-ng's --stdout WAV header carries a bogus streaming length, so let it write a real
    # file. The text is a command-line argument (with stdin or -f espeak silently falls back to
    # the default voice when the voice is unknown); the leading space keeps a text starting
    # with '-' from being read as an option.
    with tempfile.TemporaryDirectory(prefix="devsim-speech-") as tmp:
        out = Path(tmp) / "speech.wav"
        proc = await asyncio.create_subprocess_exec(
            binary, "-v", voice, "-s", str(rate_wpm), "-b", "1", "-w", str(out), " " + text,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _stdout, stderr = await proc.communicate()
        message = stderr.decode("utf-8", "replace").strip()
        # espeak-ng exits 0 for some errors (it only prints them), so check stderr as well.
        if proc.returncode != 0 or "Error" in message or not out.is_file():
            raise SpeechSynthesisError(
                f"espeak-ng failed for voice {voice!r} (exit {proc.returncode}): {message or 'no output'}")
        return await asyncio.to_thread(out.read_bytes)


def _to_16k(wav: bytes) -> bytes:
    try:
        pcm, rate = read_wav(wav)
    except Exception as exc:  # wave.Error, EOFError, ValueError: all mean "not a usable WAV"
        raise SpeechSynthesisError(f"espeak-ng wrote an unreadable WAV: {exc}") from None
    return resample(pcm, rate, SAMPLE_RATE)


def _load_cached(path: Path) -> bytes | None:
    try:
        pcm, rate = read_wav(str(path))
    except Exception:
        return None  # a truncated or foreign file: synthesize again and overwrite it
    return pcm if rate == SAMPLE_RATE and pcm else None


def _store_cached(path: Path, pcm: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a concurrent reader (parallel test workers) never sees half a file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(write_wav(pcm, SAMPLE_RATE))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
