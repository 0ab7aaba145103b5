"""The device config file (TOML), shared by the door and the sync daemon.

:func:`load_config` reads and checks the whole file before anything touches
hardware: every missing, mistyped or unknown key is reported at once, by key,
value and what was expected. Relative paths are relative to the config file.
See ``config/door.example.toml`` for every key with its default.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.shapes import (
    Field,
    boolean,
    check_fields,
    choice,
    identifier,
    integer,
    number,
    show,
)
from core.shapes import name as shown
from core.shapes import path as file_path
from sync.config import SERVER_FIELDS, ServerConfig

DECODERS = ("pipeline", "zxing-cpp", "pyzbar")
PIN_FACTORIES = ("mock", "lgpio")
AUTOFOCUS_MODES = ("continuous", "manual", "auto")


class ConfigError(Exception):
    """The config file is unusable; :attr:`problems` lists every reason."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        super().__init__("\n".join(f"config error in {path}: {p}" for p in problems))


@dataclass(frozen=True, slots=True)
class CameraConfig:
    source: str
    width: int = 640
    height: int = 480
    fps: float = 10.0
    frames_per_image: int = 3
    timeout: float = 2.0
    autofocus: str = "continuous"
    lens_position: float = 1.0
    exposure_time_us: int = 0
    analogue_gain: float = 0.0

    @property
    def images_path(self) -> str | None:
        """The path of an ``images:PATH`` source, else ``None``."""
        return self.source.removeprefix("images:") if self.source.startswith("images:") else None


@dataclass(frozen=True, slots=True)
class ScannerConfig:
    decoder: str = "pipeline"
    debounce_seconds: float = 5.0


@dataclass(frozen=True, slots=True)
class DoorConfig:
    allow_reentry: bool = True
    open_before_minutes: float = 15.0
    heartbeat_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class GpioConfig:
    pin_factory: str
    green: int
    red: int
    buzzer: int
    active_high: bool = True
    #: Mock pins only: a file the pins mirror their levels into (see indicators/mirror.py).
    mirror_file: Path | None = None


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


def _camera_source(value: Any) -> str:
    if value == "picamera2" or (isinstance(value, str) and len(value) > len("images:")
                                and value.startswith("images:") and "\0" not in value):
        return value
    raise ValueError('"picamera2" or "images:PATH" (an image file or a folder of images)')


SCHEMA: dict[str, dict[str, Field]] = {
    "device": {"id": (identifier, True), "data_dir": (file_path, True)},
    "camera": {
        "source": (_camera_source, True),
        "width": (integer(64, 4096), False),
        "height": (integer(64, 4096), False),
        "fps": (number(0.1, 120), False),
        "frames_per_image": (integer(1, 1_000_000), False),
        "timeout": (number(0, 60, open_low=True), False),
        "autofocus": (choice(*AUTOFOCUS_MODES), False),
        "lens_position": (number(0, 32), False),
        "exposure_time_us": (integer(0, 1_000_000), False),
        "analogue_gain": (number(0, 64), False),
    },
    "scanner": {
        "decoder": (choice(*DECODERS), False),
        "debounce_seconds": (number(0, 3600), False),
    },
    "door": {
        "allow_reentry": (boolean, False),
        "open_before_minutes": (number(0, 24 * 60), False),
        "heartbeat_seconds": (number(0, 3600, open_low=True), False),
    },
    "gpio": {
        "pin_factory": (choice(*PIN_FACTORIES), True),
        "green": (integer(0, 27), True),
        "red": (integer(0, 27), True),
        "buzzer": (integer(0, 27), True),
        "active_high": (boolean, False),
        "mirror_file": (file_path, False),
    },
    "server": SERVER_FIELDS,
}
#: Sections that may be left out entirely (the door runs without a server).
OPTIONAL_SECTIONS = frozenset({"scanner", "door", "server"})


def load_config(path: Path | str) -> DeviceConfig:
    """Read and check the config file at *path*; raise :class:`ConfigError` on any problem."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [f"cannot read file: {exc}"]) from None
    except RecursionError:
        raise ConfigError(path, ["not valid TOML: nested too deeply"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [f"not valid TOML: {exc}"]) from None
    return parse_config(data, path)


def parse_config(data: dict[str, Any], path: Path | str) -> DeviceConfig:
    """Check a parsed TOML document; pure apart from resolving relative paths."""
    path = Path(path)
    problems: list[str] = []
    sections = {name: _check_section(data, name, problems) for name in SCHEMA}
    for name, value in data.items():
        if name not in SCHEMA:
            problems.append(f"[{shown(name)}] is an unknown section (expected: "
                            f"{', '.join(SCHEMA)})")
        elif not isinstance(value, dict):
            problems.append(f"{name} = {show(value)}: expected a [{name}] table")
    gpio = sections["gpio"]
    pins = [gpio.get(k) for k in ("green", "red", "buzzer")]
    if None not in pins and len(set(pins)) < 3:
        problems.append(f"[gpio] green, red and buzzer = {pins}: expected three different pins")
    if "mirror_file" in gpio and gpio.get("pin_factory") != "mock":
        problems.append('[gpio] mirror_file: only for pin_factory = "mock" (the demo\'s doors)')
    if problems:
        raise ConfigError(path, problems)
    return _build(sections, path.parent, path)


def _check_section(data: dict[str, Any], name: str, problems: list[str]) -> dict[str, Any]:
    table = data.get(name)
    if not isinstance(table, dict):
        if table is None and name not in OPTIONAL_SECTIONS:
            problems.append(f"[{name}] is missing")
        return {}
    checked, found = check_fields(table, SCHEMA[name], f"[{name}] ")
    problems.extend(found)
    return checked


def _build(sections: dict[str, dict[str, Any]], base: Path, path: Path) -> DeviceConfig:
    camera = dict(sections["camera"])
    if camera["source"].startswith("images:"):
        camera["source"] = "images:" + str(base / camera["source"].removeprefix("images:"))
    server = sections["server"]
    return DeviceConfig(
        device_id=sections["device"]["id"],
        data_dir=base / sections["device"]["data_dir"],
        camera=CameraConfig(**camera),
        scanner=ScannerConfig(**sections["scanner"]),
        door=DoorConfig(**sections["door"]),
        gpio=GpioConfig(**sections["gpio"] | (
            {"mirror_file": base / sections["gpio"]["mirror_file"]}
            if "mirror_file" in sections["gpio"] else {})),
        server=ServerConfig(**server | {
            "token_file": base / server["token_file"],
            "ca_file": base / server["ca_file"] if "ca_file" in server else None,
        }) if server else None,
        path=path,
    )

