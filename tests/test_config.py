"""Config: defaults validate, overrides merge, ${ENV} expands, and mistakes stop with one line
naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from server.config.loader import ConfigError, deep_merge, expand_env, load_config, with_ports

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "override.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_shipped_defaults_validate() -> None:
    cfg = load_config(override=None, cwd=Path("/nonexistent"))
    assert cfg.server.port == 8000 and cfg.server.http_port == 8003
    assert cfg.vad.type == "silero" and cfg.asr.type == "faster_whisper"
    assert cfg.llm.type == "llama_cpp" and cfg.tts.type == "piper"
    assert cfg.server.auth.enabled is False
    assert cfg.audio_out.sample_rate == 24000 and cfg.audio_out.frame_duration_ms == 60
    assert cfg.session.idle_timeout_s == 120


def test_override_merges_key_by_key(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "server:\n  port: 9000\nvad:\n  min_silence_ms: 700\n"))
    assert cfg.server.port == 9000
    assert cfg.server.http_port == 8003  # untouched sibling kept
    assert cfg.vad.min_silence_ms == 700 and cfg.vad.threshold == 0.5


def test_validated_config_is_never_patched() -> None:
    cfg = load_config(override=None, cwd=Path("/nonexistent"))
    with pytest.raises(ValidationError, match="frozen"):
        cfg.server.port = 1  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        cfg.vad = None  # type: ignore[misc]
    moved = with_ports(cfg, {"port": 0, "http_port": 9100})
    assert (moved.server.port, moved.server.http_port) == (0, 9100) and moved.server.auth == cfg.server.auth
    assert (cfg.server.port, cfg.server.http_port) == (8000, 8003)  # a new model; the old one unchanged
    with pytest.raises(ConfigError, match=r"^server\.port: .*65535"):
        with_ports(cfg, {"port": 70000})


def test_lists_replace(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "session:\n  exit_phrases: [stop now]\n"))
    assert cfg.session.exit_phrases == ["stop now"]


def test_data_override_file_is_used_when_present(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / ".config.yaml").write_text("server:\n  http_port: 9999\n")
    assert load_config(cwd=tmp_path).server.http_port == 9999


def test_env_expansion(tmp_path: Path) -> None:
    p = write(tmp_path, "server:\n  auth:\n    secret: ${XZ_TEST_SECRET}\n  websocket_url: ${XZ_NOPE:-ws://x/}\n")
    cfg = load_config(p, env={"XZ_TEST_SECRET": "s3cret"})
    assert cfg.server.auth.secret == "s3cret"
    assert cfg.server.websocket_url == "ws://x/"


def test_missing_env_names_the_key(tmp_path: Path) -> None:
    p = write(tmp_path, "server:\n  auth:\n    secret: ${XZ_MISSING_VAR}\n")
    with pytest.raises(ConfigError, match=r"server\.auth\.secret: environment variable XZ_MISSING_VAR"):
        load_config(p, env={})


@pytest.mark.parametrize("text,expected", [
    ("server:\n  prot: 1\n", r"^server\.prot: unknown key$"),
    ("serverr: {}\n", r"^serverr: unknown key$"),
    ("server:\n  port: eighty\n", r"^server\.port: .*integer.*'eighty'"),
    ("server:\n  port: 70000\n", r"^server\.port: .*65535"),
    ("audio_out:\n  sample_rate: 22050\n", r"^audio_out\.sample_rate: "),
    ("vad:\n  threshold: 2\n", r"^vad\.threshold: "),
    ("vad:\n  treshold: 0.4\n", r"^vad\.treshold: unknown key$"),
    ("asr:\n  type: magic\n", r"^asr\.type: unknown asr type 'magic' \(known: "),
    ("llm:\n  temperature: hot\n", r"^llm\.temperature: .*'hot'"),
    ("tts: 5\n", r"^tts: must be a mapping"),
    ("session:\n  exit_phrases: hello\n", r"^session\.exit_phrases: "),
])
def test_bad_values_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as err:
        load_config(write(tmp_path, text))
    assert "\n" not in str(err.value)


def test_changing_provider_type_drops_the_old_keys(tmp_path: Path) -> None:
    # The base llm section has llama_cpp keys (n_ctx, ...); switching type must not inherit them.
    merged = deep_merge({"llm": {"type": "a", "n_ctx": 1}}, {"llm": {"type": "b", "x": 2}})
    assert merged == {"llm": {"type": "b", "x": 2}}


def test_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(write(tmp_path, "server: [unclosed\n"))


def test_missing_override_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


def test_expand_env_leaves_plain_strings() -> None:
    assert expand_env({"a": ["$HOME", "x"]}, env={}) == {"a": ["$HOME", "x"]}


def test_cli_reports_one_line_and_exits_2(tmp_path: Path) -> None:
    bad = write(tmp_path, "server:\n  port: nope\n")
    proc = subprocess.run([sys.executable, "-m", "server", "--config", str(bad), "--check"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("config error: server.port:")


def test_cli_check_ok() -> None:
    proc = subprocess.run([sys.executable, "-m", "server", "--check"], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "config OK" in proc.stdout


def test_readme_production_profile_is_a_valid_override(tmp_path: Path) -> None:
    """The Chinese production profile in the README must stay copy-pasteable."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Chinese production profile", 1)[1]
    block = section.split("```yaml", 1)[1].split("```", 1)[0]
    cfg = load_config(write(tmp_path, block), env={"DEEPSEEK_API_KEY": "sk-test"})
    assert cfg.asr.type == "funasr" and cfg.llm.type == "openai" and cfg.llm.api_key == "sk-test"
    assert [t.type for t in cfg.tts] == ["edge", "piper"]
    assert cfg.assistant.language == "zh"
