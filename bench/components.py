"""Component benchmarks: each configured provider, loaded in this process exactly as the server
loads it (registry + validated settings), measured on its own.

A provider that cannot load, or fails part-way, is reported as failed with its error and the next
component still runs: one broken API key must not hide the other three figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.console import Console
from server.config.schema import AppConfig
from server.providers.base import ProviderContext, ProviderSettings
from server.providers.registry import build_provider

KINDS = ("vad", "asr", "llm", "tts")

ProviderFactory = Callable[[str, ProviderSettings, ProviderContext], Any]


@dataclass(slots=True)
class ComponentOptions:
    """Sizes of the test sets; None means the whole built-in set."""

    languages: tuple[str, ...] = ("en", "zh")  # ASR and VAD test speech
    vad_per_language: int | None = None
    asr_per_language: int | None = None
    testset_dir: str | None = None  # user WAV + transcript pairs
    llm_prompts: int | None = None
    llm_timeout_s: float = 30.0
    tts_sentences: int | None = None


@dataclass
class ComponentReport:
    kind: str
    provider: str = ""
    # Name in the report: the kind, or "kind[provider]" for the 2nd, 3rd... of a fallback chain.
    key: str = ""
    status: str = "running"  # ok | failed | interrupted
    error: str | None = None
    load_s: float | None = None
    warmup_s: float | None = None  # first call after loading (allocations, prompt cache), untimed below
    summary: dict[str, Any] = field(default_factory=dict)
    items: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


Measure = Callable[[Any, AppConfig, ComponentOptions, Console, ComponentReport], Awaitable[None]]


def _measurers() -> dict[str, Measure]:
    # Imported here so that `--compare` never imports numpy-heavy measurement code.
    from bench.asr import measure_asr
    from bench.llm import measure_llm
    from bench.tts import measure_tts
    from bench.vad import measure_vad

    return {"vad": measure_vad, "asr": measure_asr, "llm": measure_llm, "tts": measure_tts}


def provider_context(config: AppConfig, root: Path) -> ProviderContext:
    return ProviderContext(root_dir=root, data_dir=root / config.data_dir, models_dir=root / config.models_dir,
                           output_sample_rate=config.audio_out.sample_rate)


def configured(config: AppConfig, kind: str) -> list[ProviderSettings]:
    """The providers of a kind: one, or each member of a fallback chain (`tts: [edge, piper]`),
    measured separately so the table shows what each would cost."""
    settings = config.provider(kind)
    return list(settings) if isinstance(settings, list) else [settings]


async def run_components(config: AppConfig, root: Path, kinds: Sequence[str], options: ComponentOptions,
                         console: Console, reports: list[ComponentReport],
                         factory: ProviderFactory = build_provider) -> list[ComponentReport]:
    """Measure each provider in turn, appending to `reports` as it goes (so an interrupted run
    keeps what was measured). Providers are loaded one at a time and closed afterwards, which
    keeps the models from competing for the CPU and memory of a small machine."""
    measurers = _measurers()
    ctx = provider_context(config, root)
    for kind in kinds:
        for index, settings in enumerate(configured(config, kind)):
            report = ComponentReport(kind, key=kind)
            reports.append(report)
            await _measure_one(kind, index, settings, config, options, console, report, ctx, factory,
                               measurers[kind])
    return reports


async def _measure_one(kind: str, index: int, settings: ProviderSettings, config: AppConfig,
                       options: ComponentOptions, console: Console, report: ComponentReport,
                       ctx: ProviderContext, factory: ProviderFactory, measure: Measure) -> None:
    provider: Any = None
    try:
        provider = factory(kind, settings, ctx)
        report.provider = getattr(provider, "name", kind)
        if index:
            report.key = f"{kind}[{report.provider}]"
        if kind == "llm" and hasattr(provider, "language"):
            provider.language = config.assistant.language  # as build_services does
        console.log(f"{kind}: loading {report.provider}")
        t0 = time.perf_counter()
        await provider.load()
        report.load_s = round(time.perf_counter() - t0, 2)
        await measure(provider, config, options, console, report)
        failed = [i for i in report.items if i.get("error")]
        if report.items and len(failed) == len(report.items):
            report.status, report.error = "failed", f"every item failed; first: {failed[0]['error']}"
        else:
            report.status = "ok"
    except asyncio.CancelledError:
        report.status = "interrupted"
        raise
    except Exception as exc:  # noqa: BLE001 - any provider failure is a result, not a crash
        report.status, report.error = "failed", describe_error(exc)
        console.log(f"{kind}: FAILED: {report.error}")
    finally:
        if provider is not None:
            with contextlib.suppress(Exception):
                await provider.close()


def describe_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def timed_item(report: ComponentReport, item: dict[str, Any], coro: Awaitable[None]) -> dict[str, Any]:
    """Run one measurement; an exception becomes the item's error and the loop goes on."""
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001
        item["error"] = describe_error(exc)
    report.items.append(item)
    return item
