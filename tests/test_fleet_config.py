"""Fleet configuration is checked at start: a shared store without a shared secret or the
balancer's URL is refused with one line naming the key; two processes on one embedded data
directory are refused with one line (the real `python -m server`); the Prometheus text format."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from server.config.loader import ConfigError, load_config
from server.conversation.metrics import MetricsLog, TurnMetrics
from server.fleet.prometheus import PrometheusMetrics

ROOT = Path(__file__).resolve().parents[1]
PG = "postgresql://xz@127.0.0.1:5432/xz"


def load(tmp_path: Path, override: dict) -> object:
    f = tmp_path / "o.yaml"
    f.write_text(yaml.safe_dump(override))
    return load_config(override=f, base=ROOT / "config.yaml", env={"SECRET": "s3cret"})


def test_default_is_embedded_and_needs_nothing(tmp_path: Path) -> None:
    config = load(tmp_path, {})
    assert config.state.url == "" and not config.state.shared and config.prometheus.listen == ""


@pytest.mark.parametrize(("override", "message"), [
    ({"state": {"url": PG}, "server": {"websocket_url": "ws://lb/xiaozhi/v1/"}},
     "server.auth.secret: required with a shared state.url"),
    ({"state": {"url": PG}, "server": {"auth": {"secret": "${SECRET}"}}},
     "server.websocket_url: required with a shared state.url"),
    ({"state": {"url": PG}, "server": {"websocket_url": "ws://lb/xiaozhi/v1/", "auth": {"secret": "x"}},
      "vision": {"base_url": "http://vlm/v1", "model": "qwen-vl"}},
     "vision.url: required with a shared state.url and vision on"),
    ({"state": {"redis_url": "redis://127.0.0.1:6379/0"}}, "state.redis_url: needs state.url"),
    ({"state": {"url": "mysql://x"}}, "state.url: Value error, must be empty (embedded SQLite) or a postgresql:// URL"),
    ({"state": {"url": PG, "redis_url": "http://x"}}, "state.redis_url: Value error, must be empty or a redis://"),
    ({"prometheus": {"listen": "9100"}}, "prometheus.listen: Value error, must be host:port"),
    ({"state": {"urls": PG}}, "state.urls: unknown key"),
])
def test_fleet_misconfiguration_is_one_line_naming_the_key(tmp_path: Path, override: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, override)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_complete_fleet_config_passes(tmp_path: Path) -> None:
    config = load(tmp_path, {"state": {"url": PG, "redis_url": "redis://127.0.0.1:6379/0"},
                             "server": {"websocket_url": "wss://voice.example.org/xiaozhi/v1/",
                                        "auth": {"enabled": True, "secret": "${SECRET}"}},
                             "prometheus": {"listen": "127.0.0.1:9100"}})
    assert config.state.shared and config.server.auth.secret == "s3cret"


def test_two_processes_on_one_embedded_data_dir_are_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from server.state.datadir_lock import DataDirLock; DataDirLock(Path(sys.argv[1])).acquire(); "
         "print('held', flush=True); time.sleep(60)", str(data)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        override = tmp_path / "o.yaml"
        override.write_text(yaml.safe_dump({"data_dir": str(data), "server": {"host": "127.0.0.1"}}))
        started = subprocess.run([sys.executable, "-m", "server", "--config", str(override), "--port", "0",
                                  "--http-port", "0"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                                 env=dict(os.environ, PYTHONUNBUFFERED="1"))
        assert started.returncode == 3
        errors = [line for line in started.stderr.splitlines() if line.startswith("startup error")]
        assert errors == [f"startup error: another server process (pid {holder.pid}) already uses the data "
                          f"directory {data}: run one process per embedded data directory, or set state.url to a "
                          "shared PostgreSQL to run several (docs/deployment.md)"]
    finally:
        holder.kill()
        holder.wait()
    # The kernel dropped the lock with the holder: the directory is usable again at once.
    from server.state.datadir_lock import DataDirLock

    lock = DataDirLock(data)
    lock.acquire()
    lock.release()


def test_prometheus_text_format() -> None:
    class Services:
        sessions = {1, 2}
        metrics = MetricsLog()

    services = Services()
    prom = PrometheusMetrics(services, {"node": 'n"1', "state": "embedded"})
    services.metrics.observers.append(prom.observe_turn)
    services.metrics.count("auth_rejected", 2)
    ok = TurnMetrics(kind="voice", speech_end_arrival=10.0, endpoint=10.5, asr_done=10.7, llm_first_token=10.9,
                     first_clause=11.0, tts_first_chunk=11.1, first_frame_sent=11.2)
    failed = TurnMetrics(kind="text", asr_done=1.0, error="llm down")
    services.metrics.record(ok)
    services.metrics.record(failed)
    text = prom.render()
    lines = text.splitlines()
    assert 'xz_info{node="n\\"1",state="embedded"} 1' in lines
    assert "xz_sessions 2" in lines
    assert 'xz_turns_total{kind="voice",outcome="ok"} 1' in lines
    assert 'xz_turns_total{kind="text",outcome="error"} 1' in lines
    assert 'xz_provider_errors_total{stage="llm"} 1' in lines
    assert 'xz_events_total{event="auth_rejected"} 2' in lines
    # 1.2 s from the end of speech to the first frame: in the 1.5 s bucket, not the 1.0 s one.
    assert 'xz_turn_first_audio_seconds_bucket{kind="voice",le="1"} 0' in lines
    assert 'xz_turn_first_audio_seconds_bucket{kind="voice",le="1.5"} 1' in lines
    assert 'xz_turn_first_audio_seconds_bucket{kind="voice",le="+Inf"} 1' in lines
    assert 'xz_turn_first_audio_seconds_count{kind="voice"} 1' in lines
    assert 'xz_turn_stage_seconds_count{stage="asr"} 1' in lines
    for line in lines:  # every sample line is "name{labels} number"
        if not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])
    assert text.endswith("\n")


def test_engine_clients_are_imported_only_when_chosen() -> None:
    """The embedded default loads neither asyncpg nor redis-py (they are an optional extra)."""
    code = ("import sys, asyncio, tempfile, pathlib\n"
            "import server.app, server.config.loader\n"
            "from server.state import open_state, StateConfig\n"
            "d = pathlib.Path(tempfile.mkdtemp())\n"
            "async def main():\n"
            "    s = await open_state(StateConfig(), d)\n"
            "    await s.close()\n"
            "asyncio.run(main())\n"
            "print(sorted(m for m in ('asyncpg', 'redis') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
