"""Issue 10, item 6: session times compared as instants, a warning for ``ws://`` over a
network, the admin token from a systemd credential, and the hardening of the units."""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from core.database import StoreError
from core.shapes import utc_timestamp
from device.config import parse_config
from server.app import create_app
from server.hub import Hub
from server.store import ServerStore
from server.tokens import (
    ADMIN_TOKEN_CREDENTIAL,
    ADMIN_TOKEN_ENV,
    ADMIN_TOKEN_FILE,
    CREDENTIALS_DIRECTORY_ENV,
    admin_token,
)
from sync import daemon
from sync.config import insecure_url_warning
from tests import system
from tests.conftest import REPO

ADMIN = "admin-token-for-tests"

# -- session time windows ----------------------------------------------------------------


@pytest.mark.parametrize(("given", "stored"), [
    ("2026-11-28T14:30:00+02:00", "2026-11-28T12:30:00+00:00"),
    ("2026-11-28T12:30:00Z", "2026-11-28T12:30:00+00:00"),
    ("2026-11-28T12:30:00+00:00", "2026-11-28T12:30:00+00:00"),
    ("2026-11-28T00:15:00.250+05:30", "2026-11-27T18:45:00.250000+00:00"),
    ("2026-11-28T23:00:00-05:00", "2026-11-29T04:00:00+00:00"),  # the next day in UTC
])
def test_utc_timestamp_spells_each_instant_one_way(given: str, stored: str) -> None:
    assert utc_timestamp(given) == stored


@pytest.mark.parametrize("value", [
    "2026-11-28T14:30:00",        # no offset: which instant is it?
    "2026-11-28", "9am", "", None, 1700000000,
    "0001-01-01T00:30:00+01:00",  # before year 1 once in UTC
    "9999-12-31T23:30:00-01:00",  # after year 9999 once in UTC
])
def test_utc_timestamp_refuses_what_is_not_one_instant(value: object) -> None:
    with pytest.raises(ValueError, match="UTC offset"):
        utc_timestamp(value)


@pytest.fixture
async def api(tmp_path: Path, database: str | None,
              server_target: Path | str) -> AsyncIterator[httpx.AsyncClient]:
    """The real server application on a real store (on each storage), in this process.

    Its state is set here as its lifespan would (as in test_sync_model.py): httpx's ASGI
    transport does not run lifespans.
    """
    app = create_app(tmp_path, ADMIN, database=database)
    store = await ServerStore.open(server_target)
    app.state.store, app.state.hub, app.state.admin_token = store, Hub(), ADMIN
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://server",
                                 headers={"Authorization": f"Bearer {ADMIN}"}) as client:
        yield client
    await store.close()


async def test_a_session_that_ends_before_it_starts_is_refused_across_offsets(
        api: httpx.AsyncClient) -> None:
    # As text, the end sorts after the start; as instants it is 1.5 h before it.
    answer = await api.put("/api/sessions/s1", json={
        "name": "Workshop", "validate_registrants": True,
        "starts_at": "2026-11-28T14:00:00+00:00", "ends_at": "2026-11-28T14:30:00+02:00"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == (
        "session: ends_at 2026-11-28T12:30:00+00:00 is before starts_at "
        "2026-11-28T14:00:00+00:00 (in UTC)")
    assert "s1" not in {s["session_id"] for s in (await api.get("/api/sessions")).json()}


async def test_a_session_that_ends_after_it_starts_is_taken_and_stored_in_utc(
        api: httpx.AsyncClient) -> None:
    # As text, the end sorts before the start (the old check refused it); as instants
    # the session runs from 12:30 to 13:00 UTC.
    answer = await api.put("/api/sessions/s2", json={
        "name": "Keynote", "validate_registrants": False,
        "starts_at": "2026-11-28T14:30:00+02:00", "ends_at": "2026-11-28T13:00:00Z"})
    assert answer.status_code == 201, answer.text
    normalised = {"starts_at": "2026-11-28T12:30:00+00:00",
                  "ends_at": "2026-11-28T13:00:00+00:00"}
    assert answer.json() == {"session_id": "s2", "name": "Keynote",
                             "validate_registrants": False, **normalised, "created": True}
    listed = {s["session_id"]: s for s in (await api.get("/api/sessions")).json()}
    assert {k: listed["s2"][k] for k in normalised} == normalised


async def test_an_instant_session_and_open_ends_are_taken(api: httpx.AsyncClient) -> None:
    same = await api.put("/api/sessions/s3", json={
        "name": "Photo", "validate_registrants": False,
        "starts_at": "2026-11-28T10:00:00+01:00", "ends_at": "2026-11-28T09:00:00Z"})
    assert same.status_code == 201, same.text
    open_end = await api.put("/api/sessions/s3", json={
        "name": "Photo", "validate_registrants": False, "starts_at": "2026-11-28T10:00:00Z",
        "ends_at": None})
    assert open_end.status_code == 200 and open_end.json()["ends_at"] is None


async def test_a_time_outside_the_utc_calendar_is_a_400_naming_the_field(
        api: httpx.AsyncClient) -> None:
    answer = await api.put("/api/sessions/s4", json={
        "name": "Early", "validate_registrants": False,
        "starts_at": "0001-01-01T00:30:00+01:00"})
    assert answer.status_code == 400
    assert "starts_at" in answer.json()["error"] and "9999" in answer.json()["error"]


# -- ws:// to another machine --------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "ws://127.0.0.1:8765/sync", "ws://127.9.8.7/sync", "ws://[::1]:8765/sync",
    "ws://localhost:8765/sync", "ws://LocalHost./sync", "ws://[::ffff:127.0.0.1]/sync",
    "wss://10.0.0.5:8765/sync", "wss://checkin.example.org/sync",
])
def test_no_warning_for_wss_or_this_machine(url: str) -> None:
    assert insecure_url_warning(url) is None


