"""``checkin provision``: the pure part (CSV, template, what to do per door), then the real
command against a real server: created, unchanged on a second run, reassigned, a token
missing from OUT, ``--rotate``, bad input that changes nothing, and a provisioned door's
sync daemon connecting with what was written."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from checkin.harness import CHECKIN, Process, door_config, toml, wait_for
from checkin.provision import (
    DEVICE_TOKEN_FILE,
    Action,
    ProvisionError,
    Row,
    decide,
    parse_devices,
    render_config,
    set_keys,
    sync_url,
)
from device.config import load_config
from server.tokens import token_hash
from sync.device_store import STORE_FILE
from tests.conftest import REPO
from tests.system import ADMIN, Device, Server, process_env, read_only_query

EXAMPLE = REPO / "config" / "door.example.toml"


# -- the pure part -------------------------------------------------------------------


def test_devices_csv_with_or_without_a_header_blank_lines_and_comments() -> None:
    text = "device_id,session_id\n\n# hall A\ndoor-1, keynote\ndoor-2,keynote\n"
    assert parse_devices(text, "d.csv") == [Row("door-1", "keynote"), Row("door-2", "keynote")]
    assert parse_devices("door-1,s1\n", "d.csv") == [Row("door-1", "s1")]


def test_every_bad_row_is_named_by_its_line() -> None:
    text = "door-1,s1\ndoor 2,s1\ndoor-3\ndoor-1,s2\ndoor-4,s/1\n"
    with pytest.raises(ProvisionError) as caught:
        parse_devices(text, "d.csv")
    problems = caught.value.problems
    assert len(problems) == 4
    assert problems[0].startswith('d.csv line 2: device_id "door 2": expected 1-64 letters')
    assert problems[1].startswith('d.csv line 3: "door-3": expected two fields')
    assert problems[2] == "d.csv line 4: device 'door-1' is already on line 1"
    assert problems[3].startswith('d.csv line 5: session_id "s/1": expected')


def test_an_empty_devices_file_is_an_error() -> None:
    with pytest.raises(ProvisionError, match="no devices"):
        parse_devices("device_id,session_id\n", "d.csv")


@pytest.mark.parametrize(("server", "url"), [
    ("https://checkin.example.org:8765", "wss://checkin.example.org:8765/sync"),
    ("https://checkin.example.org/", "wss://checkin.example.org/sync"),
    ("http://127.0.0.1:8765", "ws://127.0.0.1:8765/sync"),
])
def test_the_doors_url_is_the_servers_sync_endpoint(server: str, url: str) -> None:
    assert sync_url(server) == url


@pytest.mark.parametrize("server", ["wss://host/sync", "host:8765", "https://"])
def test_a_server_that_is_not_a_base_url_is_refused(server: str) -> None:
    with pytest.raises(ProvisionError, match="--server"):
        sync_url(server)


def test_set_keys_replaces_adds_and_keeps_the_rest() -> None:
    text = '# top\n[device]\nid = "old"   # unique\n\n[gpio]\ngreen = 17\n'
    out = set_keys(set_keys(text, "device", {"id": "new", "data_dir": "/d"}),
                   "server", {"url": "wss://h/sync"})
    assert out.startswith('# top\n[device]\ndata_dir = "/d"\nid = "new"   # unique\n')
    assert tomllib.loads(out) == {"device": {"id": "new", "data_dir": "/d"},
                                  "gpio": {"green": 17}, "server": {"url": "wss://h/sync"}}


def test_the_example_config_makes_a_door_config() -> None:
    text = render_config(EXAMPLE.read_text(), "t.toml", "door-7", "wss://h:1/sync",
                         DEVICE_TOKEN_FILE)
    data = tomllib.loads(text)
    assert data["device"]["id"] == "door-7"
    assert data["server"]["url"] == "wss://h:1/sync"
    assert data["server"]["token_file"] == DEVICE_TOKEN_FILE
    assert data["gpio"] == tomllib.loads(EXAMPLE.read_text())["gpio"]


def test_a_template_the_door_would_refuse_is_named() -> None:
    template = EXAMPLE.read_text().replace("red = 27", "red = 17")
    with pytest.raises(ProvisionError, match=r"template t.toml: \[gpio\] green, red"):
        render_config(template, "t.toml", "door-7", "wss://h/sync", DEVICE_TOKEN_FILE)


def test_a_key_written_across_lines_is_refused_not_silently_kept() -> None:
    template = EXAMPLE.read_text().replace('url = "wss://checkin.example.org/sync"',
                                           'url = """\nwss://checkin.example.org/sync"""')
    with pytest.raises(ProvisionError, match=r"template t.toml: cannot set"):
        render_config(template, "t.toml", "door-7", "wss://h/sync", DEVICE_TOKEN_FILE)


