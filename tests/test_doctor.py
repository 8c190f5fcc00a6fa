"""`python -m server --doctor`: checks the system pieces for real and names the fix for what is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def doctor(env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server", "--doctor", "--port", "0", "--http-port", "0"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, env=env)


def test_doctor_passes_on_an_installed_machine() -> None:
    proc = doctor()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("libopus", "mp3", "llama.cpp", "espeak-ng", "llm.llama_cpp.model", "tts.piper.voice"):
        assert any(line.split()[:2] == ["ok", name] for line in proc.stdout.splitlines()), (name, proc.stdout)
    assert "all checks passed" in proc.stdout


def test_doctor_names_what_is_missing_and_how_to_install_it(tmp_path: Path) -> None:
    # A PATH with python but without espeak-ng: the tests' speech tool is "missing".
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = {**os.environ, "PATH": str(bin_dir)}
    proc = doctor(env)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    i = next(i for i, line in enumerate(lines) if line.split()[:2] == ["MISSING", "espeak-ng"])
    assert "(tests and benchmarks)" in lines[i] and "apt-get install espeak-ng" in lines[i + 1]
    assert "1 problem(s) found" in proc.stdout
