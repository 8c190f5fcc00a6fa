"""Device ids from headers, query strings and OTA bodies: only MAC or UUID shapes pass; missing,
`None`, `null`, empty or malformed ones get a per-connection identity (or the client id), never a
shared one, and the fallback is logged once."""

from __future__ import annotations

import logging

import pytest

from server.transport import device_id as mod
from server.transport.device_id import (
    is_valid_device_id,
    loggable,
    normalize_client_id,
    normalize_device_id,
    resolve_identity,
    safe_client_id,
)

PYX_CLIENT = "6f1c3c8e-2b7a-4d7e-9b3a-0c4f5e6a7b8c"


@pytest.fixture(autouse=True)
def fresh_log_memory() -> None:
    mod._logged.clear()


@pytest.mark.parametrize(("raw", "canonical"), [
    ("aa:bb:cc:dd:ee:ff", "aa:bb:cc:dd:ee:ff"),
    ("AA:BB:CC:DD:EE:FF", "aa:bb:cc:dd:ee:ff"),
    ("  02:00:00:00:00:01 ", "02:00:00:00:00:01"),
    ("aa-bb-cc-dd-ee-ff", "aa:bb:cc:dd:ee:ff"),
    ("aabbccddeeff", "aa:bb:cc:dd:ee:ff"),
    (PYX_CLIENT.upper(), PYX_CLIENT),
])
def test_mac_and_uuid_shapes_are_accepted_and_canonical(raw: str, canonical: str) -> None:
    assert normalize_device_id(raw) == canonical
    assert is_valid_device_id(raw)


@pytest.mark.parametrize("raw", [
    None, "", "   ", "None", "none", "null", "NULL", "undefined", "0", "device-1", "web_test_device",
    "aa:bb:cc:dd:ee", "aa:bb:cc:dd:ee:ff:00", "aa:bb-cc:dd:ee:ff", "gg:bb:cc:dd:ee:ff",
    "00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff", "00000000-0000-0000-0000-000000000000",
    "aa:bb:cc:dd:ee:ff\nINFO forged line", "aa:bb:cc:dd:ee:ff%0A", "x" * 500, 12345, ["aa:bb:cc:dd:ee:ff"],
])
def test_everything_else_is_rejected(raw: object) -> None:
    assert normalize_device_id(raw) is None


def test_py_xiaozhi_none_header_gets_its_client_id() -> None:
    # py-xiaozhi --skip-activation with a fresh config: `Device-Id: None`, a real UUID client id.
    identity = resolve_identity("None", PYX_CLIENT, remote="127.0.0.1:5000")
    assert identity.device_id == PYX_CLIENT and identity.source == "client_id" and not identity.anonymous


def test_no_usable_id_at_all_gets_a_fresh_identity_per_connection() -> None:
    ids = {resolve_identity(raw, "web_test_client", remote="127.0.0.1:5000").device_id
           for raw in ("None", "None", None, "", "null", "garbage")}
    assert len(ids) == 6  # never shared, not even by two connections sending the same "None"
    for value in ids:
        assert is_valid_device_id(value) and value not in ("none", "null", "")
    assert resolve_identity("None", None).anonymous


def test_a_valid_device_id_wins_over_the_client_id() -> None:
    identity = resolve_identity("AA:BB:CC:DD:EE:01", PYX_CLIENT)
    assert (identity.device_id, identity.source, identity.client_id) == ("aa:bb:cc:dd:ee:01", "device_id", PYX_CLIENT)


def test_fallback_is_logged_once_and_never_raw(caplog: pytest.LogCaptureFixture) -> None:
    forged = "None\r\n2026-01-01 INFO [server] admin logged in"
    with caplog.at_level(logging.INFO, logger="server.device_id"):
        for _ in range(5):
            resolve_identity(forged, None, remote="10.0.0.7:4000")
    records = [r for r in caplog.records if r.name == "server.device_id"]
    assert len(records) == 1
    line = records[0].getMessage()
    assert "\n" not in line and "\r" not in line and "\\r\\n" in line and "per-connection" in line


def test_client_ids() -> None:
    assert normalize_client_id(PYX_CLIENT) == PYX_CLIENT
    assert normalize_client_id("aa:bb:cc:dd:ee:ff") is None  # a MAC is not a client id
    assert safe_client_id("web_test_client") == "web_test_client"  # kept for token binding
    assert safe_client_id("None") == safe_client_id("null") == safe_client_id(None) == ""
    assert safe_client_id("c\nforged") == ""


def test_loggable_escapes_and_bounds() -> None:
    assert loggable(None) == "<missing>"
    assert "\n" not in loggable("a\nb") and loggable("a\nb") == "'a\\nb'"
    assert loggable("x" * 100).endswith("...") and len(loggable("x" * 100)) < 50
    assert loggable("设备").isascii()