@pytest.mark.parametrize(("on_server", "have_token", "rotate", "action"), [
    (None, False, False, Action.CREATE),
    (None, True, True, Action.CREATE),
    ({"session_id": "s1"}, True, False, Action.UNCHANGED),
    ({"session_id": "s0"}, True, False, Action.REASSIGN),
    ({"session_id": "s1"}, False, False, Action.MISSING_TOKEN),
    ({"session_id": "s1"}, False, True, Action.ROTATE),
    ({"session_id": "s1"}, True, True, Action.ROTATE),
])
def test_what_is_done_for_each_door(on_server: dict | None, have_token: bool, rotate: bool,
                                    action: Action) -> None:
    assert decide(Row("d", "s1"), on_server, have_token, rotate) is action


# -- the command against a real server -----------------------------------------------


@pytest.fixture(scope="module")
def storage() -> str:
    """The server of these tests on SQLite alone (conftest's runs it on each storage): the
    command's decisions do not depend on it, and the device API it calls is tested on both
    (test_server_api.py)."""
    return "sqlite"


@pytest.fixture
def fleet(tmp_path: Path, server: Server) -> Server:
    for session in ("s1", "s2"):
        server.api("PUT", f"/api/sessions/{session}",
                   {"name": session, "validate_registrants": False})
    return server


def provision(tmp_path: Path, server: Server, rows: str, *extra: str,
              template: Path = EXAMPLE, admin: str | None = ADMIN
              ) -> subprocess.CompletedProcess[str]:
    devices = tmp_path / "devices.csv"
    devices.write_text(rows)
    env = process_env()
    env.pop("CHECKIN_ADMIN_TOKEN", None)
    if admin is not None:
        env["CHECKIN_ADMIN_TOKEN"] = admin
    return subprocess.run([*CHECKIN, "provision", "--server", server.url, "--template",
                           str(template), "--devices", str(devices), "--out",
                           str(tmp_path / "out"), *extra],
                          env=env, capture_output=True, text=True, timeout=120)


def server_tokens(server: Server) -> dict[str, str | None]:
    return dict(read_only_query(server.store_location, "SELECT device_id, token_hash FROM devices"))


def token_of(tmp_path: Path, device_id: str) -> str:
    return (tmp_path / "out" / device_id / "device.token").read_text().strip()


def test_provision_creates_then_changes_nothing_then_reassigns(tmp_path: Path,
                                                               fleet: Server) -> None:
    rows = "device_id,session_id\ndoor-1,s1\ndoor-2,s1\n"
    first = provision(tmp_path, fleet, rows)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["door-1: created (session s1)",
                                         "door-2: created (session s1)"]
    for device_id in ("door-1", "door-2"):
        token_file = tmp_path / "out" / device_id / "device.token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert server_tokens(fleet)[device_id] == token_hash(token_of(tmp_path, device_id))
        config = tomllib.loads((tmp_path / "out" / device_id / "door.toml").read_text())
        assert config["device"]["id"] == device_id
        assert config["server"] == tomllib.loads(EXAMPLE.read_text())["server"] | {
            "url": fleet.sync_url, "token_file": DEVICE_TOKEN_FILE}
    before = server_tokens(fleet)

    again = provision(tmp_path, fleet, rows)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == ["door-1: unchanged (session s1)",
                                         "door-2: unchanged (session s1)"]
    assert server_tokens(fleet) == before

    template = tmp_path / "template.toml"
    template.write_text(EXAMPLE.read_text().replace("fps = 30", "fps = 15"))
    changed = provision(tmp_path, fleet, rows, template=template)
    assert changed.stdout.splitlines() == ["door-1: unchanged (session s1); door.toml updated",
                                           "door-2: unchanged (session s1); door.toml updated"]
    assert "fps = 15" in (tmp_path / "out" / "door-1" / "door.toml").read_text()

    moved = provision(tmp_path, fleet, "door-1,s2\ndoor-2,s1\n", template=template)
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.splitlines()[0] == "door-1: reassigned (session s2, moved from session s1)"
    assert server_tokens(fleet) == before
    assert {d["device_id"]: d["session_id"] for d in fleet.api("GET", "/api/devices")} == {
        "door-1": "s2", "door-2": "s1"}


