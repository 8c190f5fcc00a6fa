"""The test suite's fake OpenAI and Edge servers, run inside the tester for `--fake-llm`,
`--fake-edge` and `--fake-tools`, with the timestamps the tool-round figures need.

The fakes live in harness/fakes (they speak the real wire formats and are what the provider tests
use); this module imports them, so these options need a source checkout with tests/. They run on
the tester's event loop, on 127.0.0.1 ports chosen by the OS, and the server the tester starts is
pointed at them through its config: `llm: {type: openai, base_url: ...}` and
`tts: {type: edge, endpoint: ...}`.

Their clock is this process's time.monotonic(), which on Linux is the same CLOCK_MONOTONIC the
server's /metrics timestamps use, so the fakes' times and the server's milestones can be set
side by side (both processes run on this machine: the fakes are loopback-only).

What is derived here:
  tool rounds (--fake-tools): every question first gets a streamed call of the device's
    `self_audio_speaker_set_volume` tool; the follow-up request (carrying the tool result) gets
    the answer. Per round: the tool-call stream's end -> the follow-up request arriving (the
    server reads the call, runs the tool on the device, sends the result back) and -> the
    follow-up's first token; and the first token of the tool call -> the follow-up's first
    token, which is what the round adds to the turn compared with an answer without a tool.
  LLM delivery (--fake-llm): when the fake wrote the first text chunk, and the chunk that
    completes the first clause (found with the server's own SentenceSplitter), against the
    server's llm_first_token and first_clause milestones of the same turn: what the transport,
    the openai SDK, the provider and the splitter add before the pipeline sees the text. The
    rest of llm_first_token -> first_clause is the model's (here the fake's) streaming pace.
  Edge requests (--fake-edge): the fake's own synthesis time (espeak-ng + MP3 encoding, SSML
    received -> first audio sent), which is the stand-in for Microsoft's and not the server's;
    and for each turn, first_clause -> tts_first_chunk minus that: what the server and the
    edge-tts client add (WebSocket connect, handshake, request, first MP3 decode).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from bench.stats import summarize
from server.pipeline.splitter import SentenceSplitter

try:
    from harness.fakes.edge_server import FakeEdgeServer
    from harness.fakes.openai_server import (
        ChatReply,
        FakeOpenAIServer,
        ToolCallSpec,
        TranscriptionReply,
        default_answer,
    )
except ImportError as exc:  # e.g. an install without the test suite
    raise ImportError(f"--fake-* need the test fakes from harness/fakes (a source checkout): {exc}") from exc

DEVICE_TOOL = "self_audio_speaker_set_volume"  # the firmware's self.audio_speaker.set_volume, sanitized
CALL_ID_PREFIX = "call_bench_"


# What the fake ASR hears in every utterance (it cannot recognise speech): a short question.
FAKE_TRANSCRIPT = "What is the weather like today?"


@dataclass(slots=True)
class FakeOptions:
    llm: bool = False
    ttft_ms: float = 300.0
    tokens_per_s: float = 50.0
    tools: bool = False
    edge: bool = False
    language: str = "en"
    asr: bool = False  # remote-style ASR: the fake's /audio/transcriptions
    asr_ms: float = 200.0
    tts: bool = False  # remote-style TTS: the fake's /audio/speech


@dataclass
class ChatTiming:
    """One chat request as the fake OpenAI server saw it (monotonic seconds)."""

    received: float
    first_token: float | None = None  # first chunk after the role-only one: text or a tool call
    stream_end: float | None = None  # [DONE] written
    call_id: str | None = None  # the tool call this answer made
    answers_call: str | None = None  # the tool call whose result this request carries
    writes: list[float] = field(default_factory=list)  # every SSE event written, in order
    # Index of the content chunk that completes the first clause; -1: only the end of the
    # stream does (the splitter's flush); None: no text at all (a tool call).
    clause_chunk: int | None = None

    @property
    def text_first_written(self) -> float | None:
        # Event 0 is the role-only chunk; content chunk k is event 1 + k (no reasoning is scripted).
        return self.writes[1] if self.clause_chunk is not None and len(self.writes) > 1 else None

    @property
    def clause_written(self) -> float | None:
        if self.clause_chunk is None:
            return None
        if self.clause_chunk < 0:
            return self.stream_end
        return self.writes[1 + self.clause_chunk] if len(self.writes) > 1 + self.clause_chunk else None


def clause_chunk(chunks: list[str]) -> int | None:
    """Which streamed piece lets the server's splitter release its first clause."""
    if not chunks:
        return None
    splitter = SentenceSplitter()
    for k, piece in enumerate(chunks):
        if any(splitter.feed(piece)):
            return k
    return -1


