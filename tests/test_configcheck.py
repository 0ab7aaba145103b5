"""``checkin config check FILE``: every problem at once, by key, value and expectation;
exit 0 / 2; no hardware, no network. Also: the door and the daemon warn about the same
file problems at start."""

from __future__ import annotations

import argparse
import io
import re
import socket
import subprocess
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checkin.configcheck import problems, run
from checkin.harness import door_config, toml
from device.config import SCHEMA, load_config
from tests.conftest import CHECKIN
from tests.system import private_ca
from tests.test_hostile_config import BASE, KEY_TEXT, TOML_VALUES, toml_document

#: A problem with a parsed document names its key: ``[section] ...`` or ``key = ...``.
NAMES_A_KEY = re.compile(r"(\[.+?\] |\S.* = )")


def check(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*CHECKIN, "config", "check", str(path)], capture_output=True,
                          text=True, env=env, timeout=60)
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    return done


@pytest.fixture
def door(tmp_path: Path) -> Path:
    """A valid door folder: config, 0600 token, private CA, camera folder; the config."""
    (tmp_path / "frames").mkdir()
    token = tmp_path / "device.token"
    token.write_text("a-token\n")
    token.chmod(0o600)
    ca_file, _cert, _key = private_ca(tmp_path)
    config = door_config("door-1", server={"url": "wss://checkin.example.org/sync",
                                           "token_file": token.name,
                                           "ca_file": ca_file.name})
    path = tmp_path / "door.toml"
    path.write_text(toml(config))
    return path


def edit(path: Path, old: str, new: str) -> Path:
    text = path.read_text()
    assert old in text, (old, text)
    path.write_text(text.replace(old, new, 1))
    return path


def test_a_valid_config_exits_0(door: Path, subprocess_env) -> None:
    done = check(door, subprocess_env)
    assert (done.returncode, done.stdout) == (0, f"{door}: valid\n")


def test_the_contract_a_typo_and_a_mistyped_value_in_one_run(door: Path,
                                                             subprocess_env) -> None:
    edit(door, "green = 17", "gren = 17")
    edit(door, "red = 27", 'red = "twenty-seven"')
    done = check(door, subprocess_env)
    assert done.returncode == 2
    lines = done.stdout.splitlines()
    assert f"{door}: [gpio] gren = 17: unknown key; did you mean green?" in done.stdout
    assert f'{door}: [gpio] red = "twenty-seven": expected an integer from 0 to 27' in lines
    assert f"{door}: [gpio] green is missing" in lines
    assert lines[-1] == f"{door}: 3 problems"


def test_everything_wrong_at_once_is_reported_at_once(door: Path, subprocess_env) -> None:
    folder = door.parent
    (folder / "frames").rmdir()
    (folder / "device.token").chmod(0o644)
    (folder / "ca.pem").write_text("not a certificate\n")
    edit(door, "[gpio]", "[gpios]\nx = 1\n[gpio]")
    edit(door, "buzzer = 22", "buzzer = 17\noverride_button = 27")
    edit(door, "wss://checkin.example.org/sync", "ws://192.0.2.7:8765/sync")
    edit(door, 'id = "door-1"', 'idd = "door-1"')
    found = problems(door)
    expected = [
        '[device] idd = "door-1": unknown key; did you mean id?',
        "[device] id is missing",
        "[gpios] is an unknown section; did you mean [gpio]?",
        "[gpio] green, red, buzzer, override_button = [17, 27, 17, 27]: expected different pins",
        '[camera] source = "images:frames": no such file or folder',
        "[server] url ws://192.0.2.7:8765/sync is not encrypted",
        f'[server] token_file = "{folder / "device.token"}": readable by group or others '
        "(mode 0644); expected mode 0600",
        f'[server] ca_file = "{folder / "ca.pem"}": expected PEM CA certificates',
    ]
    for start in expected:
        assert sum(p.startswith(start) for p in found) == 1, (start, found)
    assert len(found) == len(expected), found
    done = check(door, subprocess_env)
    assert done.returncode == 2 and done.stdout.count(f"{door}: [") == len(expected)


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such file (expected the device token"),
    ("", "expected one token, the file holds nothing"),
    ("two words\n", "expected one token, the file holds 2 words"),
    (b"\xff\xfe", "the file is not UTF-8 text"),
])
def test_token_file_problems(door: Path, content: str | bytes | None, message: str) -> None:
    token = door.parent / "device.token"
    if content is None:
        token.unlink()
    elif isinstance(content, bytes):
        token.write_bytes(content)
    else:
        token.write_text(content)
    assert [p for p in problems(door) if message in p and "[server] token_file" in p]