def test_a_token_not_in_out_needs_rotate_and_the_others_are_still_done(
        tmp_path: Path, fleet: Server) -> None:
    assert provision(tmp_path, fleet, "door-1,s1\n").returncode == 0
    (tmp_path / "out" / "door-1" / "device.token").unlink()
    before = server_tokens(fleet)

    result = provision(tmp_path, fleet, "door-1,s1\ndoor-2,s1\n")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("door-1: failed: it exists on the server but its token is not in")
    assert "--rotate" in lines[0]
    assert lines[1] == "door-2: created (session s1)"
    assert server_tokens(fleet)["door-1"] == before["door-1"]  # not revoked

    rotated = provision(tmp_path, fleet, "door-1,s1\ndoor-2,s1\n", "--rotate")
    assert rotated.returncode == 0, rotated.stderr
    assert rotated.stdout.splitlines() == ["door-1: rotated (session s1)",
                                           "door-2: rotated (session s1)"]
    after = server_tokens(fleet)
    for device_id in ("door-1", "door-2"):
        assert after[device_id] == token_hash(token_of(tmp_path, device_id))
    assert after["door-1"] != before["door-1"]


def test_a_token_in_out_the_server_no_longer_accepts_needs_rotate(tmp_path: Path,
                                                                   fleet: Server) -> None:
    assert provision(tmp_path, fleet, "door-1,s1\n").returncode == 0
    token_file = tmp_path / "out" / "door-1" / "device.token"
    token_file.write_text("an-old-token\n")  # e.g. rotated meanwhile from another --out
    result = provision(tmp_path, fleet, "door-1,s1\n")
    assert result.returncode == 1
    assert result.stdout.startswith("door-1: failed: it exists on the server but the server "
                                    "no longer accepts the token in")
    assert "--rotate" in result.stdout
    assert token_file.read_text() == "an-old-token\n"


def test_a_revoked_door_is_created_again(tmp_path: Path, fleet: Server) -> None:
    assert provision(tmp_path, fleet, "door-1,s1\n").returncode == 0
    fleet.api("DELETE", "/api/devices/door-1", expect=204)
    result = provision(tmp_path, fleet, "door-1,s1\n")
    assert result.stdout == "door-1: created (session s1)\n"
    assert server_tokens(fleet)["door-1"] == token_hash(token_of(tmp_path, "door-1"))


def test_an_unknown_session_fails_that_door_only(tmp_path: Path, fleet: Server) -> None:
    result = provision(tmp_path, fleet, "door-1,nope\ndoor-2,s1\n")
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "door-1: failed: PUT /api/devices/door-1: HTTP 404 no session 'nope'",
        "door-2: created (session s1)"]
    assert not (tmp_path / "out" / "door-1").exists()


@pytest.mark.parametrize(("rows", "admin", "expected"), [
    ("door-1,s1\ndoor 2,s1\n", ADMIN, 'line 2: device_id "door 2"'),
    ("door-1,s1\n", None, "$CHECKIN_ADMIN_TOKEN is not set"),
    ("door-1,s1\n", "wrong", "the server refused the admin token"),
])
def test_bad_input_changes_nothing_and_exits_2(tmp_path: Path, fleet: Server, rows: str,
                                               admin: str | None, expected: str) -> None:
    result = provision(tmp_path, fleet, rows, admin=admin)
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert server_tokens(fleet) == {}
    assert not (tmp_path / "out").exists()


