"""The device config file (TOML), shared by the door and the sync daemon.

:func:`load_config` reads and checks the whole file before anything touches
hardware: every missing, mistyped or unknown key is reported at once, by key,
value and what was expected. Relative paths are relative to the config file.
See ``config/door.example.toml`` for every key with its default.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.rules import Direction, UnknownTime
from core.shapes import (
    Field,
    boolean,
    check_fields,
    checked,
    choice,
    did_you_mean,
    fields_of,
    identifier,
    integer,
    member,
    number,
    show,
)
from core.shapes import name as shown
from core.shapes import path as file_path
from sync.config import ServerConfig, server_file_problems

DECODERS = ("pipeline", "zxing-cpp", "pyzbar")
PIN_FACTORIES = ("mock", "lgpio")
AUTOFOCUS_MODES = ("continuous", "manual", "auto")


class ConfigError(Exception):
    """The config file is unusable; :attr:`problems` lists every reason."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        super().__init__("\n".join(f"config error in {path}: {p}" for p in problems))


def _camera_source(value: Any) -> str:
    if value == "picamera2" or (isinstance(value, str) and len(value) > len("images:")
                                and value.startswith("images:") and "\0" not in value):
        return value
    raise ValueError('"picamera2" or "images:PATH" (an image file or a folder of images)')


# Each section is a dataclass whose fields carry their checks (core.shapes.checked): a
# key is declared once, with its check and default; the [server] section is
# sync.config.ServerConfig.


@dataclass(frozen=True, slots=True)
class DeviceSection:
    """The ``[device]`` section (:class:`DeviceConfig` takes its id and data dir)."""

    id: str = field(metadata=checked(identifier))
    data_dir: str = field(metadata=checked(file_path))


@dataclass(frozen=True, slots=True)
class CameraConfig:
    source: str = field(metadata=checked(_camera_source))
    width: int = field(default=640, metadata=checked(integer(64, 4096)))
    height: int = field(default=480, metadata=checked(integer(64, 4096)))
    fps: float = field(default=10.0, metadata=checked(number(0.1, 120)))
    frames_per_image: int = field(default=3, metadata=checked(integer(1, 1_000_000)))
    timeout: float = field(default=2.0, metadata=checked(number(0, 60, open_low=True)))
    autofocus: str = field(default="continuous", metadata=checked(choice(*AUTOFOCUS_MODES)))
    lens_position: float = field(default=1.0, metadata=checked(number(0, 32)))
    exposure_time_us: int = field(default=0, metadata=checked(integer(0, 1_000_000)))
    analogue_gain: float = field(default=0.0, metadata=checked(number(0, 64)))

    @property
    def images_path(self) -> str | None:
        """The path of an ``images:PATH`` source, else ``None``."""
        return self.source.removeprefix("images:") if self.source.startswith("images:") else None


@dataclass(frozen=True, slots=True)
class ScannerConfig:
    decoder: str = field(default="pipeline", metadata=checked(choice(*DECODERS)))
    debounce_seconds: float = field(default=5.0, metadata=checked(number(0, 3600)))


@dataclass(frozen=True, slots=True)
class DoorConfig:
    allow_reentry: bool = field(default=True, metadata=checked(boolean))
    open_before_minutes: float = field(default=15.0, metadata=checked(number(0, 24 * 60)))
    heartbeat_seconds: float = field(default=10.0,
                                     metadata=checked(number(0, 3600, open_low=True)))
    #: "in": an entrance (admits people); "out": an exit (records people leaving).
    direction: Direction = field(default=Direction.IN, metadata=checked(member(Direction)))
    #: How long after a rejection a press of the override button admits that person.
    override_seconds: float = field(default=10.0,
                                    metadata=checked(number(0, 600, open_low=True)))
    #: A session time window while the door does not know the time (its clock not
    #: synchronised, no server time in this boot): "admit" as if inside it, or "refuse".
    unknown_time: UnknownTime = field(default=UnknownTime.ADMIT,
                                      metadata=checked(member(UnknownTime)))


@dataclass(frozen=True, slots=True)
class GpioConfig:
    pin_factory: str = field(metadata=checked(choice(*PIN_FACTORIES)))
    green: int = field(metadata=checked(integer(0, 27)))
    red: int = field(metadata=checked(integer(0, 27)))
    buzzer: int = field(metadata=checked(integer(0, 27)))
    active_high: bool = field(default=True, metadata=checked(boolean))
    #: Mock pins only: a file the pins mirror their levels into (see indicators/mirror.py).
    mirror_file: Path | None = field(default=None, metadata=checked(file_path))
    #: The staff's override button (a push button to ground), if the door has one.
    override_button: int | None = field(default=None, metadata=checked(integer(0, 27)))
    #: Mock pins only: each byte appended to this file presses the override button once
    #: (tests and the demo press a door's button from another process; see device/override.py).
    press_file: Path | None = field(default=None, metadata=checked(file_path))

    @property
    def pins(self) -> dict[str, int]:
        """Every pin the door uses, by key."""
        pins = {"green": self.green, "red": self.red, "buzzer": self.buzzer}
        if self.override_button is not None:
            pins["override_button"] = self.override_button
        return pins


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    device_id: str
    data_dir: Path
    camera: CameraConfig
    scanner: ScannerConfig
    door: DoorConfig
    gpio: GpioConfig
    server: ServerConfig | None
    path: Path


#: The file's sections, in the order they are checked and listed.
SECTIONS: dict[str, type] = {
    "device": DeviceSection,
    "camera": CameraConfig,
    "scanner": ScannerConfig,
    "door": DoorConfig,
    "gpio": GpioConfig,
    "server": ServerConfig,
}
#: Each section's keys: check and whether required (derived from the dataclasses).
SCHEMA: dict[str, Mapping[str, Field]] = {name: fields_of(cls) for name, cls in SECTIONS.items()}
#: Sections that may be left out entirely (the door runs without a server).
OPTIONAL_SECTIONS = frozenset({"scanner", "door", "server"})


