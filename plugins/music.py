"""Playing songs from a local folder: fuzzy title matching (Chinese and English), a random pick,
and the list of songs.

Files are decoded by miniaudio (mp3, wav, flac, ogg/vorbis) a fraction of a second at a time in a
worker thread, so neither a long song nor a slow disk ever blocks the event loop, and nothing
but the current chunk is held in memory. The session pulls the chunks as it paces the audio
out; when the user interrupts, it closes the iterator and the decoder (and its open file) is
released.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import os
import random
import re
import threading
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import miniaudio
from pydantic import BaseModel, ConfigDict, Field

from server.plugin_api import PlayAudio, ToolContext, ToolResult, settings_of, tool, tr

log = logging.getLogger("plugins.music")


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Folder with the songs (searched recursively). Relative paths start at the server's working
    # directory. Empty: ctx.extras["music_dir"] if the server sets it, else "music".
    music_dir: str = ""
    extensions: list[str] = Field(default_factory=lambda: [".mp3", ".wav", ".flac", ".ogg"])
    # Length of the PCM chunks handed to the session.
    chunk_ms: int = Field(default=250, ge=20, le=2000)
    # Songs listed to the model at most (list_music, "not found" hints).
    max_list: int = Field(default=30, ge=1, le=500)
    # A title must be at least this similar (0..1) to count as a match.
    min_score: float = Field(default=0.5, gt=0, le=1)


@dataclass(slots=True, frozen=True)
class Song:
    path: Path
    title: str  # file name without extension, as shown to the user


def scan(folder: Path, extensions: list[str]) -> list[Song]:
    """All playable files under `folder` (blocking: run it in a thread)."""
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    songs: list[Song] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            p = Path(root) / f
            if p.suffix.lower() in exts and not f.startswith("."):
                songs.append(Song(p, p.stem))
    return songs


_TRACK_NO = re.compile(r"^\s*\d{1,3}\s*([.\-_、)]\s*|\s+)")
_FILLER_HEAD = re.compile(r"^(请|帮我|给我)?(播放|放一首|放首|放一下|来一首|来首|唱一首)"
                          r"|^(我想听|我要听|想听|听一下)"
                          r"|^(please\s+)?(play|put on)\s+(the\s+)?(song\s+)?", re.IGNORECASE)
_FILLER_TAIL = re.compile(r"(这首歌|这首|的歌曲|的歌|歌曲|吧|呗)$|\s+(song|please)$", re.IGNORECASE)


def normalize(text: str) -> str:
    """Comparable form of a title: full-width folded, lower case, no punctuation or spaces."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(ch for ch in text if ch.isalnum())


def _title_keys(title: str) -> list[str]:
    """Normalized forms a song can be asked for by: the whole name, without a track number,
    without bracketed parts, and each side of "artist - title"."""
    keys = {title, _TRACK_NO.sub("", title)}
    for k in list(keys):
        keys.add(re.sub(r"[(\[（【].*?[)\]）】]", "", k))
    for k in list(keys):
        for sep in (" - ", "-", "–", "_"):
            if sep in k:
                keys.update(part for part in k.split(sep))
    return [n for n in (normalize(k) for k in keys) if n]


def clean_query(query: str) -> str:
    q = unicodedata.normalize("NFKC", query).strip()
    q = q.strip("《》\"'“”「」 ")
    q = _FILLER_HEAD.sub("", q).strip()
    q = _FILLER_TAIL.sub("", q).strip()
    return normalize(q.strip("《》\"'“”「」 "))


def score(query: str, song: Song) -> float:
    """Similarity of an already cleaned query to a song, 0..1."""
    best = 0.0
    for key in _title_keys(song.title):
        if query == key:
            return 1.0
        if len(query) >= 2 and (query in key or key in query):
            # Containment is strong evidence; prefer the closer length.
            best = max(best, 0.8 + 0.2 * min(len(query), len(key)) / max(len(query), len(key)))
        else:
            best = max(best, difflib.SequenceMatcher(None, query, key).ratio())
    return best


def find_song(songs: list[Song], query: str, min_score: float) -> Song | None:
    q = clean_query(query)
    if not q or not songs:
        return None
    ranked = sorted(((score(q, s), s) for s in songs), key=lambda x: -x[0])
    top_score, top = ranked[0]
    return top if top_score >= min_score else None


def _is_random(query: str) -> bool:
    q = clean_query(query)
    return q in {"", "随便", "随机", "随便一首", "随便放", "音乐", "歌", "一首歌", "random", "anything",
                 "something", "music", "asong", "anysong", "randomsong", "some"}