def test_a_folder_as_token_file_and_a_missing_ca_file(door: Path) -> None:
    token = door.parent / "device.token"
    token.unlink()
    token.mkdir()
    (door.parent / "ca.pem").unlink()
    found = problems(door)
    assert any("token_file" in p and "expected a file" in p for p in found), found
    assert any("ca_file" in p and "no such file" in p for p in found), found


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_a_private_token_file_is_fine(door: Path, mode: int) -> None:
    (door.parent / "device.token").chmod(mode)
    assert problems(door) == []


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o666])
def test_a_token_readable_by_group_or_others_is_named(door: Path, mode: int) -> None:
    (door.parent / "device.token").chmod(mode)
    assert problems(door) == [
        f'[server] token_file = "{door.parent / "device.token"}": readable by group or others'
        f" (mode {mode:04o}); expected mode 0600 or 0400 (chmod 600 "
        f"{door.parent / 'device.token'}): whoever reads it can push scans as this door"]


@pytest.mark.parametrize(("url", "valid"), [
    ("ws://127.0.0.1:8765/sync", True), ("ws://localhost/sync", True),
    ("ws://[::1]:8765/sync", True), ("ws://10.0.0.5:8765/sync", False),
    ("ws://checkin.example.org/sync", False), ("wss://10.0.0.5/sync", True),
])
def test_ws_only_to_this_machine(door: Path, url: str, valid: bool) -> None:
    edit(door, "wss://checkin.example.org/sync", url)
    found = problems(door)
    assert (found == []) is valid, found
    assert all(p.startswith(f"[server] url {url} is not encrypted") for p in found)


def test_it_touches_no_network_and_no_hardware(door: Path, subprocess_env) -> None:
    """A server URL on a port this test listens on: no connection comes. Real pins
    (lgpio, absent here) and a missing data dir: valid, and nothing is created."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        edit(door, "wss://checkin.example.org/sync", f"wss://127.0.0.1:{port}/sync")
        edit(door, 'pin_factory = "mock"', 'pin_factory = "lgpio"')
        edit(door, 'source = "images:frames"', 'source = "picamera2"')
        assert check(door, subprocess_env).returncode == 0
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert sorted(p.name for p in door.parent.iterdir()) == [
        "ca.pem", "cert.pem", "device.token", "door.toml", "frames", "key.pem"]


@pytest.mark.parametrize(("content", "message"), [
    (None, "file not found"), (b"[device\n", "not valid TOML"),
    (b"\xff\xfe\x00", "cannot read file"), (b"", "[device] is missing"),
])
def test_an_unusable_file_exits_2(tmp_path: Path, subprocess_env, content: bytes | None,
                                  message: str) -> None:
    path = tmp_path / "door.toml"
    if content is not None:
        path.write_bytes(content)
    done = check(path, subprocess_env)
    assert done.returncode == 2 and f"{path}: {message}" in done.stdout, done.stdout


def test_the_example_config_lacks_only_its_token(tmp_path: Path) -> None:
    from tests.conftest import REPO

    found = problems(REPO / "config" / "door.example.toml")
    assert found == ['[server] token_file = "/etc/checkin/device.token": no such file '
                     "(expected the device token, e.g. written by checkin provision)"]


# -- the door and the daemon warn about the same file problems at start ------------------


def test_the_door_and_the_daemon_warn_about_a_token_readable_by_others(
        door: Path, subprocess_env) -> None:
    token = door.parent / "device.token"
    token.chmod(0o644)
    edit(door, "wss://checkin.example.org/sync", "ws://127.0.0.1:9/sync")  # nobody there
    warning = f'[server] token_file = "{token}": readable by group or others'
    done = subprocess.run([*CHECKIN, "door", "--config", str(door), "--exit-when-done"],
                          capture_output=True, text=True, env=subprocess_env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "WARNING checkin.door: " + warning in done.stderr
    sync = subprocess.Popen([*CHECKIN, "sync", "--config", str(door)], text=True,
                            stderr=subprocess.PIPE, env=subprocess_env)
    try:
        assert sync.stderr is not None
        first = sync.stderr.readline()
    finally:
        sync.terminate()
        sync.wait(30)
        sync.stderr.close()
    assert "WARNING checkin.sync: " + warning in first


# -- Hypothesis: broken files never crash it ---------------------------------------------

#: Ways to break the valid FULL config of tests/test_hostile_config.py.
MUTATIONS = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(list(SCHEMA)), st.sampled_from(
        sorted({k for fields in SCHEMA.values() for k in fields})), TOML_VALUES),
    st.tuples(st.just("drop"), st.sampled_from(list(SCHEMA)), st.sampled_from(
        sorted({k for fields in SCHEMA.values() for k in fields})), st.none()),
    st.tuples(st.just("typo"), st.sampled_from(list(SCHEMA)), st.integers(0, 20),
              st.integers(0, 3)),
    st.tuples(st.just("section"), KEY_TEXT, st.none(), TOML_VALUES),
)


def mutate(data: dict[str, Any], mutation: tuple[str, Any, Any, Any]) -> None:
    kind, section, key, value = mutation
    if kind == "set":
        data.setdefault(section, {})[key] = value
    elif kind == "drop":
        data.get(section, {}).pop(key, None)
    elif kind == "typo" and data.get(section):  # drop, double or swap a letter of a key
        name = sorted(data[section])[key % len(data[section])]
        at = key % len(name)
        typo = [name[:at] + name[at + 1:], name[:at] + name[at] * 2 + name[at + 1:],
                name[:at] + name[at + 1:at + 2] + name[at] + name[at + 2:], name.upper()][value]
        data[section][typo] = data[section].pop(name)
    elif kind == "section":
        data[section] = value


def cli(path: Path) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        status = run(argparse.Namespace(file=str(path)))
    return status, out.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """FULL's folder: its camera folder, token (0600) and CA file in place."""
    folder = tmp_path_factory.mktemp("configcheck")
    (folder / "frames").mkdir()
    (folder / "device.token").write_text("t0k3n\n")
    (folder / "device.token").chmod(0o600)
    private_ca(folder)
    return folder