def load_config(path: Path | str) -> DeviceConfig:
    """Read and check the config file at *path*; raise :class:`ConfigError` on any problem."""
    return parse_config(read_document(path), path)


def read_document(path: Path | str) -> dict[str, Any]:
    """The TOML document at *path*; :class:`ConfigError` if it cannot be read or parsed."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [f"cannot read file: {exc}"]) from None
    except RecursionError:
        raise ConfigError(path, ["not valid TOML: nested too deeply"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [f"not valid TOML: {exc}"]) from None


def parse_config(data: dict[str, Any], path: Path | str) -> DeviceConfig:
    """Check a parsed TOML document; pure apart from resolving relative paths."""
    path = Path(path)
    problems: list[str] = []
    sections = {name: _check_section(data, name, problems) for name in SCHEMA}
    for name, value in data.items():
        if name not in SCHEMA:
            problems.append(f"[{shown(name)}] is an unknown section"
                            f"{did_you_mean(name, SCHEMA, '[{}]')} (expected: "
                            f"{', '.join(SCHEMA)})")
        elif not isinstance(value, dict):
            problems.append(f"{name} = {show(value)}: expected a [{name}] table")
    problems.extend(_gpio_problems(sections["gpio"], sections["door"]))
    if problems:
        raise ConfigError(path, problems)
    return _build(sections, path.parent, path)


def _gpio_problems(gpio: dict[str, Any], door: dict[str, Any]) -> list[str]:
    """What is wrong between keys: pins used twice, mock-only keys on real pins."""
    problems = []
    names = [k for k in ("green", "red", "buzzer", "override_button") if k in gpio]
    pins = [gpio[k] for k in names]
    if len(set(pins)) < len(pins):
        problems.append(f"[gpio] {', '.join(names)} = {pins}: expected different pins")
    for key, why in (("mirror_file", "the demo's doors"), ("press_file", "tests and the demo")):
        if key in gpio and gpio.get("pin_factory") != "mock":
            problems.append(f'[gpio] {key}: only for pin_factory = "mock" ({why})')
    if "press_file" in gpio and "override_button" not in gpio:
        problems.append("[gpio] press_file: presses the override button, but "
                        "override_button is not set")
    if "override_button" in gpio and door.get("direction") is Direction.OUT:
        problems.append('[gpio] override_button: only for an entrance ([door] direction = "in"):'
                        " an exit door refuses nobody, so there is nothing to override")
    return problems


def _check_section(data: dict[str, Any], name: str, problems: list[str]) -> dict[str, Any]:
    table = data.get(name)
    if not isinstance(table, dict):
        if table is None and name not in OPTIONAL_SECTIONS:
            problems.append(f"[{name}] is missing")
        return {}
    values, found = check_fields(table, SCHEMA[name], f"[{name}] ")
    problems.extend(found)
    return values


def _build(sections: dict[str, dict[str, Any]], base: Path, path: Path) -> DeviceConfig:
    device = DeviceSection(**sections["device"])
    camera = dict(sections["camera"])
    if camera["source"].startswith("images:"):
        camera["source"] = "images:" + str(base / camera["source"].removeprefix("images:"))
    server = sections["server"]
    return DeviceConfig(
        device_id=device.id,
        data_dir=base / device.data_dir,
        camera=CameraConfig(**camera),
        scanner=ScannerConfig(**sections["scanner"]),
        door=DoorConfig(**sections["door"]),
        gpio=GpioConfig(**sections["gpio"] | {
            key: base / sections["gpio"][key]
            for key in ("mirror_file", "press_file") if key in sections["gpio"]}),
        server=ServerConfig(**server | {
            "token_file": base / server["token_file"],
            "ca_file": base / server["ca_file"] if "ca_file" in server else None,
        }) if server else None,
        path=path,
    )



def file_problems(data: dict[str, Any], path: Path | str) -> list[str]:
    """What is wrong with the files a parsed document names, checked as far as its keys
    are valid (those that are not are :func:`parse_config`'s problems): the camera's
    ``images:`` path, and the ``[server]`` URL, token file and CA file
    (:func:`sync.config.server_file_problems`). Reads files, never hardware or network.
    """
    base = Path(path).parent
    problems = []
    source = _valid_keys(data, "camera").get("source", "")
    images = base / source.removeprefix("images:")
    if source.startswith("images:") and not os.path.exists(images):  # never raises
        problems.append(f"[camera] source = {show(source)}: no such file or folder "
                        f"({images}; expected the images the door reads as frames)")
    server = _valid_keys(data, "server")
    if server:
        problems.extend(server_file_problems(
            server.get("url"),
            base / server["token_file"] if "token_file" in server else None,
            base / server["ca_file"] if "ca_file" in server else None))
    return problems


def start_warnings(config: DeviceConfig) -> list[str]:
    """The ``[server]`` file problems the door and the daemon log at start: warnings there,
    not errors (the token may be put in place while they run, and tests and the demo
    write it with the default mode), errors in ``checkin config check``."""
    server = config.server
    if server is None:
        return []
    # The URL's warning is sync.daemon.run_sync's own (it logs it at every start).
    return server_file_problems(None, server.token_file, server.ca_file)


def _valid_keys(data: dict[str, Any], name: str) -> dict[str, Any]:
    """The keys of section *name* whose values pass their checks (others are ignored)."""
    table = data.get(name)
    if not isinstance(table, dict):
        return {}
    values, _problems = check_fields(table, SCHEMA[name])
    return values