async def pcm_chunks(path: Path, sample_rate: int, chunk_ms: int) -> AsyncIterator[bytes]:
    """PCM16 mono chunks of `path`, decoded in a worker thread one chunk at a time.

    Closing the iterator (or cancelling its consumer) releases the decoder. A chunk may still be
    decoding in its thread at that moment; the lock makes the close wait for it there, so the
    event loop never waits and the decoder is never freed under a running read."""
    frames = max(256, sample_rate * chunk_ms // 1000)
    lock = threading.Lock()
    state = {"busy": False}
    stream = None

    def open_stream():
        return miniaudio.stream_file(str(path), output_format=miniaudio.SampleFormat.SIGNED16, nchannels=1,
                                     sample_rate=sample_rate, frames_to_read=frames)

    def read() -> bytes | None:
        with lock:
            try:
                return next(stream).tobytes()
            except StopIteration:
                return None

    def close() -> None:
        with lock:
            try:
                stream.close()
            except Exception:  # noqa: BLE001 - nothing more to release
                log.debug("closing the decoder of %s failed", path, exc_info=True)

    stream = await asyncio.to_thread(open_stream)
    try:
        while True:
            # Left True when cancelled during the read: the read still runs in its thread.
            state["busy"] = True
            chunk = await asyncio.to_thread(read)
            state["busy"] = False
            if chunk is None:
                break
            if chunk:
                yield chunk
    finally:
        if state["busy"]:
            # Cancelled mid-read: close in a worker once that read returns.
            threading.Thread(target=close, name="music-close", daemon=True).start()
        else:
            close()


def _music_dir(ctx: ToolContext) -> Path:
    configured = settings_of(ctx, Settings).music_dir or ctx.extras.get("music_dir") or "music"
    return Path(configured).expanduser()


async def _library(ctx: ToolContext) -> tuple[Path, list[Song]]:
    folder = _music_dir(ctx)
    exts = settings_of(ctx, Settings).extensions
    songs = await asyncio.to_thread(lambda: scan(folder, exts) if folder.is_dir() else [])
    return folder, songs


@tool(timeout=10)
async def play_music(ctx: ToolContext, song: str = "") -> PlayAudio | ToolResult:
    """Play a song from the local music library on the speaker. Call when the user asks to play
    music or a particular song, e.g. "播放晴天", "放首歌", "我想听周杰伦的七里香", "play Yellow
    Submarine", "play some music". Not for questions about songs or lyrics.

    Args:
        song: the song title (or part of it, artist allowed) as the user said it; empty to play
            a random song.
    """
    folder, songs = await _library(ctx)
    if not songs:
        return ToolResult(text=f"The music library ({folder}) has no songs; tell the user no music is available.")
    if _is_random(song):
        chosen = random.choice(songs)
    else:
        chosen = find_song(songs, song, settings_of(ctx, Settings).min_score)
        if chosen is None:
            limit = settings_of(ctx, Settings).max_list
            some = ", ".join(s.title for s in songs[:limit])
            return ToolResult(text=f"No song matches {song!r}. Available songs: {some}. Tell the user, and "
                                   "offer one of these.")
    try:
        info = await asyncio.to_thread(miniaudio.get_file_info, str(chosen.path))
    except miniaudio.MiniaudioError as exc:
        log.warning("cannot decode %s: %s", chosen.path, exc)
        return ToolResult.error(f"the file of {chosen.title!r} cannot be played ({exc})")
    # Keep the file's own rate (the session resamples once, with a better filter); only very
    # high rates are brought down here to keep chunks small.
    rate = min(int(info.sample_rate), 48000)
    chunks = pcm_chunks(chosen.path, rate, settings_of(ctx, Settings).chunk_ms)
    log.info("playing %s (%s Hz, %.0f s)", chosen.path, rate, info.duration)
    return PlayAudio(chunks, rate, text=tr(ctx, f"正在播放《{chosen.title}》", f"Playing {chosen.title}"))


@tool(timeout=10)
async def list_music(ctx: ToolContext) -> dict | str:
    """List the songs in the local music library. Call only when the user asks which songs or
    music are available, e.g. "有哪些歌", "what songs do you have".
    """
    folder, songs = await _library(ctx)
    if not songs:
        return f"The music library ({folder}) is empty."
    limit = settings_of(ctx, Settings).max_list
    return {"count": len(songs), "songs": [s.title for s in songs[:limit]],
            "more": max(0, len(songs) - limit)}