def test_the_unbroken_file_is_valid(folder: Path) -> None:
    path = folder / "door.toml"
    path.write_text(toml_document(BASE))
    assert cli(path) == (0, f"{path}: valid\n")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(MUTATIONS, min_size=1, max_size=4))
def test_any_broken_document_exits_0_or_2_naming_each_key(folder: Path, mutations) -> None:
    data = {name: dict(table) for name, table in BASE.items()}
    for mutation in mutations:
        mutate(data, mutation)
    path = folder / "door.toml"
    path.write_text(toml_document(data), encoding="utf-8")
    status, out = cli(path)
    lines = out.splitlines()
    if status == 0:
        assert lines == [f"{path}: valid"]
        load_config(path)  # what the check passes, the door and the daemon start with
        return
    assert status == 2
    assert lines[-1].startswith(f"{path}: ") and lines[-1].endswith(("problem", "problems"))
    for line in lines[:-1]:
        assert line.startswith(f"{path}: ")
        problem = line.removeprefix(f"{path}: ")
        assert NAMES_A_KEY.match(problem), problem
        assert len(line) < 1000


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_bytes_exit_0_or_2_with_a_message(folder: Path, content: bytes) -> None:
    path = folder / "junk.toml"
    path.write_bytes(content)
    status, out = cli(path)
    assert status == 2  # no bytes this short hold a whole door's config
    assert out.splitlines()[0].startswith(f"{path}: ") and len(out.splitlines()) >= 2



def test_every_server_url_is_checked_and_each_unencrypted_one_named(door: Path) -> None:
    urls = ["wss://a.example/sync", "ws://10.0.0.5:8765/sync", "ws://127.0.0.1:8765/sync",
            "ws://b.example/sync"]
    edit(door, '"wss://checkin.example.org/sync"', "[" + ", ".join(f'"{u}"' for u in urls) + "]")
    found = problems(door)
    assert [p.split(" is not encrypted")[0] for p in found] == [
        "[server] url ws://10.0.0.5:8765/sync", "[server] url ws://b.example/sync"]


def test_a_bad_url_in_the_list_is_named_by_its_index(door: Path) -> None:
    edit(door, '"wss://checkin.example.org/sync"',
         '["wss://a.example/sync", "wss://a.example/sync", "wss://b.example/sync"]')
    found = problems(door)
    assert len(found) == 1 and found[0].startswith("[server] url = [")
    assert 'url[1] = "wss://a.example/sync" is url[0] again' in found[0]


def test_unknown_time_is_checked_like_every_other_key(door: Path, subprocess_env) -> None:
    """Issue 17's contract: [door] unknown_time = "admit" | "refuse"."""
    edit(door, "[gpio]", '[door]\nunknown_tim = "refuse"\n[gpio]')
    done = check(door, subprocess_env)
    assert done.returncode == 2
    assert done.stdout.startswith(
        f'{door}: [door] unknown_tim = "refuse": unknown key; did you mean unknown_time?')
    edit(door, "unknown_tim =", "unknown_time =")
    assert check(door, subprocess_env).returncode == 0
    edit(door, '"refuse"', '"block"')
    done = check(door, subprocess_env)
    assert done.returncode == 2
    assert (f'{door}: [door] unknown_time = "block": expected one of "admit", "refuse"'
            in done.stdout.splitlines())