@pytest.mark.parametrize("url", [
    "ws://10.0.0.5:8765/sync", "ws://checkin.example.org/sync", "ws://[fe80::1]/sync",
    "ws://128.0.0.1/sync", "ws://0.0.0.0/sync",
    "ws://localhost.example.org/sync",  # a name is looked up in DNS: it may be anywhere
    "ws://127.0.0.1.nip.io/sync",
])
def test_ws_to_another_machine_names_the_risk(url: str) -> None:
    warning = insecure_url_warning(url)
    assert warning is not None and url in warning
    for words in ("device token", "every scan", "read or replayed", "use wss://"):
        assert words in warning


def _config(tmp_path: Path, url: str):
    return parse_config({
        "device": {"id": "door-1", "data_dir": "data"},
        "camera": {"source": "images:badges"},
        "gpio": {"pin_factory": "mock", "green": 17, "red": 27, "buzzer": 22},
        "server": {"url": url, "token_file": "device.token"},
    }, tmp_path / "door.toml")


@pytest.mark.parametrize(("url", "warned"), [("ws://192.0.2.7:8765/sync", True),
                                             ("ws://127.0.0.1:8765/sync", False),
                                             ("wss://192.0.2.7:8765/sync", False)])
async def test_the_sync_daemon_warns_at_start_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        url: str, warned: bool) -> None:
    async def no_store(data_dir: Path) -> None:  # stop run_sync right after start-up
        raise StoreError(f"no store in {data_dir} (test)")

    monkeypatch.setattr(daemon.SyncStore, "open", no_store)
    with caplog.at_level(logging.WARNING, logger="checkin.sync"):
        assert await daemon.run_sync(_config(tmp_path, url)) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w for w in warnings if "use wss://" in w] == (
        [insecure_url_warning(url)] if warned else [])


# -- the admin token: environment, then credential, then data dir --------------------------


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No token in the environment; an empty credentials directory; returns it."""
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    monkeypatch.setenv(CREDENTIALS_DIRECTORY_ENV, str(credentials))
    (tmp_path / "data").mkdir()
    return credentials


def test_the_environment_wins_over_the_credential(
        token_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (token_env / ADMIN_TOKEN_CREDENTIAL).write_text("from-credential\n")
    monkeypatch.setenv(ADMIN_TOKEN_ENV, " from-env ")
    assert admin_token(tmp_path / "data") == ("from-env", f"from ${ADMIN_TOKEN_ENV}")


def test_the_credential_wins_over_the_data_dir_file(token_env: Path, tmp_path: Path) -> None:
    (token_env / ADMIN_TOKEN_CREDENTIAL).write_text("from-credential\n")
    (tmp_path / "data" / ADMIN_TOKEN_FILE).write_text("from-file\n")
    token, source = admin_token(tmp_path / "data")
    assert token == "from-credential"
    assert source == f"from credential {token_env / ADMIN_TOKEN_CREDENTIAL}"


def test_without_the_credential_the_data_dir_file_is_made_and_kept(
        token_env: Path, tmp_path: Path) -> None:
    token, source = admin_token(tmp_path / "data")
    path = tmp_path / "data" / ADMIN_TOKEN_FILE
    assert source == f"made now, kept in {path}" and len(token) >= 43
    assert path.stat().st_mode & 0o777 == 0o600
    assert admin_token(tmp_path / "data") == (token, f"kept in {path}")


def test_an_empty_credential_counts_as_absent_and_is_reported(
        token_env: Path, tmp_path: Path) -> None:
    (token_env / ADMIN_TOKEN_CREDENTIAL).write_text(" \n")
    (tmp_path / "data" / ADMIN_TOKEN_FILE).write_text("from-file\n")
    token, source = admin_token(tmp_path / "data")
    assert token == "from-file"
    assert source.endswith(f"(credential {token_env / ADMIN_TOKEN_CREDENTIAL} is empty)")


def test_the_server_answers_to_the_credential_token(
        token_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end: ``checkin server`` started as the unit starts it (``LoadCredential=``
    sets ``$CREDENTIALS_DIRECTORY``, no token in the environment) uses that token."""
    credential = token_env / ADMIN_TOKEN_CREDENTIAL
    credential.write_text("credential-admin-token\n")
    env = system.process_env()
    del env[ADMIN_TOKEN_ENV]
    env[CREDENTIALS_DIRECTORY_ENV] = str(token_env)
    monkeypatch.setattr(system, "process_env", lambda: env)
    server = system.Server(tmp_path / "server").start()
    try:
        assert server.client.get(
            "/api/sessions", headers={"Authorization": "Bearer credential-admin-token"}
        ).status_code == 200
        assert server.client.get("/api/sessions").status_code == 401  # the usual test token
    finally:
        server.kill()
    assert f"admin token from credential {credential}" in server.log.read_text()


