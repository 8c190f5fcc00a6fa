"""Console (and optional file) logging in one readable format."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path


def setup_logging(level: str = "INFO", file: Path | None = None) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.handlers.clear()
    console = logging.StreamHandler()
    console.setFormatter(fmt)
    root.addHandler(console)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(file, maxBytes=10_000_000, backupCount=3, encoding="utf-8")
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(level)
    # Library chatter that is noise at INFO.
    for name in ("websockets", "aiohttp.access", "faster_whisper", "httpx", "httpx2", "httpcore", "mcp", "asyncio",
                 "openai", "modelscope", "funasr"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
