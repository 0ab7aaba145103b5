"""The device config: every mistake named by key, value and expectation; exit 2 from the CLI."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from core.rules import Direction, UnknownTime
from device.config import ConfigError, load_config
from tests.conftest import CHECKIN, config_text


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "door.toml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    return caught.value.problems


def test_a_minimal_config_gets_defaults_and_resolves_relative_paths(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, config_text(Path("data"), "images:frames")))
    assert config.device_id == "door-test"
    assert config.data_dir == tmp_path / "data"
    assert config.camera.images_path == str(tmp_path / "frames")
    assert config.scanner.decoder == "pipeline"
    assert config.scanner.debounce_seconds == 5.0
    assert config.door.allow_reentry is True
    assert (config.gpio.green, config.gpio.red, config.gpio.buzzer) == (17, 27, 22)
    assert config.server is None


def test_door_direction_and_override_button(tmp_path: Path) -> None:
    text = config_text(Path("data"), "images:frames").replace(
        "red = 27", 'red = 27\noverride_button = 5\npress_file = "presses"', 1)
    config = load_config(write(tmp_path, text + '[door]\noverride_seconds = 4\n'))
    assert config.door.direction is Direction.IN
    assert config.door.override_seconds == 4
    assert config.gpio.override_button == 5
    assert config.gpio.press_file == tmp_path / "presses"
    assert config.gpio.pins == {"green": 17, "red": 27, "buzzer": 22, "override_button": 5}
    exit_door = load_config(write(tmp_path, config_text(Path("data"), "images:frames")
                                  + '[door]\ndirection = "out"\n'))
    assert exit_door.door.direction is Direction.OUT
    assert exit_door.gpio.override_button is None


def test_door_unknown_time(tmp_path: Path) -> None:
    base = config_text(Path("data"), "images:frames")
    assert load_config(write(tmp_path, base)).door.unknown_time is UnknownTime.ADMIT
    refuse = load_config(write(tmp_path, base + '[door]\nunknown_time = "refuse"\n'))
    assert refuse.door.unknown_time is UnknownTime.REFUSE


def test_the_example_config_is_valid() -> None:
    config = load_config(Path(__file__).parent.parent / "config" / "door.example.toml")
    assert config.camera.source == "picamera2"
    assert config.gpio.pin_factory == "lgpio"
    assert config.server is not None and config.server.url == (
        "wss://checkin.example.org/sync",)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("green = 17", 'green = "17"'), '[gpio] green = "17": expected an integer from 0 to 27'),
        (("green = 17", "green = 40"), "[gpio] green = 40: expected an integer from 0 to 27"),
        (("green = 17", "green = true"), "[gpio] green = True: expected an integer"),
        (("green = 17", ""), "[gpio] green is missing"),
        (("green = 17", "green = 17\ngren = 5"),
         "[gpio] gren = 5: unknown key; did you mean green?"),
        (("green = 17", "green = 17\ncolour = 5"),
         "[gpio] colour = 5: unknown key (expected one of"),
        (("[gpio]", "[gpio]\nOverride_Buton = 5"),
         "[gpio] Override_Buton = 5: unknown key; did you mean override_button?"),
        (('pin_factory = "mock"', 'pin_factory = "rpigpio"'),
         '[gpio] pin_factory = "rpigpio": expected one of "mock", "lgpio"'),
        (('source = "images:frames"', 'source = "usb0"'),
         '[camera] source = "usb0": expected "picamera2" or "images:PATH"'),
        (("fps = 20", "fps = 0"), "[camera] fps = 0: expected a number at least 0.1"),
        (("fps = 20", "fps = nan"), "[camera] fps = nan: expected a number"),
        (('id = "door-test"', 'id = "door test!"'), '[device] id = "door test!": expected 1-64'),
        (('id = "door-test"', ""), "[device] id is missing"),
        (("red = 27", "red = 17"), "[gpio] green, red, buzzer = [17, 17, 22]: expected different"),
        (("red = 27", "red = 27\noverride_button = 17"),
         "[gpio] green, red, buzzer, override_button = [17, 27, 22, 17]: expected different pins"),
        (("red = 27", "red = 27\noverride_button = 30"),
         "[gpio] override_button = 30: expected an integer from 0 to 27"),
        (("[gpio]", '[door]\ndirection = "sideways"\n[gpio]'),
         '[door] direction = "sideways": expected one of "in", "out"'),
        (("[gpio]", '[door]\nunknown_time = "deny"\n[gpio]'),
         '[door] unknown_time = "deny": expected one of "admit", "refuse"'),
        (("[gpio]", '[door]\nunknown_tme = "refuse"\n[gpio]'),
         '[door] unknown_tme = "refuse": unknown key; did you mean unknown_time?'),
        (("[gpio]", "[door]\nunknown_time = true\n[gpio]"),
         '[door] unknown_time = True: expected one of "admit", "refuse"'),
        (("[gpio]", "[door]\noverride_seconds = 0\n[gpio]"),
         "[door] override_seconds = 0: expected a number greater than 0"),
        (("[gpio]", '[door]\ndirection = "out"\n[gpio]\noverride_button = 5'),
         "[gpio] override_button: only for an entrance"),
        (("red = 27", 'red = 27\npress_file = "presses"'),
         "[gpio] press_file: presses the override button, but override_button is not set"),
        (('pin_factory = "mock"', 'pin_factory = "lgpio"\noverride_button = 5\npress_file = "p"'),
         '[gpio] press_file: only for pin_factory = "mock"'),
        (('pin_factory = "mock"', 'pin_factory = "lgpio"\nmirror_file = "pins"'),
         '[gpio] mirror_file: only for pin_factory = "mock"'),
        (("[gpio]", "[gpios]"), "[gpios] is an unknown section; did you mean [gpio]?"),
        (("[gpio]", "[pins]"), "[pins] is an unknown section (expected: device, camera"),
    ],
)
def test_each_mistake_is_named(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    text = config_text(Path("data"), "images:frames").replace(*change, 1)
    found = problems(tmp_path, text)
    assert any(message in p for p in found), found


def test_all_mistakes_are_reported_at_once(tmp_path: Path) -> None:
    text = config_text(Path("data"), "images:frames")
    text = text.replace("green = 17", "green = -1").replace("fps = 20", 'fps = "fast"')
    text += '\n[scanner]\ndecoder = "opencv"\n'
    found = problems(tmp_path, text)
    assert len(found) == 3, found


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[server]\nurl = "http://x/sync"\ntoken_file = "t"', "expected a ws:// or wss:// URL"),
        ('[server]\nurl = "ws://x/other"\ntoken_file = "t"', "ending in /sync"),
        ('[server]\nurl = "ws://x/sync"', "[server] token_file is missing"),
        ("[door]\nallow_reentry = 1", "[door] allow_reentry = 1: expected true or false"),
        ("[scanner]\ndebounce_seconds = -2", "[scanner] debounce_seconds = -2"),
    ],
)
def test_optional_sections_are_checked_too(tmp_path: Path, extra: str, message: str) -> None:
    found = problems(tmp_path, config_text(Path("data"), "images:frames", extra=extra))
    assert any(message in p for p in found), found


def server_config(tmp_path: Path, url: str) -> Path:
    return write(tmp_path, config_text(Path("data"), "images:frames",
                                       extra=f'[server]\nurl = {url}\ntoken_file = "t"\n'))


def test_one_server_url_or_a_list_of_them_in_order(tmp_path: Path) -> None:
    one = load_config(server_config(tmp_path, '"wss://a.example/sync/"'))
    assert one.server is not None and one.server.url == ("wss://a.example/sync",)
    several = load_config(server_config(
        tmp_path, '["wss://b.example:8765/sync", "wss://a.example/sync", "ws://127.0.0.1/sync"]'))
    assert several.server is not None and several.server.url == (
        "wss://b.example:8765/sync", "wss://a.example/sync", "ws://127.0.0.1/sync")


@pytest.mark.parametrize(("url", "message"), [
    ("[]", "[server] url = []: expected a list of 1 to 16 ws:// or wss:// URLs ending in "
           "/sync; the list is empty"),
    ('["wss://a/sync", "https://b/sync", "ws://c/other"]',
     "ending in /sync; url[1] = \"https://b/sync\" is not one"),
    ('["wss://a/sync", 7]', "; url[1] = 7 is not one"),
    ('["wss://a/sync", ["wss://b/sync"]]', "; url[1] = ['wss://b/sync'] is not one"),
    ('["wss://a/sync", "wss://b/sync", "wss://a/sync/"]',
     'each once; url[2] = "wss://a/sync/" is url[0] again'),
    ('["wss://A.example:443/sync", "wss://a.example/sync"]',
     'each once; url[1] = "wss://a.example/sync" is url[0] again'),
    ('["ws://a:80/sync", "ws://a/sync"]', "is url[0] again"),
    ("[" + ", ".join(f'"wss://s{n}/sync"' for n in range(17)) + "]", "; the list holds 17"),
    ('"https://a/sync"', "expected a ws:// or wss:// URL ending in /sync, or a list of 1 to 16 "
                         "of them"),
    ("{ a = 1 }", "or a list of 1 to 16 of them"),
])
def test_a_bad_server_url_list_names_the_entry(tmp_path: Path, url: str, message: str) -> None:
    found = problems(tmp_path, server_config(tmp_path, url).read_text())
    assert len(found) == 1 and message in found[0], found


def test_sixteen_server_urls_and_the_same_host_on_other_ports_or_schemes(tmp_path: Path) -> None:
    sixteen = "[" + ", ".join(f'"wss://s{n}/sync"' for n in range(16)) + "]"
    config = load_config(server_config(tmp_path, sixteen))
    assert config.server is not None and len(config.server.url) == 16
    distinct = '["wss://a/sync", "wss://a:8765/sync", "ws://a/sync", "wss://a/x/sync"]'
    config = load_config(server_config(tmp_path, distinct))
    assert config.server is not None and len(config.server.url) == 4


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[device\nid = 1", "not valid TOML"),
        (b"\xff\xfe[device]", "cannot read file"),
        (b"", "[device] is missing"),
    ],
)
def test_broken_files_are_reported(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "door.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert any(message in p for p in caught.value.problems)


def test_a_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")


def test_the_door_exits_2_on_a_bad_config_before_touching_hardware(tmp_path: Path,
                                                                   subprocess_env) -> None:
    text = config_text(tmp_path / "data", "images:frames").replace("green = 17", "green = 99")
    path = write(tmp_path, text)
    done = subprocess.run([*CHECKIN, "door", "--config", str(path)], capture_output=True,
                          text=True, env=subprocess_env, timeout=60)
    assert done.returncode == 2
    assert "[gpio] green = 99: expected an integer from 0 to 27" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert not (tmp_path / "data").exists()  # nothing was created or opened
