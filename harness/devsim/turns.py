"""High-level request/response turns on a SimDevice, for tests and benchmarks.

A turn is measured from the device's point of view: when its input ended (last speech packet
sent, push-to-talk release, or the typed text sent) and when the server's stt, tts start, first
playable audio packet and tts stop arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import TYPE_CHECKING

from harness.devsim.events import DeviceEvent, TurnResult
from harness.devsim.speech import silence

if TYPE_CHECKING:
    from harness.devsim.device import ListenMode, SimDevice


def _ends_turn(event: DeviceEvent) -> bool:
    return event.kind == "close" or event.is_msg("tts", "stop")


async def _wait_turn_end(dev: SimDevice, result: TurnResult, start: int, deadline: float) -> int:
    """Wait for tts stop; return the index just past the last event belonging to the turn."""
    from harness.devsim.device import DeviceClosed

    try:
        event = await dev.wait_for(_ends_turn, max(0.0, deadline - time.monotonic()), start)
    except TimeoutError:
        result.error = "timed out waiting for tts stop"
        return len(dev.events)
    except DeviceClosed:
        result.error = "connection closed"
        return len(dev.events)
    if event.kind == "close":
        result.error = f"connection closed (code {event.close_code})"
    for index in range(len(dev.events) - 1, start - 1, -1):
        if dev.events[index] is event:
            return index + 1
    return len(dev.events)


def collect_turn(dev: SimDevice, result: TurnResult, events: list[DeviceEvent]) -> TurnResult:
    """Fill `result` from the events of one turn."""
    pcm: list[bytes] = []
    for event in events:
        if event.kind == "binary":
            result.frames_received += 1
            result.max_queue_depth = max(result.max_queue_depth, event.queue_depth)
            if event.accepted:
                result.frames_played += 1
                if event.pcm:
                    pcm.append(event.pcm)
                if result.t_first_audio is None:
                    result.t_first_audio = event.t
            elif event.drop_reason == "not_speaking":
                result.dropped_not_speaking += 1
            elif event.drop_reason == "overflow":
                result.overflow_drops += 1
            continue
        if event.message is None:
            continue
        if event.is_msg("stt") and result.t_stt is None and isinstance(event.get("text"), str):
            result.stt_text, result.t_stt = event.get("text"), event.t
        elif event.is_msg("llm") and isinstance(event.get("emotion"), str):
            result.emotions.append(event.get("emotion"))
        elif event.is_msg("tts", "start") and result.t_tts_start is None:
            result.t_tts_start = event.t
        elif event.is_msg("tts", "sentence_start") and isinstance(event.get("text"), str):
            result.sentences.append(event.get("text"))
        elif event.is_msg("tts", "stop"):
            result.t_tts_stop, result.completed = event.t, True
    result.reply_pcm = b"".join(pcm)
    result.reply_sample_rate = dev.decode_sample_rate
    if result.frames_played:
        result.t_playback_end = dev.playback.drained_at()
    result.events = events
    return result


async def ask_audio(dev: SimDevice, pcm16k: bytes, mode: ListenMode = "auto", trailing_silence_ms: int = 1500,
                    timeout: float = 60.0) -> TurnResult:
    deadline = time.monotonic() + timeout
    await dev.wait_relisten()  # after a previous auto turn the device reopens its mic by itself
    start = len(dev.events)
    result = TurnResult(mode=mode, t_start=time.monotonic())
    if not (dev.state == "listening" and dev.mic_on and dev.listening_mode == mode):
        await dev.listen_start(mode)
    frame_bytes = 16000 * dev.config.frame_duration // 1000 * 2
    speech_frames = math.ceil(len(pcm16k) / frame_bytes)
    if mode == "manual":
        # Push-to-talk: speak, release (listen stop), then the server answers.
        await dev.stream_audio(pcm16k, stop_when_mic_off=True)
        if dev.mic_on:
            result.t_input_end = await dev.listen_stop()
        end = await _wait_turn_end(dev, result, start, deadline)
    else:
        # Auto/realtime: the mic keeps streaming (speech, then room silence) while the server's
        # VAD decides the utterance ended; the device stops streaming when it starts speaking.
        stream = asyncio.create_task(
            dev.stream_audio(pcm16k + silence(trailing_silence_ms), stop_when_mic_off=True))
        try:
            end = await _wait_turn_end(dev, result, start, deadline)
        finally:
            if not stream.done():
                stream.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await stream
        if not stream.cancelled() and stream.exception() is not None and result.error is None:
            result.error = f"uplink stream failed: {stream.exception()!r}"
    # The frames of this turn are the last ones sent; the speech part is the first speech_frames.
    sent = dev.frame_send_times
    first = _first_frame_index(dev, result.t_start)
    last_speech = min(first + speech_frames, len(sent)) - 1
    if last_speech >= first:
        result.t_last_speech_frame = sent[last_speech]
        if result.t_input_end is None:
            result.t_input_end = result.t_last_speech_frame
    return collect_turn(dev, result, dev.events[start:end])


def _first_frame_index(dev: SimDevice, t_start: float | None) -> int:
    sent = dev.frame_send_times
    index = len(sent)
    while index > 0 and t_start is not None and sent[index - 1] >= t_start:
        index -= 1
    return index


async def ask_text(dev: SimDevice, text: str, timeout: float = 60.0) -> TurnResult:
    deadline = time.monotonic() + timeout
    await dev.wait_relisten()
    start = len(dev.events)
    result = TurnResult(mode="text", t_start=time.monotonic())
    if dev.state != "listening":
        await dev.listen_start("manual")  # py-xiaozhi: only if not already listening
    result.t_input_end = await dev.listen_detect(text)
    end = await _wait_turn_end(dev, result, start, deadline)
    return collect_turn(dev, result, dev.events[start:end])
