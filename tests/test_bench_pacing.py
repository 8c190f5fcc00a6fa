"""The tester's own arithmetic for issue 12's figures: reply-frame jitter and stalls from the
frames a device accepted, the generated room noise, CPU per uplink frame (numbers in, numbers out)."""

from __future__ import annotations

import numpy as np

from bench.e2e import pacing
from bench.idle import IdleStep, _per_frame, room_noise
from harness.devsim.events import DeviceEvent


def frame(t: float, ms: float = 60.0) -> DeviceEvent:
    e = DeviceEvent(t, "binary")
    e.accepted, e.duration_ms = True, ms
    return e


def test_pacing_on_a_prebuffered_reply_with_one_late_frame_and_one_gap() -> None:
    # 5 frames at once (the pre-buffer), then one per 60 ms, one frame 30 ms late, and a
    # 1 s pause between sentences: the device's queue runs dry once.
    times = [0.0] * 5 + [0.06 * k for k in range(1, 10)]
    times[8] += 0.03
    times += [times[-1] + 1.0 + 0.06 * k for k in range(5)]
    jitter, stalls, stall_ms = pacing([frame(t) for t in times])
    assert len(jitter) == len(times) - 1
    assert jitter[:4] == [-60.0] * 4  # the burst
    assert max(jitter) > 900  # the sentence gap
    assert any(29 < j < 31 for j in jitter) and any(-31 < j < -29 for j in jitter)  # late, then early
    assert stalls == 1 and 400 < stall_ms < 800


def test_pacing_ignores_frames_the_device_did_not_accept() -> None:
    dropped = frame(0.03)
    dropped.accepted = False
    jitter, stalls, _ = pacing([frame(0.0), dropped, frame(0.06), frame(0.12)])
    assert jitter == [0.0, 0.0] and stalls == 0


def test_room_noise_level_and_determinism() -> None:
    pcm = room_noise(2000)
    x = np.frombuffer(pcm, np.int16).astype(np.float64) / 32768
    assert len(pcm) == 2 * 32000
    assert abs(10 * np.log10(np.mean(x * x)) - -50) < 0.5
    assert room_noise(2000) == pcm and room_noise(2000, seed=1) != pcm


def test_cpu_per_frame_counts_only_frames_the_server_took_in() -> None:
    step = IdleStep(devices=100, frames_sent=25000, frames_expected=25000,
                    server_counters={"uplink_frames_dropped": 5000})
    _per_frame(step, cpu_s=2.0)
    assert step.cpu_ms_per_frame == 0.1  # 2 s over 20,000 frames
    assert step.cpu_percent_per_device_realtime == round(0.1 * 1000 / 60 / 10, 4)