# -- the systemd units ---------------------------------------------------------------------

UNITS = REPO / "systemd"
SERVICES = ("checkin-door.service", "checkin-server.service", "checkin-sync.service")


def unit_settings(path: Path, wanted: str = "Service") -> dict[str, list[str]]:
    """The settings of a unit file's section *wanted*, each key with every value it is given.

    Not configparser: unit files repeat keys (LoadCredential=, DeviceAllow=) and an
    empty assignment (CapabilityBoundingSet=) means something, so both are kept.
    """
    settings: dict[str, list[str]] = {}
    section = None
    logical = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):  # continued on the next line
            logical += line[:-1] + " "
            continue
        line, logical = logical + line, ""
        if line.startswith("["):
            section = line.strip("[]")
        elif section == wanted:
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def one(settings: dict[str, list[str]], key: str) -> str:
    values = settings.get(key, [])
    assert len(values) == 1, f"{key}= given {len(values)} times: {values}"
    return values[0]


def memory_bytes(value: str) -> int:
    match = re.fullmatch(r"(\d+)([KMGT]?)", value)
    assert match, f"MemoryMax={value}: expected a size like 512M"
    return int(match[1]) << {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[match[2]]


@pytest.mark.parametrize("service", SERVICES)
def test_every_unit_is_bounded_and_confined(service: str) -> None:
    settings = unit_settings(UNITS / service)
    assert one(settings, "UMask") == "0077"
    assert one(settings, "SystemCallFilter") == "@system-service"
    assert one(settings, "SystemCallErrorNumber") == "EPERM"
    assert one(settings, "SystemCallArchitectures") == "native"
    assert 64 << 20 <= memory_bytes(one(settings, "MemoryMax")) <= 1 << 30
    assert int(one(settings, "LimitNOFILE")) >= 1024
    assert one(settings, "CapabilityBoundingSet") == ""  # no capability at all
    for key in ("NoNewPrivileges", "ProtectKernelTunables", "ProtectKernelModules",
                "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock",
                "ProtectHostname", "RestrictNamespaces", "RestrictSUIDSGID",
                "LockPersonality", "PrivateTmp", "ProtectHome"):
        assert one(settings, key) == "yes", key
    assert one(settings, "ProtectSystem") == "strict"


def test_the_server_gets_its_key_and_token_as_credentials() -> None:
    settings = unit_settings(UNITS / "checkin-server.service")
    assert one(settings, "DynamicUser") == "yes"
    assert sorted(settings["LoadCredential"]) == [
        f"{ADMIN_TOKEN_CREDENTIAL}:/etc/checkin/admin-token",
        "tls-key:/etc/checkin/tls/key.pem"]
    command = one(settings, "ExecStart").split()
    assert command[command.index("--keyfile") + 1] == "%d/tls-key"
    assert "/etc/checkin/tls/key.pem" not in command
    # The token is a credential now, not an environment file other processes may see.
    assert "EnvironmentFile" not in settings
    assert one(settings, "MemoryMax") == "1G" and one(settings, "LimitNOFILE") == "65536"


def test_the_door_cannot_read_the_device_token() -> None:
    """The path hidden from the door is the one the example config and the docs use."""
    example = tomllib.loads((REPO / "config" / "door.example.toml").read_text())
    token_file = example["server"]["token_file"]
    settings = unit_settings(UNITS / "checkin-door.service")
    assert f"-{token_file}" in settings["InaccessiblePaths"]
    assert one(settings, "PrivateNetwork") == "yes"
    assert token_file in (REPO / "docs" / "provisioning.md").read_text()
    # The sync daemon, which does need it, must not have it hidden.
    assert "InaccessiblePaths" not in unit_settings(UNITS / "checkin-sync.service")


def test_unit_settings_reads_repeated_keys_continuations_and_empty_values(
        tmp_path: Path) -> None:
    unit = tmp_path / "x.service"
    unit.write_text("[Unit]\nDescription=x\n[Service]\n# comment\nExecStart=/bin/a \\\n"
                    "    --b c\nDeviceAllow=/dev/a r\nDeviceAllow=/dev/b rw\n"
                    "CapabilityBoundingSet=\n[Install]\nWantedBy=multi-user.target\n")
    assert unit_settings(unit) == {"ExecStart": ["/bin/a  --b c"],
                                   "DeviceAllow": ["/dev/a r", "/dev/b rw"],
                                   "CapabilityBoundingSet": [""]}


# systemd-analyze verify: tests/test_systemd.py (with the venv's real checkin).