def _last_user(body: dict[str, Any]) -> str:
    text = ""
    for msg in body.get("messages") or []:
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, list):
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            text = content or ""
    return text


@dataclass
class BenchOpenAIServer(FakeOpenAIServer):
    """The fake OpenAI server at a fixed TTFT and token rate, optionally calling the device tool
    first on every question, recording when each answer's first token and end went out."""

    script_tools: bool = False
    asr_delay_s: float = 0.0
    timings: list[ChatTiming] = field(default_factory=list)
    _by_request: dict[int, ChatTiming] = field(default_factory=dict)
    _calls: int = 0

    def __post_init__(self) -> None:
        self.default_reply = self._reply

    def _reply(self, body: dict[str, Any]) -> ChatReply:
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        last = messages[-1] if messages else {}
        timing = self._by_request.get(id(self.requests[-1])) if self.requests else None
        offered = {(t.get("function") or {}).get("name") for t in body.get("tools") or [] if isinstance(t, dict)}
        pace = {"ttft_s": self.default_ttft_s, "chunk_delay_s": self.default_chunk_delay_s}
        if self.script_tools and last.get("role") == "user" and DEVICE_TOOL in offered:
            self._calls += 1
            call_id = f"{CALL_ID_PREFIX}{self._calls}"
            if timing is not None:
                timing.call_id = call_id
            volume = 30 + (self._calls * 7) % 60
            return ChatReply(tool_calls=[ToolCallSpec(DEVICE_TOOL, {"volume": volume}, id=call_id)], **pace)
        if last.get("role") == "tool" and timing is not None:
            timing.answers_call = str(last.get("tool_call_id") or "")
        # The same answer as without a tool, so turns with and without one are comparable.
        return ChatReply(text=default_answer(_last_user(body)), **pace)

    async def _transcriptions(self, request: Any) -> Any:
        # Every transcription answers the fixed question after the configured delay.
        self.transcription_script.append(TranscriptionReply(text=FAKE_TRANSCRIPT, delay_s=self.asr_delay_s))
        return await super()._transcriptions(request)

    def _record(self, request: Any, body: Any = None) -> Any:
        rec = super()._record(request, body)
        if request.path.endswith("/chat/completions"):
            timing = ChatTiming(received=rec.received_at)
            self.timings.append(timing)
            self._by_request[id(rec)] = timing
        return rec

    async def _write(self, resp: Any, request: Any, rec: Any, data: bytes) -> bool:
        # Stamp before the write: the await can resume well after the bytes reached the server
        # when this process is busy (it also plays the devices), which would date the write late.
        now = time.monotonic()
        ok = await super()._write(resp, request, rec, data)
        timing = self._by_request.get(id(rec))
        if ok and timing is not None:
            timing.writes.append(now)
            # Chunk 1 is the role-only event sent at once; chunk 2 is the first one after the TTFT.
            if rec.chunks_sent == 2 and timing.first_token is None:
                timing.first_token = now
        return ok

    async def _stream_chat(self, request: Any, rec: Any, reply: Any, model: str) -> Any:
        timing = self._by_request.get(id(rec))
        if timing is not None:
            timing.clause_chunk = clause_chunk(reply.content_chunks())
        resp = await super()._stream_chat(request, rec, reply, model)
        timing = self._by_request.get(id(rec))
        if timing is not None and rec.completed:
            # The [DONE] event is the last write; its stamp was taken before it went out.
            timing.stream_end = timing.writes[-1] if timing.writes else time.monotonic()
        return resp

    def tool_rounds(self) -> list[dict[str, Any]]:
        """Each tool-call answer paired with the follow-up request that carried its result."""
        calls = {t.call_id: t for t in self.timings if t.call_id}
        rounds = []
        for follow in self.timings:
            call = calls.get(follow.answers_call or "")
            if call is None or call.stream_end is None:
                continue

            def ms(a: float | None, b: float | None) -> float | None:
                return None if a is None or b is None else round((b - a) * 1000, 2)

            rounds.append({
                "call_id": call.call_id, "call_received": call.received, "call_first_token": call.first_token,
                "call_stream_end": call.stream_end, "follow_received": follow.received,
                "follow_first_token": follow.first_token,
                "call_stream_ms": ms(call.first_token, call.stream_end),
                "end_to_follow_request_ms": ms(call.stream_end, follow.received),
                "end_to_follow_first_token_ms": ms(call.stream_end, follow.first_token),
                "added_to_turn_ms": ms(call.first_token, follow.first_token),
            })
        return rounds


