"""The dependency rules in docs/architecture.md, checked on the source:
the protocol is pure, providers stand alone, the pipeline knows only Protocols, plugins see only
the plugin API."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def our_imports(path: Path) -> set[str]:
    """Modules of this project (server, plugins, bench, harness, tests) imported by a file, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {m for m in found if m.split(".")[0] in ("server", "plugins", "bench", "harness", "tests")}


def files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", files("server/protocol"), ids=lambda p: p.name)
def test_protocol_is_pure(path: Path) -> None:
    assert {m for m in our_imports(path) if not m.startswith("server.protocol")} == set()


@pytest.mark.parametrize("path", files("server/providers"), ids=lambda p: str(p.relative_to(ROOT)))
def test_providers_import_only_provider_base_and_audio_helpers(path: Path) -> None:
    allowed = ("server.providers", "server.audio")
    assert {m for m in our_imports(path) if not m.startswith(allowed)} == set()


@pytest.mark.parametrize("path", files("server/pipeline"), ids=lambda p: p.name)
def test_pipeline_knows_protocols_not_concrete_providers(path: Path) -> None:
    concrete = {m for m in our_imports(path)
                if m.startswith("server.providers.") and m not in ("server.providers.base",)}
    assert concrete == set()
    assert not {m for m in our_imports(path) if m.startswith(("server.session", "server.transport"))}


@pytest.mark.parametrize("path", files("plugins"), ids=lambda p: p.name)
def test_plugins_see_only_the_plugin_api(path: Path) -> None:
    assert {m for m in our_imports(path) if m != "server.plugin_api"} == set()


def test_plugin_api_does_not_reach_into_sessions() -> None:
    imports = our_imports(ROOT / "server" / "plugin_api.py")
    assert not {m for m in imports if m.startswith(("server.session", "server.transport"))}


@pytest.mark.parametrize("path", files("server"), ids=lambda p: str(p.relative_to(ROOT)))
def test_server_never_imports_test_tools(path: Path) -> None:
    """The shipped wheel holds only server/: the benchmark, the harness and the tests stay out."""
    assert not {m for m in our_imports(path) if m.split(".")[0] in ("bench", "harness", "tests")}


@pytest.mark.parametrize("path", files("server/state"), ids=lambda p: str(p.relative_to(ROOT)))
def test_state_backends_know_no_sessions_or_transport(path: Path) -> None:
    """Storage is below the conversation: it never reaches up into sessions, transport or the pipeline."""
    assert not {m for m in our_imports(path) if m.startswith(("server.session", "server.transport",
                                                              "server.pipeline", "server.fleet"))}


@pytest.mark.parametrize("path", files("server/config"), ids=lambda p: p.name)
def test_config_never_imports_transport_or_session(path: Path) -> None:
    """Validating a config must not pull in the servers that use it."""
    assert not {m for m in our_imports(path) if m.startswith(("server.transport", "server.session"))}


@pytest.mark.parametrize("path", files("server/session"), ids=lambda p: p.name)
def test_session_never_imports_transport(path: Path) -> None:
    """A board session is handed its connection; the transport knows sessions, not the reverse."""
    assert not {m for m in our_imports(path) if m.startswith("server.transport")}


@pytest.mark.parametrize("path", files("server/conversation"), ids=lambda p: p.name)
def test_conversation_core_knows_no_endpoint(path: Path) -> None:
    """The core talks to endpoints only through ConversationHost: no socket, no xiaozhi
    protocol, no Opus, no board session, no device-specific tool clients."""
    forbidden = ("server.session", "server.transport", "server.protocol", "server.audio.opus", "server.devices",
                 "server.xiaomi")
    assert not {m for m in our_imports(path) if m.startswith(forbidden)}


@pytest.mark.parametrize("path", files("server/session") + files("server/conversation"), ids=lambda p: p.name)
def test_messages_are_built_from_protocol_types(path: Path) -> None:
    """What a session sends is a server.protocol message, never a hand-written dict."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    literal_types = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Dict)
                     and any(isinstance(k, ast.Constant) and k.value == "type" for k in node.keys)]
    assert literal_types == []
