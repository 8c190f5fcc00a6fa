"""EdgeTTS's `endpoint` setting: the provider itself points edge-tts at another service (a mirror,
a gateway, the fake Edge server of harness/fakes), without the tests patching edge-tts.

edge-tts keeps one URL per process (`edge_tts.communicate.WSS_URL`), so every test here saves
it with monkeypatch first and gets it back afterwards, and a guard refuses DNS lookups so
nothing can reach Microsoft.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import server.providers.tts.edge as edge_module
from harness.fakes.edge_server import PATH, TRUSTED_CLIENT_TOKEN, FakeEdgeServer
from harness.fakes.net_guard import block_internet
from server.providers.base import ProviderContext
from server.providers.tts.edge import EdgeSettings, EdgeTTS, endpoint_url

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]



@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_tts.communicate

    block_internet(monkeypatch)
    # Restored after each test: the setting changes a process-wide global on purpose.
    monkeypatch.setattr(edge_tts.communicate, "WSS_URL", edge_tts.communicate.WSS_URL)
    monkeypatch.setattr(edge_module, "_applied_endpoint", None)


async def make_tts(**settings: Any) -> EdgeTTS:
    ctx = ProviderContext(root_dir=ROOT, data_dir=ROOT / "data", models_dir=ROOT / "models")
    tts = EdgeTTS(EdgeSettings(**settings), ctx)
    await tts.load()
    return tts


async def test_endpoint_redirects_synthesis_to_another_service() -> None:
    import edge_tts.communicate

    async with FakeEdgeServer() as fake:
        # Given without the token, as a gateway's address would be: the provider adds it.
        tts = await make_tts(voice="en-US-AriaNeural", endpoint=f"ws://127.0.0.1:{fake.port}{PATH}")
        try:
            pcm = b"".join([c.pcm async for c in tts.synthesize("Hello from the mirror.")])
        finally:
            await tts.close()
    applied = edge_tts.communicate.WSS_URL
    assert applied == f"ws://127.0.0.1:{fake.port}{PATH}?TrustedClientToken={TRUSTED_CLIENT_TOKEN}"
    [req] = fake.requests
    assert req.query["TrustedClientToken"] == TRUSTED_CLIENT_TOKEN and "ConnectionId" in req.query
    assert req.text == "Hello from the mirror." and len(pcm) > 24000  # over half a second of speech
    assert "via ws://127.0.0.1" in tts.describe()


async def test_empty_endpoint_leaves_microsofts_url() -> None:
    import edge_tts.communicate
    from edge_tts import constants

    await make_tts()
    assert edge_tts.communicate.WSS_URL == constants.WSS_URL


def test_endpoint_url_keeps_a_given_query() -> None:
    assert endpoint_url("wss://gw.example/edge/v1", "T") == "wss://gw.example/edge/v1?TrustedClientToken=T"
    assert endpoint_url("ws://h:1/p?TrustedClientToken=X&a=1", "T") == "ws://h:1/p?TrustedClientToken=X&a=1"
    assert endpoint_url("ws://h:1/p?a=1", "T") == "ws://h:1/p?a=1&TrustedClientToken=T"


def test_endpoint_must_be_a_websocket_url() -> None:
    for bad in ("http://127.0.0.1:1/edge/v1", "127.0.0.1:1", "ws://"):
        with pytest.raises(ValidationError):
            EdgeSettings(endpoint=bad)


async def test_two_endpoints_in_one_process_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="server.providers")
    await make_tts(endpoint="ws://127.0.0.1:1/a")
    await make_tts(endpoint="ws://127.0.0.1:2/b")
    await make_tts()  # no endpoint of its own, yet it will use the last one
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("replaces" in w and "127.0.0.1:1/a" in w for w in warnings), warnings
    assert any("no endpoint set" in w and "127.0.0.1:2/b" in w for w in warnings), warnings