def test_a_bad_template_changes_nothing(tmp_path: Path, fleet: Server) -> None:
    template = tmp_path / "bad.toml"
    template.write_text(EXAMPLE.read_text().replace('decoder = "pipeline"', 'decoder = "zbar"'))
    result = provision(tmp_path, fleet, "door-1,s1\n", template=template)
    assert result.returncode == 2
    assert f"template {template}: [scanner] decoder" in result.stderr
    assert server_tokens(fleet) == {}


def test_a_stopped_server_is_said_and_exits_1(tmp_path: Path, fleet: Server) -> None:
    fleet.stop()
    result = provision(tmp_path, fleet, "door-1,s1\n")
    assert result.returncode == 1
    assert "cannot reach" in result.stderr and "nothing done" in result.stderr


def test_a_provisioned_door_connects_with_what_was_written(tmp_path: Path,
                                                           fleet: Server) -> None:
    """The written config and token, used as they are: the token file beside the config
    (a relative ``token_file`` in the template), the daemon connects and is told its
    session."""
    template = tmp_path / "template.toml"
    template.write_text(toml(door_config(
        "placeholder", data_dir="data",
        server={"url": "wss://placeholder/sync", "token_file": "device.token",
                "retry_min_seconds": 0.1, "retry_max_seconds": 0.5})))
    assert provision(tmp_path, fleet, "door-1,s1\n", template=template).returncode == 0
    config_file = tmp_path / "out" / "door-1" / "door.toml"
    assert load_config(config_file).server.token_file == config_file.parent / "device.token"
    (config_file.parent / "frames").mkdir()  # the template's camera: images:frames
    check = subprocess.run([*CHECKIN, "config", "check", str(config_file)], env=process_env(),
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    daemon = Process(["sync", "--config", str(config_file)], tmp_path / "sync.log")
    try:
        wait_for(lambda: any(d["connected"] for d in fleet.api("GET", "/api/devices")), 60,
                 "the provisioned door connected", process=daemon)
    finally:
        daemon.stop()


def test_a_broken_doors_waiting_scans_reach_the_server_from_a_copy_of_its_store(
        tmp_path: Path, server: Server, devices: list[Device]) -> None:
    """docs/technicians.md's procedure for a broken Pi, for real: the old card's store
    files (all of ``checkin.sqlite3*``) put in a new door's data dir under the same device
    id and token, and its sync daemon started, upload every scan that was waiting, once,
    even when the same copy is uploaded twice (scan ids)."""
    server.api("PUT", "/api/sessions/s1", {"name": "Workshop", "validate_registrants": True},
               expect=201)
    server.api("POST", "/api/attendees", [{"code": c, "name": c} for c in ("A1", "B2")],
               expect=200)
    server.api("PUT", "/api/sessions/s1/registrants/A1", expect=201)
    old = Device(tmp_path / "old", "door-1", server.sync_url, auth_retry=0.5)
    token = server.provision("door-1", "s1")
    old.token_file.write_text(token + "\n")
    devices.append(old)
    old.start_sync()
    wait_for(lambda: old.registrants() == {"A1"}, 60, "first snapshot", process=old.sync)
    old.stop()  # the link goes, then the Pi dies with scans waiting on its card
    decisions = old.door("A1", "B2")
    assert [d["reason"] for d in decisions] == ["registered", "not_registered"]
    assert old.waiting() == 2

    for name in ("new", "again"):
        new = Device(tmp_path / name, "door-1", server.sync_url)
        new.token_file.write_text(token + "\n")
        new.data_dir.mkdir()
        for part in old.data_dir.glob(f"{STORE_FILE}*"):
            shutil.copy2(part, new.data_dir / part.name)
        devices.append(new)
        new.start_sync()
        wait_for(lambda new=new: new.waiting() == 0, 60, "the old scans uploaded",
                 process=new.sync)
        new.stop()
        stored = [s["scan_id"] for s in server.attendance("s1")["scans"]]
        assert sorted(stored) == sorted(d["scan_id"] for d in decisions)
