"""The uplink path of many listening devices: Silero batched across streams, quiet windows
skipping the model, DTX packets answered without decoding, the shared batch thread.

Real model, real Opus (the firmware's encoder settings), real speech (espeak-ng) and a generated
room noise (the tester's --idle-audio room clip)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from bench.idle import room_noise
from harness.devsim import synthesize_speech
from harness.devsim.codec import UplinkEncoder
from server.audio.opus import OpusDecoder, dtx_samples, packet_samples
from server.pipeline.segmenter import Segmenter, SegmenterConfig, SegmentEvent
from server.providers.base import ProviderContext
from server.providers.vad.batch import batcher_for
from server.providers.vad.silero import SileroSettings, SileroVAD
from server.session.listener import UplinkAudio

ROOT = Path(__file__).resolve().parents[1]


async def load(**settings: float) -> SileroVAD:
    vad = SileroVAD(SileroSettings(**settings), ProviderContext(ROOT, ROOT / "data", ROOT / "models"))
    await vad.load()
    return vad


@pytest.fixture(scope="module")
async def speech() -> bytes:
    pcm = await synthesize_speech("Turn on the light in the kitchen, please.")
    return b"\x00\x00" * 8000 + pcm + b"\x00\x00" * 16000


def frames(pcm: bytes, ms: int = 60) -> list[bytes]:
    n = 16 * ms * 2
    return [pcm[i:i + n] for i in range(0, len(pcm) - n + 1, n)]


def mix(a: bytes, b: bytes) -> bytes:
    x = np.frombuffer(a, np.int16).astype(np.int32)
    y = np.frombuffer(b, np.int16)[: x.size].astype(np.int32)
    y = np.resize(y, x.size)
    return np.clip(x + y, -32768, 32767).astype(np.int16).tobytes()


async def test_batched_probabilities_match_one_stream_at_a_time(speech: bytes) -> None:
    vad = await load(skip_below_dbfs=-140, skip_near_floor_db=0)  # the model on every window
    noisy = mix(speech, room_noise(len(speech) // 32))
    clips = [speech, noisy, noisy[32000:] + noisy[:32000]]
    alone = []
    for clip in clips:
        stream = vad.new_stream()
        alone.append([p for f in frames(clip) for p in vad.process_sync(stream, f)])
    streams = [vad.new_stream() for _ in clips]
    together: list[list[float]] = [[] for _ in clips]
    for k in range(len(frames(speech))):
        out = vad.process_batch_sync([(s, frames(c)[k]) for s, c in zip(streams, clips, strict=True)])
        for acc, probs in zip(together, out, strict=True):
            acc += probs
    for a, b in zip(alone, together, strict=True):
        assert len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4
    assert max(alone[0]) > 0.9  # the speech is there
    calls_before = vad.batches
    vad.process_batch_sync([(s, frames(c)[0]) for s, c in zip(streams, clips, strict=True)])
    assert vad.batches - calls_before <= 2  # 3 streams, 60 ms each: at most 2 model calls


async def test_quiet_windows_skip_the_model_and_speech_is_still_found(speech: bytes) -> None:
    vad = await load()
    clip = mix(b"\x00\x00" * 16000 * 4 + speech, room_noise(4000 + len(speech) // 32))
    stream = vad.new_stream()
    seg = Segmenter(SegmenterConfig(min_silence_ms=500))
    events = []
    room_only_run = None
    for k, frame in enumerate(frames(clip)):
        for prob in vad.process_sync(stream, frame):
            event = seg.feed(prob)
            if event is not None:
                events.append(event.event)
        if k == 4000 // 60:
            room_only_run = vad.windows_run
    assert events == [SegmentEvent.SPEECH_START, SegmentEvent.SPEECH_END]
    # 4 s of room noise at -50 dBFS: once the floor is learnt (~1-2 s), its windows skip the model.
    assert room_only_run is not None and room_only_run < 0.5 * (4000 / 32)
    assert vad.windows_skipped > 60


async def test_digital_silence_never_runs_the_model() -> None:
    vad = await load()
    stream = vad.new_stream()
    probs = [p for _ in range(50) for p in vad.process_sync(stream, b"\x00\x00" * 960)]
    assert len(probs) == 50 * 960 // 512 and set(probs) == {0.0} and vad.windows_run == 0


def test_dtx_packets_from_the_firmware_encoder() -> None:
    enc = UplinkEncoder(60)
    packets = enc.encode_all(b"\x00\x00" * 16000 * 2)
    assert all(packet_samples(p) == 960 for p in packets)
    dtx = [p for p in packets if dtx_samples(p) is not None]
    assert len(dtx) > len(packets) // 2  # the firmware's DTX turns silence into 1-2 byte packets
    assert dtx_samples(b"\x08" + b"\x00" * 40) is None  # a real packet
    assert packet_samples(b"") is None and packet_samples(b"\x03") is None  # code 3 needs a count byte


async def test_uplink_audio_dtx_inline_and_the_rest_through_the_batcher(speech: bytes) -> None:
    vad = await load()
    counts: dict[str, int] = {}

    def count(name: str, n: int) -> None:
        counts[name] = counts.get(name, 0) + n

    up = UplinkAudio(vad, count)
    packets = UplinkEncoder(60).encode_all(b"\x00\x00" * 16000 + speech)
    windows = 0
    voiced = 0.0
    for packet in packets:
        silent = up.silent(packet)
        if silent is not None:
            samples, skipped = silent
            assert samples == 960
            probs = [0.0] * skipped
        else:
            assert up.needs_decoding(packet)
            [(pcm, probs, error)] = await up.process([packet])
            assert error is None and pcm is not None and len(pcm) == 1920
        windows += len(probs)
        voiced = max([voiced, *probs])
    assert windows == len(packets) * 960 // 512  # audio time advances for every packet
    assert voiced > 0.9
    assert counts["uplink_dtx_frames"] > 10 and counts["uplink_decoded_frames"] > 10
    # A corrupt packet is reported per packet; the rest of the job still decodes.
    good = next(p for p in packets if len(p) > 10)
    results = await up.process([b"\xff\xff\xff\xff\xff", good])
    assert results[0][0] is None and results[0][2] and results[1][0] is not None
    await vad.close()


async def test_many_sessions_share_batches_and_keep_their_order(speech: bytes) -> None:
    vad = await load()
    batcher = batcher_for(vad)
    packets = UplinkEncoder(60).encode_all(speech)
    decoders = [OpusDecoder(16000) for _ in range(20)]
    streams = [vad.new_stream() for _ in range(20)]

    async def session(i: int) -> list[float]:
        probs: list[float] = []
        for k in range(0, len(packets), 3):  # three frames per job, as a session behind would send
            for pcm, p, error in await batcher.submit(decoders[i].decode, streams[i], packets[k:k + 3]):
                assert error is None and pcm is not None
                probs += p
        return probs

    results = await asyncio.gather(*(session(i) for i in range(20)))
    stream = vad.new_stream()
    decoder = OpusDecoder(16000)
    alone = [p for packet in packets for p in vad.process_sync(stream, decoder.decode(packet))]
    for probs in results:
        assert len(probs) == len(alone) and max(abs(a - b) for a, b in zip(probs, alone, strict=True)) < 1e-4
    assert batcher.largest_batch > 1 and batcher.batches < batcher.jobs_done
    await vad.close()
