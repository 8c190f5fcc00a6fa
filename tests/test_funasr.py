"""FunASR / SenseVoiceSmall without the 936 MB weights: tag parsing, the startup checks, and the
real funasr loading and inference path on a miniature randomly initialised SenseVoiceSmall."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import server.providers.asr.funasr as funasr_provider
from server.providers.asr.funasr import BPE_MODEL, FunASR, FunASRSettings, parse_sensevoice
from server.providers.base import ProviderContext, ProviderUnavailable, Transcript

ROOT = Path(__file__).resolve().parents[1]
CTX = ProviderContext(root_dir=ROOT, data_dir=ROOT / "data", models_dir=ROOT / "models")

# --------------------------------------------------------------------------- tag parsing


@pytest.mark.parametrize(("raw", "expected"), [
    ("<|zh|><|HAPPY|><|Speech|><|withitn|>今天天气不错。", Transcript("今天天气不错。", "zh", "happy")),
    ("<|en|><|NEUTRAL|><|Speech|><|woitn|>what is the weather", Transcript("what is the weather", "en", "neutral")),
    ("<|yue|><|SAD|><|Speech|><|withitn|>唔该。", Transcript("唔该。", "yue", "sad")),
    ("<|ja|><|ANGRY|><|Speech|><|withitn|>だめだ！", Transcript("だめだ！", "ja", "angry")),
    ("<|ko|><|SURPRISED|><|Speech|><|withitn|>정말?", Transcript("정말?", "ko", "surprised")),
    ("<|zh|><|FEARFUL|><|Speech|><|withitn|>救命！", Transcript("救命！", "zh", "shocked")),
    ("<|en|><|DISGUSTED|><|Speech|><|withitn|>Yuck.", Transcript("Yuck.", "en", "angry")),
])
def test_one_segment(raw: str, expected: Transcript) -> None:
    assert parse_sensevoice(raw) == expected


def test_several_segments_are_joined_and_the_longest_decides() -> None:
    raw = ("<|zh|><|NEUTRAL|><|Speech|><|withitn|>你好。"
           "<|en|><|HAPPY|><|Speech|><|withitn|>How are you today?")
    assert parse_sensevoice(raw) == Transcript("你好。How are you today?", "en", "happy")


def test_latin_segments_get_a_space_cjk_segments_do_not() -> None:
    assert parse_sensevoice("<|en|><|NEUTRAL|><|Speech|><|withitn|>Hello."
                            "<|en|><|NEUTRAL|><|Speech|><|withitn|>World").text == "Hello. World"
    assert parse_sensevoice("<|zh|><|NEUTRAL|><|Speech|><|withitn|>今天"
                            "<|zh|><|NEUTRAL|><|Speech|><|withitn|>下雨").text == "今天下雨"


@pytest.mark.parametrize(("raw", "expected"), [
    # Silence or noise: SenseVoice's own "no speech" marker.
    ("<|nospeech|><|Event_UNK|>", Transcript("", None, None)),
    ("<|nospeech|><|EMO_UNKNOWN|><|BGM|><|woitn|>", Transcript("", None, None)),
    # Unknown emotion, but the audio event says the user laughed.
    ("<|zh|><|EMO_UNKNOWN|><|Laughter|><|withitn|>哈哈哈", Transcript("哈哈哈", "zh", "laughing")),
    ("<|en|><|EMO_UNKNOWN|><|Cry|><|withitn|>", Transcript("", "en", "crying")),
    # Tags this parser has never heard of are removed, not spoken or shown.
    ("<|zh|><|SAD|><|BGM|><|woitn|><|SomeNewTag|>再见", Transcript("再见", "zh", "sad")),
    ("<|zh|><|happy|><|Speech|><|withitn|>好", Transcript("好", "zh", "happy")),
    # Text without tags (another model, or already post-processed) passes through.
    ("  plain   text  ", Transcript("plain text", None, None)),
    ("", Transcript("", None, None)),
])
def test_odd_output(raw: str, expected: Transcript) -> None:
    assert parse_sensevoice(raw) == expected


# --------------------------------------------------------------------------- startup checks


class NetworkUsed(AssertionError):
    pass


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record (and refuse) every connection attempt and name lookup made in this process."""
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args[1:] or args)
        raise NetworkUsed(f"network used: {args[1:] or args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def write_config(folder: Path, model: str = "SenseVoiceSmall") -> None:
    (folder / "config.yaml").write_text(f"model: {model}\nencoder: SenseVoiceEncoderSmall\n", encoding="utf-8")


async def test_missing_folder_names_it_and_the_download_command(
        monkeypatch: pytest.MonkeyPatch, no_network: list[Any]) -> None:
    def imported() -> None:
        raise AssertionError("funasr must not be imported when the model is missing")

    monkeypatch.setattr(funasr_provider, "_import_automodel", imported)
    asr = FunASR(FunASRSettings(), CTX)  # the default models/SenseVoiceSmall (absent here)
    with pytest.raises(ProviderUnavailable) as err:
        await asr.load()
    message = str(err.value)
    assert str(ROOT / "models" / "SenseVoiceSmall") in message and "does not exist" in message
    assert "scripts/download_models.sh --source modelscope" in message and "--source hf" in message
    assert no_network == []


async def test_incomplete_folder_lists_every_problem(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[Any]) -> None:
    monkeypatch.setattr(funasr_provider, "_import_automodel", lambda: pytest.fail("funasr imported"))
    write_config(tmp_path)
    # What `git clone` of the hub repo gives without git-lfs: pointers instead of the weights.
    (tmp_path / "model.pt").write_bytes(
        b"version https://git-lfs.github.com/spec/v1\noid sha256:833ca2dc\nsize 936291369\n")
    (tmp_path / "am.mvn").write_bytes(b"")
    asr = FunASR(FunASRSettings(model_dir=str(tmp_path)), CTX)
    with pytest.raises(ProviderUnavailable) as err:
        await asr.load()
    message = str(err.value)
    assert str(tmp_path) in message
    assert "model.pt is a Git LFS pointer" in message
    assert "am.mvn is empty" in message
    assert f"{BPE_MODEL} is missing" in message
    assert "config.yaml is" not in message  # that one is fine
    assert no_network == []


def test_truncated_weights_and_wrong_model_are_caught(tmp_path: Path) -> None:
    write_config(tmp_path, model="Paraformer")
    (tmp_path / "model.pt").write_bytes(b"\x80\x02" + bytes(5000))
    (tmp_path / "am.mvn").write_text("<Nnet>\n")
    (tmp_path / BPE_MODEL).write_bytes(b"\x0a\x0b" * 100)
    assert funasr_provider.check_model_dir(tmp_path) == [
        "model.pt is only 0.0 MB (the real one is ~936 MB: interrupted download?)"]
    with (tmp_path / "model.pt").open("r+b") as f:
        f.truncate(200 * 1024 * 1024)  # sparse: big enough without writing 200 MB
    assert funasr_provider.check_model_dir(tmp_path) == [
        "config.yaml describes model 'Paraformer', not SenseVoiceSmall"]
    write_config(tmp_path)
    assert funasr_provider.check_model_dir(tmp_path) == []


def test_importing_the_provider_does_not_import_funasr_or_torch() -> None:
    code = ("import sys, server.providers.asr.funasr as m; m.FunASRSettings(); "
            "print(sorted(k for k in ('funasr', 'torch', 'modelscope') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("bad", [{"language": "fr"}, {"workers": 0}, {"vad_model": "fsmn-vad"}])
def test_settings_are_checked(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        FunASRSettings(**bad)


# --------------------------------------------------------------------------- the real funasr path

TAGS = ["<|zh|>", "<|en|>", "<|yue|>", "<|ja|>", "<|ko|>", "<|nospeech|>", "<|HAPPY|>", "<|SAD|>",
        "<|ANGRY|>", "<|NEUTRAL|>", "<|EMO_UNKNOWN|>", "<|Speech|>", "<|withitn|>", "<|woitn|>"]
# SenseVoiceSmall's config.yaml (FunASR docs/tutorial/Tables.md) with a tiny encoder.
TINY_CONFIG = {
    "model": "SenseVoiceSmall",
    "model_conf": {"length_normalized_loss": True, "sos": 1, "eos": 2, "ignore_id": -1},
    "encoder": "SenseVoiceEncoderSmall",
    "encoder_conf": {
        "output_size": 16, "attention_heads": 2, "linear_units": 32, "num_blocks": 2, "tp_blocks": 1,
        "dropout_rate": 0.1, "positional_dropout_rate": 0.1, "attention_dropout_rate": 0.1, "input_layer": "pe",
        "pos_enc_class": "SinusoidalPositionEncoder", "normalize_before": True, "kernel_size": 11,
        "sanm_shfit": 0, "selfattention_layer_type": "sanm"},
    "tokenizer": "SentencepiecesTokenizer",
    "tokenizer_conf": {"bpemodel": None, "unk_symbol": "<unk>", "split_with_space": True},
    "frontend": "WavFrontend",
    "frontend_conf": {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25, "frame_shift": 10,
                      "lfr_m": 7, "lfr_n": 6, "cmvn_file": None},
}


def build_tiny_sensevoice(folder: Path) -> None:
    """A SenseVoiceSmall folder in the real layout with a miniature, randomly initialised network:
    an empty model.pt makes funasr keep its random init (which is also what a wrong model.pt does
    in the reference server, silently)."""
    import sentencepiece as spm
    import torch
    import yaml

    folder.mkdir(parents=True)
    lines = ["hello world what is the weather", "turn on the light please", "你好 今天 天气 很好"] * 20
    bpe = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=bpe, vocab_size=100, model_type="bpe",
        user_defined_symbols=TAGS, character_coverage=1.0, minloglevel=2)
    (folder / BPE_MODEL).write_bytes(bpe.getvalue())
    dim = 80 * 7  # n_mels x lfr_m
    (folder / "am.mvn").write_text(
        f"<Nnet>\n<Splice> {dim} {dim}\n[ 0 ]\n<AddShift> {dim} {dim}\n<LearnRateCoef> 0 [ {' '.join(['-8'] * dim)} ]\n"
        f"<Rescale> {dim} {dim}\n<LearnRateCoef> 0 [ {' '.join(['0.2'] * dim)} ]\n</Nnet>\n")
    (folder / "config.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    torch.save({}, folder / "model.pt")


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.mark.skipif(not (_have("funasr") and _have("sentencepiece")), reason="funasr is not installed")
@pytest.mark.skipif(not (_have("torchaudio") or _have("kaldi_native_fbank")),
                    reason="funasr needs torchaudio or kaldi-native-fbank")
@pytest.mark.timeout(120)
async def test_load_and_transcribe_through_real_funasr(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[Any]) -> None:
    from harness.devsim import synthesize_speech

    pcm = await synthesize_speech("Turn on the light please.")  # before the guard matters (cached file)
    folder = tmp_path / "SenseVoiceSmall"
    build_tiny_sensevoice(folder)
    monkeypatch.setattr(funasr_provider, "MIN_WEIGHTS_BYTES", 0)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # set by load(); restored after the test
        monkeypatch.setenv(var, "1")
    asr = FunASR(FunASRSettings(model_dir=str(folder), language="en", cpu_threads=1), CTX)

    # The event loop keeps running while funasr is imported and the model built.
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.02)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    try:
        await asr.load()
    finally:
        tick.cancel()
    try:
        assert len(gaps) > 10 and max(gaps) < 2.0, max(gaps)
        result = await asr.transcribe(pcm)
        # Random weights say nothing meaningful, but the whole path ran and came back parsed.
        assert isinstance(result, Transcript) and "<|" not in result.text
        assert result.language in {"zh", "en", "yue", "ja", "ko"}
        assert (await asr.transcribe(b"\x00\x00" * 100)).text == ""  # too short to try
        assert asr.model_dir == folder
    finally:
        await asr.close()
    assert no_network == [], "funasr tried to reach the network"
