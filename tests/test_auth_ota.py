"""Tokens and the OTA answer, as pure functions."""

from __future__ import annotations

from pathlib import Path

from server.transport.auth import TokenAuth, load_or_create_secret
from server.transport.ota import find_newer_firmware, ota_response, parse_version, websocket_url_for


def make(enabled: bool = True, allowed: tuple[str, ...] = ()) -> TokenAuth:
    return TokenAuth(secret=b"k" * 32, ttl_seconds=3600, enabled=enabled, allowed_devices=frozenset(allowed))


def test_token_round_trip() -> None:
    a = make()
    token = a.mint("AA:BB:CC:DD:EE:FF", "client-1", now=1000)
    assert a.verify(token, "aa:bb:cc:dd:ee:ff", "client-1", now=2000) is None
    assert not a.check("aa:bb:cc:dd:ee:ff", "client-1", f"Bearer {token}").ok  # real clock: expired
    fresh = a.mint("aa:bb:cc:dd:ee:ff", "client-1", generation=7)
    assert a.check("aa:bb:cc:dd:ee:ff", "client-1", f"Bearer {fresh}").generation == 7
    assert a.check("aa:bb:cc:dd:ee:ff", "client-1", fresh).ok  # without "Bearer "


def test_token_is_bound_to_device_client_and_secret() -> None:
    a = make()
    token = a.mint("aa:bb:cc:dd:ee:ff", "client-1")
    assert "signature" in (a.verify(token, "aa:bb:cc:dd:ee:00", "client-1") or "")
    assert "signature" in (a.verify(token, "aa:bb:cc:dd:ee:ff", "client-2") or "")
    other = TokenAuth(secret=b"z" * 32, ttl_seconds=3600, enabled=True)
    assert other.verify(token, "aa:bb:cc:dd:ee:ff", "client-1") is not None


def test_expired_and_malformed() -> None:
    a = make()
    token = a.mint("d", "c", now=0)
    assert a.verify(token, "d", "c", now=10_000) == "expired token"
    for bad in ("", "x", "v1.abc.def", "v2.1.x", "v1.1"):
        assert a.verify(bad, "d", "c") is not None
    assert a.check("d", "c", "").reason == "no token"
    assert a.check("d", "c", "Bearer ").reason == "no token"


def test_malformed_tokens_are_rejections_not_exceptions() -> None:
    """Issue 10: `v1.².x` (a digit isdigit() accepts but int() does not) and non-ASCII
    signatures used to raise (HTTP 500 with a traceback)."""
    a = make()
    good = a.mint("d", "c")
    sig = good.rsplit(".", 1)[1]
    for bad in ("v1.².x", "v2.0.²³.x", "v2.0.99999999999." + sig, good[:-1] + "é", good[:-2] + "\udcff",
                "v2.0.1." + "é" * 43, "v2.٣.1." + sig, "Bearer " + "a" * 100_000, good + "x", "v2..."):
        assert a.check("d", "c", bad).reason is not None


def test_allow_list_and_disabled() -> None:
    a = make(allowed=("aa:bb:cc:dd:ee:ff",))
    assert a.check("AA:BB:CC:DD:EE:FF", "", "").allow_listed
    assert make(enabled=False).check("x", "y", "").ok


def test_secret_persists(tmp_path: Path) -> None:
    p = tmp_path / "data" / "auth_secret"
    first = load_or_create_secret(p)
    assert load_or_create_secret(p) == first
    assert (p.stat().st_mode & 0o777) == 0o600


def test_version_parsing() -> None:
    assert parse_version("2.4.2") == (2, 4, 2)
    assert parse_version("v2") is None and parse_version("2..1") is None and parse_version("") is None


def test_firmware_only_when_newer(tmp_path: Path) -> None:
    d = tmp_path / "fw"
    assert find_newer_firmware(d, "bread", "2.4.2") is None  # no folder
    d.mkdir()
    (d / "bread_2.4.2.bin").write_bytes(b"x")
    (d / "other_9.9.9.bin").write_bytes(b"x")
    (d / "bread_v3.bin").write_bytes(b"x")  # not a plain version: never offered
    assert find_newer_firmware(d, "bread", "2.4.2") is None
    (d / "bread_2.5.0.bin").write_bytes(b"x")
    (d / "2.4.9.bin").write_bytes(b"x")
    fw = find_newer_firmware(d, "bread", "2.4.2")
    assert fw is not None and fw.version == "2.5.0"
    assert find_newer_firmware(d, "other", "1.0").version == "9.9.9"


def test_ws_url_from_host() -> None:
    assert websocket_url_for("192.168.1.10:8003", "", 8000, "/xiaozhi/v1/") == "ws://192.168.1.10:8000/xiaozhi/v1/"
    assert websocket_url_for("myhost", "", 8000, "/x/") == "ws://myhost:8000/x/"
    assert websocket_url_for("[::1]:8003", "", 8000, "/x/") == "ws://[::1]:8000/x/"
    assert websocket_url_for("h:1", "wss://example.org/ws", 8000, "/x/") == "wss://example.org/ws"


def test_ota_response_shape() -> None:
    r = ota_response(ws_url="ws://h:8000/xiaozhi/v1/", token="", framing_version=1, timezone_offset_minutes=480,
                     device_version="2.4.2", firmware=None, firmware_url="", now_ms=123)
    assert r == {
        "server_time": {"timestamp": 123, "timezone_offset": 480},
        "firmware": {"version": "2.4.2", "url": ""},
        "websocket": {"url": "ws://h:8000/xiaozhi/v1/", "token": ""},
    }
    assert "mqtt" not in r and "activation" not in r
    r3 = ota_response(ws_url="u", token="t", framing_version=3, timezone_offset_minutes=0, device_version="1",
                      firmware=None, firmware_url="")
    assert r3["websocket"]["version"] == 3
