"""A local OpenAI-compatible HTTP server (aiohttp, 127.0.0.1) for testing and benchmarking.

It speaks the real wire format the `openai` SDK and vLLM/Ollama/DeepSeek-style servers use:

  POST /v1/chat/completions     stream=true: SSE `data: {chunk}\\n\\n` ... `data: [DONE]\\n\\n`;
                                otherwise one `chat.completion` JSON object
  POST /v1/audio/transcriptions multipart form (file, model, language, prompt, response_format)
  POST /v1/audio/speech         JSON; answers real espeak-ng speech as pcm (24 kHz s16le), wav or
                                mp3, streamed in several chunks
  GET  /v1/models               the model list

Scripting: tests push `ChatReply`, `TranscriptionReply` and `SpeechReply` objects onto
`server.chat_script`, `server.transcription_script` and `server.speech_script`; each request
pops the next one, and when a queue is empty the `default_*` behaviour answers. Every request is
appended to `server.requests` (path, headers, JSON body or form fields, uploaded audio, and
whether the client went away before the answer was complete) for assertions.

Standalone, for benchmarks:  python -m harness.fakes.openai_server --port 8100 --ttft-ms 300 --tokens-per-s 50
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import struct
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .http_base import FakeHTTPServer

SPEECH_RATE = 24000  # OpenAI's `pcm` format: 24 kHz, 16-bit signed little-endian, mono

# --------------------------------------------------------------------------- scripts


@dataclass
class ToolCallSpec:
    """A tool call the fake model makes. `arguments` is sent verbatim when it is a str (so a
    test can send malformed JSON), or JSON-encoded when it is a dict."""

    name: str
    arguments: str | dict[str, Any] = field(default_factory=dict)
    id: str | None = None

    def raw_arguments(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, ensure_ascii=False)


@dataclass
class ChatReply:
    """One scripted answer to /v1/chat/completions.

    mode:
      ok           the answer below
      hang         never send a status line; wait until the client gives up
      stall        send `fail_after` SSE events, then nothing more (socket kept open)
      drop         send `fail_after` SSE events, then cut the TCP connection
      error_event  send `fail_after` SSE events, then an SSE `{"error": ...}` event
      whole        answer one JSON completion even when a stream was asked for (servers that
                   ignore `stream`)
    (The first event is the role-only chunk, so `fail_after=1` fails before any content.)
    status: non-200 answers an OpenAI-style error JSON body instead (mode is ignored).
    """

    text: str = ""
    # Explicit content pieces (e.g. to split a `<think>` tag across chunks); default: `text`
    # split into word tokens.
    chunks: list[str] | None = None
    reasoning: str = ""  # streamed first, as `delta.reasoning_content` (DeepSeek/Qwen style)
    tool_calls: list[ToolCallSpec] = field(default_factory=list)
    # Argument fragment size; fragments of several tools are interleaved round-robin.
    fragment_chars: int = 7
    ttft_s: float = 0.0  # delay before the first chunk (after the headers)
    chunk_delay_s: float = 0.0  # delay between chunks
    mode: str = "ok"
    fail_after: int = 2
    status: int = 200
    error_message: str = ""
    error_type: str = ""
    error_code: str | None = None
    retry_after: float | None = None  # Retry-After header on an error status
    finish_reason: str | None = None  # default: "tool_calls" when there are tool calls, else "stop"
    usage: bool = True  # a final usage-only chunk, as with stream_options.include_usage

    def content_chunks(self) -> list[str]:
        if self.chunks is not None:
            return list(self.chunks)
        return re.findall(r"\S+\s*", self.text) if self.text.strip() else ([self.text] if self.text else [])


@dataclass
class TranscriptionReply:
    text: str = "hello world"
    status: int = 200
    error_message: str = ""
    delay_s: float = 0.0
    hang: bool = False


@dataclass
class SpeechReply:
    """One scripted answer to /v1/audio/speech. `wav_size` picks the RIFF/data size fields of a
    wav answer: "exact", "zero" or "ffff" (0xFFFFFFFF, what streaming servers send)."""

    status: int = 200
    error_message: str = ""
    hang: bool = False  # never answer
    drop_after: int | None = None  # cut the connection after this many audio chunks
    chunk_bytes: int = 4001  # odd on purpose: clients must re-align samples across chunks
    chunk_delay_s: float = 0.0
    wav_size: str = "ffff"
    content_type: str | None = None  # override the Content-Type (e.g. a proxy answering JSON with 200)


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any = None  # JSON body, or the multipart form fields (minus the file)
    audio: bytes = b""  # the uploaded file of a transcription
    audio_filename: str = ""
    audio_content_type: str = ""
    received_at: float = 0.0
    finished_at: float = 0.0  # when the handler finished (time.monotonic), 0 while it runs
    reply: Any = None  # the script entry (or default) that answered
    chunks_sent: int = 0
    completed: bool = False  # the whole answer was written
    client_disconnected: bool = False  # the client closed the connection before the end
    done: asyncio.Event = field(default_factory=asyncio.Event)  # set when the handler finished

    @property
    def authorization(self) -> str:
        return self.headers.get("Authorization", "")


# --------------------------------------------------------------------------- the server


def default_answer(last_user: str) -> str:
    """The deterministic answer when no script is queued: depends only on the last user text."""
    said = " ".join(last_user.split())[:200]
    if not said:
        return "Hello! How can I help you?"
    return f"You said: {said}. That is a fine thing to say."


@dataclass
class FakeOpenAIServer(FakeHTTPServer):
    model: str = "fake-model"
    # Defaults for unscripted chat answers (the benchmark knobs).
    default_ttft_s: float = 0.0
    default_chunk_delay_s: float = 0.0
    default_reply: Callable[[dict[str, Any]], ChatReply] | None = None  # request body -> reply
    default_transcript: str = "hello world"
    # Unscripted transcriptions: the text for the uploaded WAV (e.g. by its length, to mimic a
    # growing utterance's partial transcripts) instead of `default_transcript`, after a delay.
    transcript_for: Callable[[bytes], str] | None = None
    default_transcription_delay_s: float = 0.0
    # When set, requests without `Authorization: Bearer <require_key>` get a 401.
    require_key: str | None = None
    chat_script: list[ChatReply] = field(default_factory=list)
    transcription_script: list[TranscriptionReply] = field(default_factory=list)
    speech_script: list[SpeechReply] = field(default_factory=list)
    requests: list[RecordedRequest] = field(default_factory=list)

    # ------------------------------------------------------------------ life cycle

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/audio/transcriptions", self._transcriptions)
        app.router.add_post("/v1/audio/speech", self._speech)
        app.router.add_get("/v1/models", self._models)
        return app

    def reset(self) -> None:
        """Forget scripts and recorded requests (between tests sharing one server)."""
        self.chat_script.clear()
        self.transcription_script.clear()
        self.speech_script.clear()
        self.requests.clear()

    def last(self, path_suffix: str = "") -> RecordedRequest:
        """The most recent request whose path ends with `path_suffix`."""
        for rec in reversed(self.requests):
            if rec.path.endswith(path_suffix):
                return rec
        raise LookupError(f"no request to *{path_suffix} recorded")

    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    # ------------------------------------------------------------------ helpers

    def _record(self, request: web.Request, body: Any = None) -> RecordedRequest:
        rec = RecordedRequest(method=request.method, path=request.path, headers=dict(request.headers),
                              body=body, received_at=time.monotonic())
        self.requests.append(rec)
        return rec

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self.require_key is None or request.headers.get("Authorization") == f"Bearer {self.require_key}":
            return None
        return error_response(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")

    @staticmethod
    def _gone(request: web.Request) -> bool:
        transport = request.transport
        return transport is None or transport.is_closing()

    async def _wait_until_gone(self, request: web.Request, rec: RecordedRequest) -> None:
        """Send nothing more; return when the client has closed the connection."""
        # aiohttp does not cancel a handler when its client leaves, so poll the transport.
        while True:
            if self._gone(request):
                break
            await asyncio.sleep(0.02)
        rec.client_disconnected = True

    async def _sleep_watching(self, request: web.Request, rec: RecordedRequest, seconds: float) -> bool:
        """Sleep, but notice (and report False) when the client goes away meanwhile."""
        end = time.monotonic() + seconds
        while True:
            if self._gone(request):
                rec.client_disconnected = True
                return False
            left = end - time.monotonic()
            if left <= 0:
                return True
            await asyncio.sleep(min(left, 0.02))

    async def _write(self, resp: web.StreamResponse, request: web.Request, rec: RecordedRequest, data: bytes) -> bool:
        if self._gone(request):
            rec.client_disconnected = True
            return False
        try:
            await resp.write(data)
        except (ConnectionError, RuntimeError):  # aiohttp raises ClientConnectionResetError (a ConnectionError)
            rec.client_disconnected = True
            return False
        rec.chunks_sent += 1
        return True

    # ------------------------------------------------------------------ chat

    def _next_chat(self, body: dict[str, Any]) -> ChatReply:
        if self.chat_script:
            return self.chat_script.pop(0)
        if self.default_reply is not None:
            return self.default_reply(body)
        last_user = ""
        for msg in body.get("messages") or []:
            if isinstance(msg, dict) and msg.get("role") == "user":
                content = msg.get("content")
                if isinstance(content, list):  # content parts
                    content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
                last_user = content or ""
        return ChatReply(text=default_answer(last_user), ttft_s=self.default_ttft_s,
                         chunk_delay_s=self.default_chunk_delay_s)

    async def _json_endpoint(self, request: web.Request,
                             handle: Callable[[web.Request, RecordedRequest, Any], Awaitable[web.StreamResponse]],
                             ) -> web.StreamResponse:
        """What every JSON endpoint does first and last: parse the body (400 if it is not JSON),
        record the request, check the key, and mark the record done however the handler ends."""
        try:
            body = await request.json()
        except ValueError:
            self._record(request, None).done.set()
            return error_response(400, "We could not parse the JSON body of your request.")
        rec = self._record(request, body)
        try:
            denied = self._unauthorized(request)
            if denied is not None:
                return denied
            return await handle(request, rec, body)
        finally:
            rec.done.set()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._json_endpoint(request, self._answer_chat)

    async def _answer_chat(self, request: web.Request, rec: RecordedRequest, body: Any) -> web.StreamResponse:
        reply = self._next_chat(body)
        rec.reply = reply
        if reply.status != 200:
            headers = {"Retry-After": f"{reply.retry_after:g}"} if reply.retry_after is not None else None
            return error_response(reply.status, reply.error_message or _REASONS.get(reply.status, "error"),
                                  reply.error_type or None, reply.error_code, headers)
        if reply.mode == "hang":
            await self._wait_until_gone(request, rec)
            return web.Response(status=504)
        model = body.get("model") or self.model
        if not body.get("stream") or reply.mode == "whole":
            if reply.ttft_s and not await self._sleep_watching(request, rec, reply.ttft_s):
                return web.Response(status=499)
            rec.completed = True
            return web.json_response(completion_json(reply, model))
        return await self._stream_chat(request, rec, reply, model)

    async def _stream_chat(self, request: web.Request, rec: RecordedRequest, reply: ChatReply,
                           model: str) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        events = stream_events(reply, model)
        for n, event in enumerate(events):
            if reply.mode in ("stall", "drop", "error_event") and n >= reply.fail_after:
                break
            delay = reply.ttft_s if n == 1 else (reply.chunk_delay_s if n > 1 else 0.0)
            # The first event (role only) goes out at once, like real servers: the first
            # *content* is what waits for ttft_s.
            if delay and not await self._sleep_watching(request, rec, delay):
                return resp
            if not await self._write(resp, request, rec, sse(event)):
                return resp
        else:
            if await self._write(resp, request, rec, b"data: [DONE]\n\n"):
                rec.completed = True
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await resp.write_eof()
            return resp
        if reply.mode == "stall":
            await self._wait_until_gone(request, rec)
        elif reply.mode == "drop":
            assert request.transport is not None
            request.transport.abort()  # no terminating chunk: the client sees a broken body
        elif reply.mode == "error_event":
            error = {"error": {"message": reply.error_message or "The server had an error while processing your "
                               "request.", "type": reply.error_type or "server_error", "code": reply.error_code}}
            await self._write(resp, request, rec, sse(error))
            with contextlib.suppress(ConnectionError, RuntimeError):
                await resp.write_eof()
        return resp

    # ------------------------------------------------------------------ audio

    async def _transcriptions(self, request: web.Request) -> web.StreamResponse:
        rec = self._record(request, {})
        try:
            form = await request.post()
            fields: dict[str, Any] = {}
            for key, value in form.items():
                if isinstance(value, web.FileField):
                    rec.audio = value.file.read()
                    rec.audio_filename = value.filename
                    rec.audio_content_type = value.content_type
                else:
                    fields[key] = value
            rec.body = fields
            denied = self._unauthorized(request)
            if denied is not None:
                return denied
            reply = self.transcription_script.pop(0) if self.transcription_script else TranscriptionReply(
                text=self.transcript_for(rec.audio) if self.transcript_for and rec.audio else self.default_transcript,
                delay_s=self.default_transcription_delay_s)
            rec.reply = reply
            if reply.hang:
                await self._wait_until_gone(request, rec)
                return web.Response(status=504)
            if reply.status != 200:
                return error_response(reply.status, reply.error_message or _REASONS.get(reply.status, "error"))
            if not rec.audio:
                return error_response(400, "Missing required parameter: 'file'.", param="file")
            if reply.delay_s and not await self._sleep_watching(request, rec, reply.delay_s):
                return web.Response(status=499)
            rec.completed = True
            if fields.get("response_format") == "text":
                return web.Response(text=reply.text)
            return web.json_response({"text": reply.text, "usage": {"type": "duration", "seconds": 1}})
        finally:
            rec.finished_at = time.monotonic()
            rec.done.set()

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        return await self._json_endpoint(request, self._answer_speech)

    async def _answer_speech(self, request: web.Request, rec: RecordedRequest, body: Any) -> web.StreamResponse:
        reply = self.speech_script.pop(0) if self.speech_script else SpeechReply()
        rec.reply = reply
        if reply.hang:
            await self._wait_until_gone(request, rec)
            return web.Response(status=504)
        if reply.status != 200:
            return error_response(reply.status, reply.error_message or _REASONS.get(reply.status, "error"))
        text = str(body.get("input") or "")
        if not text.strip():
            return error_response(400, "Input must not be empty.", param="input")
        fmt = body.get("response_format") or "mp3"
        if fmt not in ("pcm", "wav", "mp3"):
            return error_response(400, f"The fake server does not produce {fmt!r} audio.", param="response_format")
        pcm = await speak(text, str(body.get("voice") or ""))
        if fmt == "pcm":
            payload, content_type = pcm, "audio/pcm"
        elif fmt == "wav":
            payload, content_type = wav_header(len(pcm), SPEECH_RATE, reply.wav_size) + pcm, "audio/wav"
        else:
            payload, content_type = await pcm_to_mp3(pcm, SPEECH_RATE), "audio/mpeg"
        if reply.content_type is not None:
            content_type = reply.content_type
            if content_type.startswith(("application/json", "text/")):
                payload = json.dumps({"detail": "quota exceeded"}).encode()
        resp = web.StreamResponse(headers={"Content-Type": content_type})
        await resp.prepare(request)
        size = max(1, reply.chunk_bytes)
        for n, start in enumerate(range(0, len(payload), size)):
            if reply.drop_after is not None and n >= reply.drop_after:
                assert request.transport is not None
                request.transport.abort()
                return resp
            if n and reply.chunk_delay_s and not await self._sleep_watching(request, rec, reply.chunk_delay_s):
                return resp
            if not await self._write(resp, request, rec, payload[start:start + size]):
                return resp
        rec.completed = True
        with contextlib.suppress(ConnectionError, RuntimeError):
            await resp.write_eof()
        return resp

    async def _models(self, request: web.Request) -> web.Response:
        rec = self._record(request)
        rec.completed = True
        rec.done.set()
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": 0, "owned_by": "fake"}]})


# --------------------------------------------------------------------------- wire format

_REASONS = {400: "Bad request.", 401: "Incorrect API key provided.", 403: "Permission denied.",
            404: "The model does not exist.", 429: "Rate limit reached for requests.",
            500: "The server had an error while processing your request.", 502: "Bad gateway.",
            503: "The engine is currently overloaded, please try again later."}
_TYPES = {401: "invalid_request_error", 429: "requests", 500: "server_error", 503: "server_error"}


def error_response(status: int, message: str, error_type: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None, param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": error_type or _TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def sse(obj: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


def _tool_call_ids(reply: ChatReply) -> list[str]:
    return [tc.id or f"call_{i}_{uuid.uuid4().hex[:12]}" for i, tc in enumerate(reply.tool_calls)]


def tool_call_fragments(reply: ChatReply, ids: list[str]) -> list[list[dict[str, Any]]]:
    """Streamed tool-call deltas: per tool, a head (index, id, type, name, empty arguments) and
    then argument fragments; tools interleaved round-robin, one fragment per chunk."""
    per_tool: list[list[dict[str, Any]]] = []
    for i, tc in enumerate(reply.tool_calls):
        raw = tc.raw_arguments()
        size = max(1, reply.fragment_chars)
        frags = [{"index": i, "id": ids[i], "type": "function", "function": {"name": tc.name, "arguments": ""}}]
        frags += [{"index": i, "function": {"arguments": raw[p:p + size]}} for p in range(0, len(raw), size)]
        per_tool.append(frags)
    out: list[list[dict[str, Any]]] = []
    while any(per_tool):
        for frags in per_tool:
            if frags:
                out.append([frags.pop(0)])
    return out


def stream_events(reply: ChatReply, model: str) -> list[dict[str, Any]]:
    """Every SSE chunk of a streamed answer (before `[DONE]`)."""
    cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"reasoning_content": piece}) for piece in re.findall(r"\S+\s*", reply.reasoning)]
    events += [chunk({"content": piece}) for piece in reply.content_chunks()]
    events += [chunk({"tool_calls": frags}) for frags in tool_call_fragments(reply, _tool_call_ids(reply))]
    events.append(chunk({}, reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")))
    if reply.usage:
        n_out = len(reply.content_chunks()) + len(reply.tool_calls)
        events.append({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                       "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": n_out,
                                                "total_tokens": 10 + n_out}})
    return events


def completion_json(reply: ChatReply, model: str) -> dict[str, Any]:
    ids = _tool_call_ids(reply)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(reply.content_chunks()) or None}
    if reply.reasoning:
        message["reasoning_content"] = reply.reasoning
    if reply.tool_calls:
        message["tool_calls"] = [{"id": ids[i], "type": "function",
                                  "function": {"name": tc.name, "arguments": tc.raw_arguments()}}
                                 for i, tc in enumerate(reply.tool_calls)]
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "message": message, "logprobs": None,
                                         "finish_reason": reply.finish_reason or (
                                             "tool_calls" if reply.tool_calls else "stop")}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}


def wav_header(data_bytes: int, rate: int, size_mode: str = "exact") -> bytes:
    """A 44-byte PCM16 mono WAV header; size fields exact, 0, or 0xFFFFFFFF (unknown length)."""
    if size_mode == "exact":
        riff, data = 36 + data_bytes, data_bytes
    elif size_mode == "zero":
        riff, data = 0, 0
    else:
        riff, data = 0xFFFFFFFF, 0xFFFFFFFF
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
            + b"data" + struct.pack("<I", data))


# --------------------------------------------------------------------------- speech

_speech_cache: dict[tuple[str, str], bytes] = {}


def espeak_voice(text: str, voice: str) -> str:
    """Chinese text (or a zh voice name) -> Mandarin; everything else -> American English."""
    if re.search(r"[\u4e00-\u9fff]", text) or voice.lower().startswith("zh"):
        return "cmn"
    return "en-us"


async def speak(text: str, voice: str = "") -> bytes:
    """espeak-ng speaking `text`, as PCM16 mono at 24 kHz (cached per text and voice)."""
    key = (text, espeak_voice(text, voice))
    if key not in _speech_cache:
        from harness.devsim import synthesize_speech
        from server.audio.pcm import resample

        pcm16k = await synthesize_speech(text, voice=key[1])
        _speech_cache[key] = await asyncio.to_thread(resample, pcm16k, 16000, SPEECH_RATE)
    return _speech_cache[key]


async def pcm_to_mp3(pcm: bytes, rate: int, kbps: int = 48) -> bytes:
    """PCM16 mono -> MP3 (for clients that ask for mp3), encoded in-process with PyAV."""
    from harness.audio_files import encode_pcm

    return await asyncio.to_thread(encode_pcm, pcm, rate, "mp3", kbps=kbps)


# --------------------------------------------------------------------------- CLI


async def _serve(args: argparse.Namespace) -> None:
    server = FakeOpenAIServer(host=args.host, port=args.port, model=args.model,
                              default_ttft_s=args.ttft_ms / 1000,
                              default_chunk_delay_s=1 / args.tokens_per_s if args.tokens_per_s > 0 else 0.0)
    await server.start()
    print(f"fake OpenAI server on {server.base_url} (model {server.model!r}, TTFT {args.ttft_ms:g} ms, "
          f"{args.tokens_per_s:g} tokens/s); Ctrl-C stops it", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.fakes.openai_server",
                                     description="Local OpenAI-compatible server for benchmarks.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--ttft-ms", type=float, default=300.0, help="time to first token of each answer")
    parser.add_argument("--tokens-per-s", type=float, default=50.0, help="streaming speed after the first token")
    parser.add_argument("--model", default="fake-model")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
