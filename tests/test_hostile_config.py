"""Hostile config files: broken, truncated, mis-encoded, huge, looping, every key mistyped.

:func:`load_config` must turn every one of them into a :class:`ConfigError`
whose lines all read ``config error in <path>: ...`` (or accept a file that is
in fact valid), never raise anything else; ``checkin door``, ``checkin sync``
and ``checkin status`` must exit 2 naming the file, without a traceback.
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import tomllib
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from checkin.badges import write_badge
from device.config import SCHEMA, ConfigError, DeviceConfig, load_config
from device.scanner.frames import CameraError, open_source
from tests.conftest import CHECKIN, REPO, config_text

EXAMPLE = REPO / "config" / "door.example.toml"

#: A valid config with every section, relative paths and a non-ASCII comment (so that
#: cuts can fall inside a UTF-8 sequence).
FULL = """\
# Door unit for the Grand Hall — café side ☕
[device]
id = "door-hall-a"
data_dir = "data"

[camera]
source = "images:frames"
width = 640
height = 480
fps = 12.5
frames_per_image = 2
timeout = 2.0
autofocus = "manual"
lens_position = 2.0
exposure_time_us = 0
analogue_gain = 0.0

[scanner]
decoder = "zxing-cpp"
debounce_seconds = 5.0

[door]
allow_reentry = false
open_before_minutes = 15
heartbeat_seconds = 10

[gpio]
pin_factory = "mock"
green = 17
red = 27
buzzer = 22
active_high = true
mirror_file = "pins"

[server]
url = "wss://checkin.example.org/sync"
token_file = "device.token"
ca_file = "ca.pem"
retry_min_seconds = 0.5
retry_max_seconds = 30.0
auth_retry_seconds = 30.0
status_seconds = 15.0
"""

#: The same config as data, for the per-key tests.
BASE: dict[str, dict[str, Any]] = tomllib.loads(FULL)

KEYS = [(section, key) for section, fields in SCHEMA.items() for key in fields]


def _accepts(section: str, key: str, value: Any) -> bool:
    try:
        SCHEMA[section][key][0](value)
    except ValueError:
        return False
    return True


#: Keys whose check takes any number in range: their values are floats.
NUMBER_KEYS = [k for k in KEYS if _accepts(*k, 1.0)]
#: Keys also checked against other keys: distinct pins (override_button too), mirror_file
#: only with "mock", press_file only with override_button (which FULL leaves out).
CROSS_KEYS = ("green", "red", "buzzer", "pin_factory", "override_button", "press_file")
#: Keys that name files, resolved against the config's folder.
PATH_KEYS = [("device", "data_dir"), ("gpio", "mirror_file"), ("server", "token_file"),
             ("server", "ca_file")]


def check_error(path: Path, error: ConfigError) -> None:
    """A config error as the contract says: names the file, one problem per line."""
    assert error.problems
    assert error.path == str(path)
    for line in str(error).split("\n"):
        assert line.startswith(f"config error in {path}: "), line
        assert len(line) < 1000, "error lines stay short whatever the file holds"


def load(path: Path) -> DeviceConfig | ConfigError:
    """load_config's result: the config, or the ConfigError (anything else propagates)."""
    try:
        return load_config(path)
    except ConfigError as error:
        check_error(path, error)
        return error


def problems_of(path: Path) -> list[str]:
    result = load(path)
    assert isinstance(result, ConfigError), f"{path} was accepted"
    return result.problems


# -- writing TOML from Python values ------------------------------------------------


def toml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(value)


