"""When the user's voice cuts our reply off (realtime mode, where the mic stays open)."""

from __future__ import annotations

# This much continuous speech is needed, so a cough does not cut us off.
BARGE_IN_MS = 300


def should_barge_in(mode: str, replying: bool, speech_ms: float) -> bool:
    """Only in realtime mode (auto and manual devices stop their mic while we speak), only
    while a reply is playing, and only after BARGE_IN_MS of continuous speech."""
    return mode == "realtime" and replying and speech_ms >= BARGE_IN_MS
