"""SenseVoiceSmall through FunASR: Chinese, Cantonese, English, Japanese and Korean speech, with
the speaker's language and emotion.

The weights (~936 MB) are not a Python package: they are downloaded once, on purpose, into
`models/SenseVoiceSmall` (scripts/download_models.sh). At startup the folder is checked *before*
funasr is imported, so a missing or half-downloaded model gives a clear error naming the folder
and the download command. (With the reference server a missing model.pt loaded random weights
silently, and users got "Korean/Japanese" transcripts: its most frequent FAQ entry.)

funasr is imported lazily (it takes ~6-11 s) on this provider's thread, never on the event loop,
and it is only ever given a local folder, so it never reaches a model hub. Its chatter goes to
its own print/logging calls; sys.stdout is not swapped (that would hide every other session's
output for the duration, as in the reference server).

SenseVoice output looks like `<|zh|><|HAPPY|><|Speech|><|withitn|>今天天气不错。`, one such
group per segment; `parse_sensevoice` turns it into text, language and emotion.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from server.providers.base import PCM_RATE, Provider, ProviderError, ProviderSettings, ProviderUnavailable, Transcript

# What funasr needs in the folder (FunASR docs/tutorial/Tables.md, "Model Resource Catalog";
# funasr/download/download_model_from_hub.py), and why.
BPE_MODEL = "chn_jpn_yue_eng_ko_spectok.bpe.model"
REQUIRED_FILES: dict[str, str] = {
    "model.pt": "the weights, ~936 MB",
    "config.yaml": "the network definition",
    BPE_MODEL: "the SentencePiece tokenizer",
    "am.mvn": "the feature normalization",
}
# configuration.json (also in both hubs' repos) only maps those names to paths; we pass the paths
# to funasr ourselves, so it is optional.
# A model.pt smaller than this is a broken download, not SenseVoiceSmall (the tests lower it for
# their miniature model).
MIN_WEIGHTS_BYTES = 100 * 1024 * 1024
DOWNLOAD_HINT = "scripts/download_models.sh --source modelscope   (or --source hf for Hugging Face)"
_LFS_POINTER = b"version https://git-lfs"

# Below this there is nothing to recognise, and SenseVoice's feature extractor fails on it.
MIN_AUDIO_SAMPLES = PCM_RATE // 10

Language = Literal["auto", "zh", "en", "yue", "ja", "ko", "nospeech"]


class FunASRSettings(ProviderSettings):
    type: str = "funasr"
    # Folder holding SenseVoiceSmall (relative paths are relative to the project root).
    model_dir: str = "models/SenseVoiceSmall"
    # "auto" detects the language per utterance; fixing it helps short utterances.
    language: Language = "auto"
    # Inverse text normalization: punctuation, digits ("二十三" -> "23").
    use_itn: bool = True
    # "cpu", or "cuda:0" when torch has CUDA.
    device: str = "cpu"
    # Threads torch uses per transcription. NOTE: torch's thread count is process-wide; funasr
    # sets it from this value when it loads the model.
    cpu_threads: int = Field(default=2, ge=1, le=64)
    # Transcriptions running at once (each uses cpu_threads).
    workers: int = Field(default=1, ge=1, le=8)
    # funasr's batching budget in seconds of audio; only matters for long inputs.
    batch_size_s: int = Field(default=60, ge=1, le=3600)


def check_model_dir(path: Path) -> list[str]:
    """Problems that keep `path` from being a usable SenseVoiceSmall folder (empty when fine)."""
    if not path.is_dir():
        return [f"{path} does not exist"]
    problems = []
    for name, what in REQUIRED_FILES.items():
        f = path / name
        if not f.is_file():
            problems.append(f"{name} is missing ({what})")
            continue
        size = f.stat().st_size
        if size == 0:
            problems.append(f"{name} is empty")
            continue
        with f.open("rb") as fh:
            head = fh.read(len(_LFS_POINTER))
        if head == _LFS_POINTER:
            problems.append(f"{name} is a Git LFS pointer, not the file (git clone without git-lfs?)")
        elif name == "model.pt" and size < MIN_WEIGHTS_BYTES:
            problems.append(f"model.pt is only {size / 1e6:.1f} MB (the real one is ~936 MB: interrupted download?)")
    config = path / "config.yaml"
    if config.is_file() and not problems:
        model = _config_model(config)
        if model != "SenseVoiceSmall":
            problems.append(f"config.yaml describes model {model!r}, not SenseVoiceSmall")
    return problems


def _config_model(config: Path) -> str | None:
    import yaml

    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return data.get("model") if isinstance(data, dict) else None


def _import_automodel() -> Any:
    # No code path below should need a hub; if one ever tries, fail instead of downloading.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from funasr import AutoModel

    return AutoModel


class FunASR(Provider):
    kind = "asr"
    local = True
    Settings = FunASRSettings
    settings: FunASRSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._model: Any = None
        self.model_dir: Path = self.context.resolve(self.settings.model_dir)

    def describe(self) -> str:
        return f"{self.name} (SenseVoiceSmall, {self.settings.language}, {self.settings.device})"

    async def load(self) -> None:
        s = self.settings
        path = self.model_dir
        problems = check_model_dir(path)
        if problems:
            raise ProviderUnavailable(
                f"asr.funasr: SenseVoiceSmall is not usable in {path}: " + "; ".join(problems)
                + f". Download it (about 940 MB) with: {DOWNLOAD_HINT}; see models/README.md")
        workers = s.workers
        try:
            auto_model = await self.run_blocking(_import_automodel, workers=workers)
        except ImportError as exc:
            raise ProviderUnavailable(
                f"asr.funasr: funasr is not installed ({exc}): pip install 'funasr[knf]' (with torch)"
            ) from None
        try:
            self._model = await self.run_blocking(
                auto_model, workers=workers,
                model=str(path), device=s.device, ncpu=s.cpu_threads,
                # Local folder only: no version check, no VAD/punctuation models (SenseVoice
                # punctuates itself; our VAD already cut the utterance), no hub lookups.
                disable_update=True, disable_pbar=True, disable_log=True, hub="ms",
                init_param=str(path / "model.pt"),
                tokenizer_conf={"bpemodel": str(path / BPE_MODEL)},
                frontend_conf={"cmvn_file": str(path / "am.mvn")})
        except Exception as exc:  # noqa: BLE001 - torch/omegaconf/pickle errors: all mean "cannot load"
            raise ProviderUnavailable(
                f"asr.funasr: could not load SenseVoiceSmall from {path}: {type(exc).__name__}: {exc}. "
                f"If the download was interrupted, run again: {DOWNLOAD_HINT}") from None
        try:
            # One short run through feature extraction and the network: funasr needs an fbank
            # backend (torchaudio matching torch, or kaldi-native-fbank) that it only looks for
            # on first use. Better to learn that now than on the first user's utterance.
            await self.run_blocking(self._transcribe_sync, bytes(PCM_RATE), PCM_RATE, workers=workers)
        except Exception as exc:  # noqa: BLE001
            self._model = None
            raise ProviderUnavailable(
                f"asr.funasr: SenseVoiceSmall loaded but cannot run: {type(exc).__name__}: {exc}") from None

    def _transcribe_sync(self, pcm: bytes, sample_rate: int) -> Transcript:
        from server.audio.pcm import pcm_to_float, resample

        if sample_rate != PCM_RATE:
            pcm = resample(pcm, sample_rate, PCM_RATE)
        audio = pcm_to_float(pcm)
        if audio.size < MIN_AUDIO_SAMPLES:
            return Transcript(text="")
        s = self.settings
        results = self._model.generate(
            input=audio, cache={}, language=s.language, use_itn=s.use_itn, batch_size_s=s.batch_size_s,
            disable_pbar=True)
        raw = "".join(str(r.get("text", "")) for r in results or [] if isinstance(r, dict))
        transcript = parse_sensevoice(raw)
        if transcript.language is None and s.language not in ("auto", "nospeech"):
            transcript.language = s.language
        return transcript

    async def transcribe(self, pcm: bytes, sample_rate: int = PCM_RATE) -> Transcript:
        if self._model is None:
            raise ProviderError(self.name, "model not loaded")
        try:
            return await self.run_blocking(self._transcribe_sync, pcm, sample_rate, workers=self.settings.workers)
        except Exception as exc:  # noqa: BLE001 - any model failure becomes a provider error
            raise ProviderError(self.name, f"transcription failed: {type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------- tag parsing

_TAG = re.compile(r"<\|([^|<>]*)\|>")
LANGUAGES = {"zh", "en", "yue", "ja", "ko"}
NO_SPEECH = "nospeech"
# SenseVoice emotions -> the face names the xiaozhi firmware knows (server/pipeline/emotion.py).
EMOTIONS: dict[str, str] = {
    "HAPPY": "happy",
    "SAD": "sad",
    "ANGRY": "angry",
    "NEUTRAL": "neutral",
    "SURPRISED": "surprised",
    "FEARFUL": "shocked",  # the firmware has no "afraid" face
    "DISGUSTED": "angry",  # nor a "disgusted" one; the frowning face is closest
}
# Audio events that say more about the mood than an EMO_UNKNOWN tag.
EVENT_EMOTIONS: dict[str, str] = {"Laughter": "laughing", "Cry": "crying"}


@dataclass
class _Segment:
    language: str | None = None
    emotion: str | None = None
    event: str | None = None
    text: str = ""
    has_lang_tag: bool = False


def parse_sensevoice(raw: str) -> Transcript:
    """`<|zh|><|HAPPY|><|Speech|><|withitn|>text` (one group per segment, possibly several) ->
    Transcript(text without tags, language of the main segment, emotion mapped to a face name).

    Unknown tags are dropped from the text; `<|nospeech|>` gives no language; EMO_UNKNOWN gives no
    emotion unless the audio event is laughter or crying.
    """
    segments = [_Segment()]
    pos = 0
    for m in _TAG.finditer(raw):
        segments[-1].text += raw[pos:m.start()]
        pos = m.end()
        tag = m.group(1).strip()
        if tag in LANGUAGES or tag == NO_SPEECH:
            if segments[-1].has_lang_tag or segments[-1].text.strip():
                segments.append(_Segment())
            segments[-1].has_lang_tag = True
            segments[-1].language = tag if tag in LANGUAGES else None
        elif tag.upper() in EMOTIONS:
            segments[-1].emotion = EMOTIONS[tag.upper()]
        elif tag in EVENT_EMOTIONS:
            segments[-1].event = tag
        # withitn/woitn, Speech, BGM, EMO_UNKNOWN, Event_UNK and anything new: no meaning for us.
    segments[-1].text += raw[pos:]

    for seg in segments:
        seg.text = re.sub(r"\s+", " ", seg.text).strip()
    text = _join([seg.text for seg in segments if seg.text])
    return Transcript(text=text, language=_main_language(segments), emotion=_main_emotion(segments))


def _weight(seg: _Segment) -> int:
    # Longer segments decide; a segment with no text still counts a little.
    return len(seg.text) + 1


def _main_language(segments: list[_Segment]) -> str | None:
    scores: dict[str, int] = {}
    for seg in segments:
        if seg.language:
            scores[seg.language] = scores.get(seg.language, 0) + _weight(seg)
    return max(scores, key=scores.__getitem__) if scores else None


def _main_emotion(segments: list[_Segment]) -> str | None:
    scores: dict[str, int] = {}
    for seg in segments:
        emotion = seg.emotion or (EVENT_EMOTIONS.get(seg.event) if seg.event else None)
        if emotion:
            scores[emotion] = scores.get(emotion, 0) + _weight(seg)
    return max(scores, key=scores.__getitem__) if scores else None


def _join(parts: list[str]) -> str:
    """Join segment texts: no space between CJK text, a space between words of Latin script."""
    out = ""
    for part in parts:
        # "Hello." + "World" -> "Hello. World"; "你好。" + "World" -> "你好。World".
        if out and _is_latin(part[0]) and (_is_latin(out[-1]) or out[-1] in ",.?!;:"):
            out += " "
        out += part
    return out


def _is_latin(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()