def toml_document(data: dict[str, Any]) -> str:
    """*data* as TOML: plain values first, then one ``[table]`` per dict."""
    lines = [f"{toml_string(k)} = {toml_value(v)}" for k, v in data.items()
             if not isinstance(v, dict)]
    for name, table in data.items():
        if isinstance(table, dict):
            lines.append(f"[{toml_string(name)}]")
            lines += [f"{toml_string(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def same(a: Any, b: Any) -> bool:
    """Equality where nan equals nan (a float that went through TOML and back)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


#: Key names without control or format characters (those are test_control_characters_...).
KEY_TEXT = st.text(st.characters(exclude_categories=["Cc", "Cf", "Cs", "Zl", "Zp"]),
                   max_size=12)


TIMEZONES = st.none() | st.just(UTC) | st.builds(
    lambda m: timezone(timedelta(minutes=m)), st.integers(-23 * 60, 23 * 60))
SCALARS = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["", "images:", "picamera2", "pipeline", "mock", "lgpio", "wss://x/sync",
                     "ws://x/sync/", "true", "17", "../../etc/passwd", "images:\u0000"]),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),  # what TOML's integers hold
    st.sampled_from([0, 1, -1, 27, 28, 63, 64, 4096, 4097, 3600, 86400, 1_000_001]),
    st.floats(),
    st.sampled_from([0.0, -0.0, 5e-324, 1e-300, 120.0, 120.000001, 1e308]),
    st.booleans(),
    st.datetimes(timezones=TIMEZONES),
    st.dates(),
    st.times(),
)
TOML_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEY_TEXT, inner, max_size=3),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile-config")


# -- truncated files --------------------------------------------------------------------


@pytest.mark.parametrize("text", [FULL, EXAMPLE.read_text()], ids=["full", "example"])
def test_every_prefix_of_a_valid_config_is_an_error_or_a_config(folder: Path, text: str) -> None:
    path = folder / "cut.toml"
    data = text.encode()
    outcomes = []
    for cut in range(len(data) + 1):
        path.write_bytes(data[:cut])
        outcomes.append(load(path))
    assert isinstance(outcomes[-1], DeviceConfig)  # the whole file is valid
    assert outcomes[0].problems == ["[device] is missing", "[camera] is missing",
                                    "[gpio] is missing"]
    errors = [o for o in outcomes if isinstance(o, ConfigError)]
    kinds = {p.split(":")[0] for e in errors for p in e.problems}
    assert "not valid TOML" in kinds  # cuts inside a string, a key, a table header
    if not text.isascii():  # cuts inside a multi-byte character
        assert "cannot read file" in kinds
    assert any(isinstance(o, DeviceConfig) for o in outcomes[:-1])  # e.g. before [server]


# -- encodings and odd files ------------------------------------------------------------

VALID = FULL.encode()
ENCODINGS = {
    "utf-16 with BOM": (FULL.encode("utf-16"), "cannot read file"),
    "utf-16-be with BOM": (b"\xfe\xff" + FULL.encode("utf-16-be"), "cannot read file"),
    "utf-32": (FULL.encode("utf-32"), "cannot read file"),
    "utf-8 with BOM": (b"\xef\xbb\xbf" + VALID, "not valid TOML"),
    "latin-1 comment": (FULL.encode("latin-1", "replace"), "cannot read file"),
    "latin-1 value": (VALID.replace(b'"door-hall-a"', b'"porte-\xe9t\xe9"'), "cannot read file"),
    "cp1252 quotes": (VALID.replace(b'"door-hall-a"', b"\x93door\x94"), "cannot read file"),
    "NUL first": (b"\x00" + VALID, "not valid TOML"),
    "NUL in a value": (VALID.replace(b"door-hall-a", b"door\x00hall"), "not valid TOML"),
    "NUL in a comment": (VALID.replace(b"Grand", b"Gr\x00and"), "not valid TOML"),
    "NULs only": (b"\x00" * 4096, "not valid TOML"),
    "ANSI escape in a value": (VALID.replace(b"door-hall-a", b"\x1b[2Jx"), "not valid TOML"),
    "random bytes": (random.Random(7).randbytes(8192), "cannot read file"),
    "a PNG image": (None, "cannot read file"),
    "empty": (b"", "[device] is missing"),
    "whitespace only": (b" \n\t\n  \n", "[device] is missing"),
    "comments only": (b"# nothing here\n# at all\n", "[device] is missing"),
    "only a BOM": (b"\xef\xbb\xbf", "not valid TOML"),
    "array of tables": (VALID.replace(b"[gpio]", b"[[gpio]]"), "expected a [gpio] table"),
    "duplicate table": (VALID + b"[gpio]\ngreen = 5\n", "not valid TOML"),
    "duplicate key": (VALID.replace(b"green = 17", b"green = 17\ngreen = 18"),
                      "not valid TOML"),
    "unterminated string": (VALID.replace(b'"door-hall-a"', b'"door-hall-a'), "not valid TOML"),
    "unterminated array": (VALID + b"[x]\ny = [1, 2\n", "not valid TOML"),
    "nested arrays": (VALID.replace(b"[camera]", b"junk = " + b"[" * 100 + b"]" * 100
                                    + b"\n[camera]"), "[device] junk = [[[["),
}


@pytest.mark.parametrize("name", ENCODINGS)
def test_a_mis_encoded_or_malformed_file_is_a_config_error(tmp_path: Path, name: str) -> None:
    content, message = ENCODINGS[name]
    path = tmp_path / "door.toml"
    if content is None:
        write_badge(tmp_path / "badge.png", "A1")
        (tmp_path / "badge.png").rename(path)
    else:
        path.write_bytes(content)
    found = problems_of(path)
    assert any(message in p for p in found), found


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"], ids=["CRLF", "CR"])
def test_other_line_endings_read_as_the_same_config(tmp_path: Path, newline: bytes) -> None:
    # TOML allows CRLF; tomllib also takes a lone CR (old Mac files) as whitespace.
    path = tmp_path / "door.toml"
    path.write_bytes(VALID.replace(b"\n", newline))
    config = load_config(path)
    path.write_bytes(VALID)
    assert config == load_config(path)


def test_a_directory_given_as_config_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "door.toml").mkdir()
    assert any("cannot read file" in p and "directory" in p.lower()
               for p in problems_of(tmp_path / "door.toml"))


def test_a_file_used_as_a_folder_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "door.toml").write_text(FULL)
    assert any("cannot read file" in p for p in problems_of(tmp_path / "door.toml" / "x.toml"))


def test_a_symlink_loop_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "a.toml").symlink_to(tmp_path / "b.toml")
    (tmp_path / "b.toml").symlink_to(tmp_path / "a.toml")
    (tmp_path / "self.toml").symlink_to(tmp_path / "self.toml")
    for name in ("a.toml", "self.toml"):
        assert any("cannot read file" in p and "symbolic links" in p
                   for p in problems_of(tmp_path / name))


def test_a_dangling_symlink_is_file_not_found(tmp_path: Path) -> None:
    (tmp_path / "door.toml").symlink_to(tmp_path / "gone.toml")
    assert problems_of(tmp_path / "door.toml") == ["file not found"]


def test_a_symlink_to_a_valid_config_resolves_paths_next_to_the_link(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "door.toml").write_text(FULL)
    (tmp_path / "door.toml").symlink_to(tmp_path / "real" / "door.toml")
    config = load_config(tmp_path / "door.toml")
    assert config.data_dir == tmp_path / "data"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "door.toml"
    path.write_text(FULL)
    path.chmod(0)
    assert any("cannot read file" in p for p in problems_of(path))


# -- huge files -------------------------------------------------------------------------

TEN_MB = 10 * 1024 * 1024


def test_ten_megabytes_of_junk_is_a_short_config_error(tmp_path: Path) -> None:
    path = tmp_path / "door.toml"
    path.write_bytes(b"x" * TEN_MB)
    assert any("not valid TOML" in p for p in problems_of(path))


def test_a_ten_megabyte_value_is_reported_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "door.toml"
    path.write_text(FULL.replace('"door-hall-a"', '"' + "a" * TEN_MB + '"'))
    found = problems_of(path)  # check_error: every line under 1,000 characters
    assert len(found) == 1 and found[0].startswith('[device] id = "aaaa') and "..." in found[0]


def test_ten_megabytes_of_comment_after_a_valid_config_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "door.toml"
    path.write_text(FULL + "# " + "z" * TEN_MB + "\n")
    assert load_config(path).device_id == "door-hall-a"


# -- a wrong value in every key ---------------------------------------------------------


def test_the_toml_writer_round_trips() -> None:
    # The per-key tests below write values with toml_value: it must say what it means.
    @settings(max_examples=200, deadline=None)
    @given(TOML_VALUES)
    def round_trip(value: Any) -> None:
        assert same(tomllib.loads(f"v = {toml_value(value)}")["v"], value)

    round_trip()


@pytest.mark.parametrize(("section", "key"), KEYS, ids=[f"{s}.{k}" for s, k in KEYS])
def test_any_value_in_any_key_is_accepted_or_named(folder: Path, section: str,
                                                   key: str) -> None:
    path = folder / f"{section}.{key}.toml"

    @settings(max_examples=30, deadline=None)
    @given(TOML_VALUES)
    def any_value(value: Any) -> None:
        data = {name: dict(table) for name, table in BASE.items()}
        data[section][key] = value
        path.write_text(toml_document(data), encoding="utf-8")
        result = load(path)
        if isinstance(result, ConfigError):
            for problem in result.problems:
                assert problem.startswith(f"[{section}] ") and key in problem, result.problems
            # a value the key's own check accepts fails only a check across keys
            assert not _accepts(section, key, value) or key in CROSS_KEYS
        else:
            assert _accepts(section, key, value)
            # no key takes a table, a date or a time; an array only [server] url (the
            # servers tried in turn)
            assert type(value) in (str, int, float, bool) or (
                (section, key) == ("server", "url") and type(value) is list), value

    any_value()


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from([*SCHEMA, "Device", "", "device.id"]) | KEY_TEXT,
                       TOML_VALUES, max_size=6))
def test_any_document_shape_is_a_config_error(folder: Path, data: dict[str, Any]) -> None:
    path = folder / "shape.toml"
    path.write_text(toml_document(data), encoding="utf-8")
    assert isinstance(load(path), ConfigError)  # never valid: no table has its keys


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(list(SCHEMA)), KEY_TEXT.filter(bool), TOML_VALUES)
def test_an_unknown_key_in_any_section_is_named(folder: Path, section: str, key: str,
                                                value: Any) -> None:
    if key in SCHEMA[section]:
        return
    data = {name: dict(table) for name, table in BASE.items()}
    data[section][key] = value
    path = folder / "unknown.toml"
    path.write_text(toml_document(data), encoding="utf-8")
    found = problems_of(path)
    assert len(found) == 1 and "unknown key" in found[0], found
    assert found[0].startswith(f"[{section}] ")


@pytest.mark.parametrize(
    ("section", "key"),
    KEYS,
    ids=[f"{s}.{k}" for s, k in KEYS])
def test_an_integer_too_large_for_a_float_is_a_config_error(tmp_path: Path, section: str,
                                                            key: str) -> None:
    data = {name: dict(table) for name, table in BASE.items()}
    data[section][key] = 10**400
    path = tmp_path / "door.toml"
    path.write_text(toml_document(data))
    found = problems_of(path)
    assert found[0].startswith(f"[{section}] {key} = 1000"), found
    assert all(p.startswith(f"[{section}] ") for p in found), found


@pytest.mark.parametrize(("section", "key"), PATH_KEYS, ids=[f"{s}.{k}" for s, k in PATH_KEYS])
def test_a_path_with_a_nul_is_a_config_error(tmp_path: Path, section: str, key: str) -> None:
    data = {name: dict(table) for name, table in BASE.items()}
    data[section][key] = "data\u0000"
    path = tmp_path / "door.toml"
    path.write_text(toml_document(data))
    found = problems_of(path)
    assert any(p.startswith(f"[{section}] {key} = ") for p in found), found


@pytest.mark.parametrize("fps", ["5e-324", "1e-300"])
def test_any_fps_the_schema_accepts_opens_an_images_source(tmp_path: Path, fps: str) -> None:
    (tmp_path / "frames").mkdir()
    write_badge(tmp_path / "frames" / "a.png", "A1")
    path = tmp_path / "door.toml"
    path.write_text(FULL.replace("fps = 12.5", f"fps = {fps}"))
    result = load(path)
    if isinstance(result, ConfigError):  # rejecting it would be a fix too
        assert any("[camera] fps" in p for p in result.problems)
        return
    try:
        source = open_source(result.camera, finite=True)
    except CameraError as exc:  # a named failure would do as well
        assert "fps" in str(exc)
    else:
        source.close()


@pytest.mark.parametrize("name", ["line\nbreak", "\x1b[2Jclear", "bell\x07", "nel\x85"])
@pytest.mark.parametrize("where", ["key", "section"])
def test_control_characters_in_unknown_names_are_escaped(tmp_path: Path, name: str,
                                                         where: str) -> None:
    data = {section: dict(table) for section, table in BASE.items()}
    if where == "key":
        data["device"][name] = 1
    else:
        data[name] = {"x": 1}
    path = tmp_path / "door.toml"
    path.write_text(toml_document(data))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    for problem in caught.value.problems:
        assert problem.isprintable(), repr(problem)


DEEP = {
    "arrays": "junk = " + "[" * 2000 + "]" * 2000,
    "inline tables": "junk = " + "{a = " * 400 + "1" + "}" * 400,
}


@pytest.mark.parametrize("nesting", DEEP)
def test_deeply_nested_values_are_a_config_error(tmp_path: Path, nesting: str) -> None:
    path = tmp_path / "door.toml"
    path.write_text(FULL.replace("[camera]", DEEP[nesting] + "\n[camera]"))
    assert len(path.read_bytes()) < 8192  # a small file
    assert problems_of(path) == ["not valid TOML: nested too deeply"]


# -- the real commands ------------------------------------------------------------------


def _junk(path: Path) -> None:
    path.write_bytes(b"x" * TEN_MB)


def _loop(path: Path) -> None:
    path.symlink_to(path)


def _directory(path: Path) -> None:
    path.mkdir()


def _utf16(path: Path) -> None:
    path.write_bytes(FULL.encode("utf-16"))


def _truncated(path: Path) -> None:
    path.write_bytes(VALID[: VALID.index(b"wss://") + 3])


def _wrong_types(path: Path) -> None:
    path.write_text(FULL.replace("fps = 12.5", 'fps = "fast"').replace("green = 17",
                                                                        "green = [17]"))


def _binary(path: Path) -> None:
    path.write_bytes(random.Random(3).randbytes(4096))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _broken(path: Path) -> None:
    path.write_text("[device\nid = 1\n")


CLI_CASES = [
    ("door", _broken, "not valid TOML"),
    ("door", _truncated, "not valid TOML"),
    ("door", _directory, "cannot read file"),
    ("door", _wrong_types, '[camera] fps = "fast"'),
    ("sync", _utf16, "cannot read file"),
    ("sync", _empty, "[device] is missing"),
    ("sync", _loop, "cannot read file"),
    ("status", _junk, "not valid TOML"),
    ("status", _binary, "cannot read file"),
    ("status", _wrong_types, "[gpio] green = [17]"),
]


def run_checkin(command: str, path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    extra = ["--exit-when-done"] if command == "door" else []
    return subprocess.run([*CHECKIN, command, "--config", str(path), *extra],
                          capture_output=True, text=True, env=env, timeout=120,
                          cwd=path.parent)


@pytest.mark.parametrize(("command", "make", "message"), CLI_CASES,
                         ids=[f"{c}-{m.__name__.strip('_')}" for c, m, _ in CLI_CASES])
def test_the_commands_exit_2_naming_the_file(tmp_path: Path, subprocess_env, command: str,
                                             make, message: str) -> None:
    path = tmp_path / "door.toml"
    make(path)
    done = run_checkin(command, path, subprocess_env)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert f"config error in {path}: " in done.stderr and message in done.stderr, done.stderr
    assert done.stdout == ""
    assert len(done.stderr) < 2000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["door.toml"]  # nothing created


@pytest.mark.parametrize("command", ["door", "status"])
def test_a_huge_integer_exits_2_without_a_traceback(tmp_path: Path, subprocess_env,
                                                    command: str) -> None:
    path = tmp_path / "door.toml"
    path.write_text(FULL.replace("fps = 12.5", "fps = 1" + "0" * 400))
    done = run_checkin(command, path, subprocess_env)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2 and f"config error in {path}: [camera] fps" in done.stderr


@pytest.mark.parametrize("key", ["data_dir", "mirror_file"])
def test_a_nul_in_a_path_does_not_crash_the_door(tmp_path: Path, subprocess_env,
                                                 key: str) -> None:
    (tmp_path / "frames").mkdir()
    write_badge(tmp_path / "frames" / "a.png", "A1")
    path = tmp_path / "door.toml"
    text = FULL.replace(f'{key} = "', f'{key} = "\\u0000')
    path.write_text(text.split("\n[server]")[0])
    done = run_checkin("door", path, subprocess_env)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2 and f"config error in {path}: " in done.stderr


def test_a_tiny_fps_does_not_crash_the_door(tmp_path: Path, subprocess_env) -> None:
    (tmp_path / "frames").mkdir()
    write_badge(tmp_path / "frames" / "a.png", "A1")
    path = tmp_path / "door.toml"
    text = FULL.replace("fps = 12.5", "fps = 5e-324").replace("frames_per_image = 2",
                                                              "frames_per_image = 1")
    path.write_text(text.split("\n[server]")[0])  # one image, one frame: no pacing wait
    done = run_checkin("door", path, subprocess_env)
    assert "Traceback" not in done.stderr, done.stderr
    # below the 0.1 fps minimum: refused by the config check, before the camera opens
    assert done.returncode == 2, done.stderr
    assert "[camera] fps = 5e-324: expected a number at least 0.1" in done.stderr


def test_an_images_path_with_a_nul_is_reported_not_crashed(tmp_path: Path,
                                                           subprocess_env) -> None:
    path = tmp_path / "door.toml"
    path.write_text(config_text(tmp_path / "data", "images:frames\x00"))
    done = run_checkin("door", path, subprocess_env)
    assert done.returncode == 2  # refused by the config check, before anything starts
    assert "Traceback" not in done.stderr and "[camera] source" in done.stderr
    assert done.stdout == ""


def test_deep_nesting_exits_2_without_a_traceback(tmp_path: Path, subprocess_env) -> None:
    path = tmp_path / "door.toml"
    path.write_text(FULL.replace("[camera]", DEEP["arrays"] + "\n[camera]"))
    done = run_checkin("sync", path, subprocess_env)
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.returncode == 2 and f"config error in {path}: " in done.stderr