@dataclass
class BenchEdgeServer(FakeEdgeServer):
    """The fake Edge service, noting when each request's SSML arrived."""

    ssml_at: dict[int, float] = field(default_factory=dict)

    def _read_ssml(self, rec: Any, ssml: str) -> None:  # type: ignore[override]
        FakeEdgeServer._read_ssml(rec, ssml)
        self.ssml_at[id(rec)] = time.monotonic()

    def synth_times(self) -> list[tuple[float, float]]:
        """(SSML received, first audio sent) of every request that sent audio."""
        out = []
        for rec in self.requests:
            at = self.ssml_at.get(id(rec))
            if at is not None and rec.first_audio_at is not None:
                out.append((at, rec.first_audio_at))
        return sorted(out)


def _inside(turn: dict[str, Any], t: float) -> bool:
    start = turn.get("started")
    end = turn.get("tts_stop_sent") or turn.get("last_frame_sent") or turn.get("first_frame_sent")
    return isinstance(start, int | float) and isinstance(end, int | float) and start <= t <= end


@dataclass
class BenchFakes:
    options: FakeOptions
    llm: BenchOpenAIServer | None = None
    edge: BenchEdgeServer | None = None

    async def start(self) -> BenchFakes:
        o = self.options
        if o.llm or o.tools or o.asr or o.tts:
            self.llm = BenchOpenAIServer(
                default_ttft_s=o.ttft_ms / 1000,
                default_chunk_delay_s=1 / o.tokens_per_s if o.tokens_per_s > 0 else 0.0,
                script_tools=o.tools, asr_delay_s=o.asr_ms / 1000)
            await self.llm.start()
        if o.edge:
            self.edge = BenchEdgeServer()
            await self.edge.start()
            # edge-tts opens its session with trust_env=True: keep a proxy from the environment
            # away from the loopback fake (the server inherits this environment).
            if any(os.environ.get(v) for v in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
                                               "ALL_PROXY", "all_proxy", "WS_PROXY", "WSS_PROXY")):
                for var in ("NO_PROXY", "no_proxy"):
                    os.environ[var] = ",".join(x for x in (os.environ.get(var), "127.0.0.1", "localhost") if x)
        return self

    async def close(self) -> None:
        for fake in (self.llm, self.edge):
            if fake is not None:
                await fake.close()

    def overrides(self, user_overrides: dict[str, Any]) -> dict[str, Any]:
        """Config sections that point the server at the fakes (merged over the user's override
        with the loader's deep_merge: a provider whose type changes is replaced whole)."""
        out: dict[str, Any] = {}
        o = self.options
        if self.llm is not None and (o.llm or o.tools):
            out["llm"] = {"type": "openai", "base_url": self.llm.base_url, "api_key": "", "model": self.llm.model}
        if self.llm is not None and o.asr:
            out["asr"] = {"type": "openai", "base_url": self.llm.base_url, "api_key": "", "model": "fake-whisper",
                          "language": o.language}
        if self.llm is not None and o.tts:
            out["tts"] = {"type": "openai", "base_url": self.llm.base_url, "api_key": "", "model": "fake-tts",
                          "voice": "alloy", "response_format": "pcm"}
        if self.edge is not None:
            tts: dict[str, Any] = {"type": "edge", "endpoint": self.edge.wss_url}
            mine = user_overrides.get("tts")
            if not (isinstance(mine, dict) and mine.get("type") == "edge" and mine.get("voice")):
                # The fake speaks with espeak-ng in the voice's language: match the questions.
                tts["voice"] = "zh-CN-XiaoxiaoNeural" if self.options.language == "zh" else "en-US-AriaNeural"
            out["tts"] = tts
        return out

    def describe(self) -> dict[str, Any]:
        o = self.options
        out: dict[str, Any] = {}
        if self.llm is not None:
            out["llm"] = {"base_url": self.llm.base_url, "ttft_ms": o.ttft_ms, "tokens_per_s": o.tokens_per_s,
                          "tools": o.tools, "chat_requests": len(self.llm.timings)}
        if self.edge is not None:
            out["edge"] = {"endpoint": self.edge.wss_url, "requests": len(self.edge.requests)}
        return out

    def _delivery(self, server_turns: list[dict[str, Any]]) -> dict[str, Any]:
        """Per answered turn: the fake's write of the first text / first-clause chunk -> the
        server's llm_first_token / first_clause (same CLOCK_MONOTONIC)."""
        assert self.llm is not None
        texts = [t for t in self.llm.timings if t.text_first_written is not None]
        turns = []
        for turn in server_turns:
            token, clause = turn.get("llm_first_token"), turn.get("first_clause")
            started = turn.get("started")
            if turn.get("error") or not isinstance(token, int | float) or not isinstance(started, int | float):
                continue
            # The answer this turn spoke: the last request of the turn whose text went out
            # before the server saw its first token (the follow-up one in a tool turn).
            mine = [t for t in texts if started <= t.received and (t.text_first_written or 0) <= token]
            if not mine:
                continue
            t = max(mine, key=lambda x: x.text_first_written or 0)
            row: dict[str, Any] = {"token_delivery_ms": round((token - (t.text_first_written or 0)) * 1000, 2),
                                   "clause_delivery_ms": None}
            if isinstance(clause, int | float) and t.clause_written is not None:
                row["clause_delivery_ms"] = round((clause - t.clause_written) * 1000, 2)
            turns.append(row)
        return {"delivery_turns": turns,
                "token_delivery_ms": summarize((r["token_delivery_ms"] for r in turns), 2),
                "clause_delivery_ms": summarize((r["clause_delivery_ms"] for r in turns), 2)}

    def report(self, server_turns: list[dict[str, Any]]) -> dict[str, Any]:
        """Everything the fakes saw, with the derived figures (see the module docstring)."""
        out = self.describe()
        if self.llm is not None:
            ttft = [(t.first_token - t.received) * 1000 for t in self.llm.timings if t.first_token is not None]
            out["llm"]["ttft_ms_measured"] = summarize(ttft, 2)
            out["llm"].update(self._delivery(server_turns))
        if self.llm is not None and self.options.tools:
            rounds = self.llm.tool_rounds()
            for r in rounds:
                turn = next((t for t in server_turns if (t.get("tool_calls") or 0) > 0
                             and _inside(t, r["call_received"])), None)
                r["server_tool_ms"] = turn.get("tool_ms") if turn else None
                gap = r["end_to_follow_request_ms"]
                # The round's own work besides running the tool: finish reading the streamed
                # call, build the follow-up request, send it.
                r["gap_minus_tool_ms"] = round(gap - r["server_tool_ms"], 2) if turn and gap is not None else None
            out["tool_rounds"] = rounds
            out["tool_round_summary"] = {
                key: summarize((r.get(key) for r in rounds), 2)
                for key in ("call_stream_ms", "server_tool_ms", "end_to_follow_request_ms", "gap_minus_tool_ms",
                            "end_to_follow_first_token_ms", "added_to_turn_ms")}
        if self.edge is not None:
            synth = self.edge.synth_times()
            out["edge"]["fake_synth_ms"] = summarize(((b - a) * 1000 for a, b in synth), 2)
            per_turn = []
            for turn in server_turns:
                clause, chunk = turn.get("first_clause"), turn.get("tts_first_chunk")
                if turn.get("interrupted") or turn.get("error") or not isinstance(clause, int | float) \
                        or not isinstance(chunk, int | float):
                    continue
                # The first Edge request this turn made after its first clause, answered before
                # its first chunk arrived.
                match = next(((a, b) for a, b in synth if clause <= a and b <= chunk), None)
                if match is None:
                    continue
                span = (chunk - clause) * 1000
                per_turn.append({"first_clause_to_tts_first_chunk_ms": round(span, 2),
                                 "fake_synth_ms": round((match[1] - match[0]) * 1000, 2),
                                 "server_and_client_ms": round(span - (match[1] - match[0]) * 1000, 2)})
            out["edge"]["turns"] = per_turn
            out["edge"]["server_and_client_ms"] = summarize((t["server_and_client_ms"] for t in per_turn), 2)
        return out
