"""The shipped wheel holds the server and nothing else: no benchmark, no harness, no tests.

The wheel is really built (setuptools, offline, no build isolation: the venv already has
setuptools), then read as the zip it is, so the test sees exactly what `pip install .` installs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Everything at the top of the checkout that could end up in a wheel if the package discovery
# were wrong: the test proves it does not.
TREE = ("server", "bench", "harness", "plugins", "tests", "scripts", "docs")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy of the checkout (as git sees it, caches left out): setuptools writes its
    # build/ scratch beside the sources, which must not land in the working tree.
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns(".*", "__pycache__", "*.pyc", "*.egg-info", "build", "data", "models")
    for entry in ROOT.iterdir():
        if entry.name in TREE or entry.name in ("pyproject.toml", "README.md", "performance_tester.py"):
            copy = shutil.copytree if entry.is_dir() else shutil.copy2
            copy(entry, src / entry.name, **({"ignore": ignore} if entry.is_dir() else {}))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-q", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (found,) = out.glob("xiaozhi_voice_server-*.whl")
    return found


def test_wheel_holds_only_the_server(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert top - dist_info == {"server"}, sorted(top)
    # Every module of the server is in it, namespace packages (server/config) included.
    on_disk = {str(p.relative_to(ROOT)) for p in (ROOT / "server").rglob("*.py")}
    assert on_disk <= set(names), sorted(on_disk - set(names))


def test_installed_wheel_imports_from_its_own_copy(wheel: Path, tmp_path: Path) -> None:
    """`pip install .` works: the wheel installs, and the installed copy (not this checkout)
    validates the shipped config."""
    target = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check", "-q",
         "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The built-in plugins live beside the checkout, not in the wheel: this config enables none.
    override = tmp_path / "no-plugins.yaml"
    names = [p.stem for p in (ROOT / "plugins").glob("*.py") if not p.name.startswith("_")]
    override.write_text("plugins: {" + ", ".join(f"{name}: {{enabled: false}}" for name in names) + "}\n")
    script = ("import server, server.app, server.plugin_api, server.config.loader as loader; "
              f"assert server.__file__.startswith({str(target)!r}), server.__file__; "
              f"loader.load_config(override={str(override)!r}, base={str(ROOT / 'config.yaml')!r}); print('ok')")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_wheel_metadata_keeps_the_benchmark_optional(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = zf.read(meta_name).decode()
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    matplotlib = [r for r in requires if r.lower().startswith("matplotlib")]
    assert matplotlib and all("extra == \"bench\"" in r for r in matplotlib), matplotlib
