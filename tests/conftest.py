"""Shared fixtures: the real server in a child process, and a Whisper model to check replies."""

from __future__ import annotations

import difflib
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest

from harness.devsim import SimDevice, synthesize_speech
from harness.devsim.server_process import ServerProcess, start_server

# Deterministic-ish answers from the tiny model, so failures are reproducible.
TEST_OVERRIDES: dict[str, Any] = {"llm": {"temperature": 0.0}}


@pytest.fixture(scope="session")
async def server() -> AsyncIterator[ServerProcess]:
    """The embedded offline stack, started once for the whole run."""
    async with start_server(TEST_OVERRIDES) as proc:
        yield proc


@pytest.fixture(scope="session")
def whisper() -> Any:
    from faster_whisper import WhisperModel

    from server.providers.asr.faster_whisper import bundled_model_dir

    return WhisperModel(str(bundled_model_dir()), device="cpu", compute_type="int8", cpu_threads=1)


def transcribe(model: Any, pcm: bytes, rate: int) -> str:
    from server.audio.pcm import resample

    audio = np.frombuffer(resample(pcm, rate, 16000), dtype=np.int16).astype(np.float32) / 32768
    segments, _ = model.transcribe(audio, language="en", beam_size=1)
    return "".join(s.text for s in segments).strip()


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, words(a), words(b)).ratio()


def matches_subtitles(heard: str, sentences: list[str]) -> bool:
    """Does the transcribed reply audio start with the first subtitle? Numbers are left out of
    the comparison: the TTS reads "380000" as words, which Whisper writes either way. Words or
    letters may match: tiny.en mishears words more often than sounds ("that spider has" came
    back as "that's better as": 1 word in 3, 65 % of the letters; another reply's opening
    shares 25-40 % of its letters)."""
    def plain(text: str) -> list[str]:
        return [w for w in words(text) if not any(ch.isdigit() for ch in w)]

    for sentence in sentences:
        target = plain(sentence)
        if len(target) >= 2:
            prefix = plain(heard)[: len(target) + 2]
            by_words = difflib.SequenceMatcher(None, prefix, target).ratio()
            by_letters = difflib.SequenceMatcher(None, " ".join(prefix[: len(target)]), " ".join(target)).ratio()
            return by_words > 0.5 or by_letters >= 0.6
    return True  # nothing comparable (a reply made of numbers): the speech check stands alone


@pytest.fixture
async def device(server: ServerProcess) -> AsyncIterator[SimDevice]:
    dev = SimDevice()
    await dev.ota(server.http_url)
    await dev.connect()
    try:
        yield dev
    finally:
        await dev.close()


async def http_get(url: str) -> tuple[int, bytes]:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as r:
        return r.status, await r.read()


async def http_json(url: str) -> Any:
    import json

    status, body = await http_get(url)
    assert status == 200, (url, status, body[:200])
    return json.loads(body)


async def speech(text: str) -> bytes:
    return await synthesize_speech(text)


# ---------------------------------------------------------------- fleet engines (harness/fleet)


# Plain (not async) fixtures: async fixtures may ask for them with request.getfixturevalue.
@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """A real PostgreSQL on a free 127.0.0.1 port for the whole run; tests take fresh databases."""
    from harness.fleet.engines import postgres_cluster

    with postgres_cluster() as pg:
        yield pg


@pytest.fixture(scope="session")
def redis_engine() -> Iterator[Any]:
    from harness.fleet.engines import redis_server

    with redis_server() as redis:
        yield redis


async def redis_url_for(request: pytest.FixtureRequest) -> str:
    """For fixtures parametrised over "postgresql" / "redis": the Redis URL (emptied first) when the
    parameter is redis, else "" (leases and the bus on PostgreSQL)."""
    if request.param != "redis":
        return ""
    url = request.getfixturevalue("redis_engine").url
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)
    await client.flushdb()
    await client.aclose()
    return url
