"""Uplink decode + VAD for every session of the process on one thread, batched.

A listening device sends a frame every 60 ms. With one thread hop per frame and one model call
per 32 ms window, a few hundred devices fill a core with overhead. Here sessions hand their
frames to one `UplinkBatcher`; its thread takes everything that queued up while it was busy,
decodes it (a ctypes call that releases the GIL) and passes all the streams' audio to the VAD in
one `process_batch_sync` call, then wakes the event loop once for the whole batch. Under light
load a batch is one frame and the latency is one thread hop, as before; under heavy load the
batches grow and the cost per frame falls.

A session's frames stay in order: a session has at most one job in flight (it awaits the
result before sending the next), and a job carries all the frames it had queued.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("server.vad")


@dataclass(slots=True)
class UplinkJob:
    decode: Callable[[bytes], bytes]
    stream: Any
    packets: list[bytes]
    future: asyncio.Future[list[tuple[bytes | None, list[float], str | None]]]
    # filled on the batch thread: per packet (pcm or None, its VAD probabilities, error or None)
    results: list[tuple[bytes | None, list[float], str | None]] = field(default_factory=list)


class UplinkBatcher:
    def __init__(self, vad: Any) -> None:
        self._vad = vad
        self._batch = getattr(vad, "process_batch_sync", None)
        self._jobs: list[UplinkJob] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.batches = 0
        self.jobs_done = 0
        self.largest_batch = 0
        # Counter sink (the server's MetricsLog.count), called on the event loop per batch.
        self.count: Callable[[str, int], None] | None = None
        self._reported: dict[str, int] = {}

    def submit(self, decode: Callable[[bytes], bytes], stream: Any,
               packets: list[bytes]) -> asyncio.Future[list[tuple[bytes | None, list[float], str | None]]]:
        """Decode `packets` in order and run the VAD on them. The result has one entry per packet:
        (PCM, probabilities of the windows that packet completed, None) or (None, [], error)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._closed:
            future.set_exception(RuntimeError("VAD batcher closed"))
            return future
        with self._lock:
            if self._thread is None:
                self._loop = loop
                self._thread = threading.Thread(target=self._run, name=f"{getattr(self._vad, 'name', 'vad')}-batch",
                                                daemon=True)
                self._thread.start()
            self._jobs.append(UplinkJob(decode, stream, packets, future))
        self._wake.set()
        return future

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    # ------------------------------------------------------------------ batch thread

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                jobs, self._jobs = self._jobs, []
            if not jobs:
                continue
            try:
                self._process(jobs)
            except Exception as exc:  # noqa: BLE001 - a model failure fails these frames, not the thread
                log.exception("VAD batch of %d jobs failed", len(jobs))
                for job in jobs:
                    job.results = [(None, [], f"VAD failed: {exc!r}")] * len(job.packets)
            self.batches += 1
            self.jobs_done += len(jobs)
            self.largest_batch = max(self.largest_batch, len(jobs))
            loop = self._loop
            if loop is not None and not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(self._deliver, jobs)
                except RuntimeError:  # the loop closed meanwhile
                    return

    def _process(self, jobs: list[UplinkJob]) -> None:
        pcms: list[list[bytes | None]] = []
        for job in jobs:
            decoded: list[bytes | None] = []
            for packet in job.packets:
                try:
                    decoded.append(job.decode(packet))
                except ValueError as exc:
                    decoded.append(None)
                    job.results.append((None, [], str(exc)))
                    continue
                job.results.append((decoded[-1], [], None))
            pcms.append(decoded)
        # One VAD item per stream: the job's packets joined, then the probabilities are split
        # back by how many windows each packet completed.
        audio = [b"".join(p for p in decoded if p) for decoded in pcms]
        if self._batch is not None:
            probs = self._batch([(job.stream, pcm) for job, pcm in zip(jobs, audio, strict=True)])
        else:
            probs = [self._vad.process_sync(job.stream, pcm) for job, pcm in zip(jobs, audio, strict=True)]
        window = self._vad.window_samples
        for job, job_probs in zip(jobs, probs, strict=True):
            pending = _pending_samples(job.stream)
            if len(job.packets) == 1:
                pcm, _, error = job.results[0]
                job.results[0] = (pcm, job_probs, error)
                continue
            # Samples left over before this job = total - windows * window - left over after.
            total = sum(len(r[0]) // 2 for r in job.results if r[0] is not None)
            carried = len(job_probs) * window + pending - total
            done = 0
            for index, (pcm, _, error) in enumerate(job.results):
                if pcm is None:
                    continue
                carried += len(pcm) // 2
                upto = min(len(job_probs), carried // window)
                job.results[index] = (pcm, job_probs[done:upto], error)
                done = upto


    def _deliver(self, jobs: list[UplinkJob]) -> None:
        for job in jobs:
            if not job.future.done():
                job.future.set_result(job.results)
        if self.count is not None:
            self._report()

    def _report(self) -> None:
        """Counters as deltas: VAD windows the model ran on / skipped as quiet, model calls
        and batches (jobs per batch = vad_jobs / vad_batches)."""
        now = {"vad_batches": self.batches, "vad_jobs": self.jobs_done,
               "vad_windows_run": getattr(self._vad, "windows_run", 0),
               "vad_windows_skipped": getattr(self._vad, "windows_skipped", 0),
               "vad_model_calls": getattr(self._vad, "batches", 0)}
        assert self.count is not None
        for key, value in now.items():
            delta = value - self._reported.get(key, 0)
            if delta:
                self.count(key, delta)
                self._reported[key] = value


def _pending_samples(stream: Any) -> int:
    pending = getattr(stream, "_pending", None)
    return int(getattr(pending, "size", 0) or 0)




_batchers: dict[int, UplinkBatcher] = {}


def batcher_for(vad: Any) -> UplinkBatcher:
    """The process-wide batcher of one VAD provider instance (created on first use)."""
    batcher = getattr(vad, "_uplink_batcher", None)
    if batcher is None:
        batcher = UplinkBatcher(vad)
        try:
            vad._uplink_batcher = batcher
        except AttributeError:  # a provider with __slots__: keep it here instead
            batcher = _batchers.setdefault(id(vad), batcher)
    return batcher
