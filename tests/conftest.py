"""Shared fixtures: device config files and pre-filled stores on real files."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from checkin.harness import CHECKIN, door_config, process_env, toml
from core.rules import SessionRules
from sync.device_store import Store
from tests.system import Device, Server

#: The browser tests' fixtures (chromium, browsing), shared by their modules.
pytest_plugins = ("tests.browser",)

REPO = Path(__file__).resolve().parent.parent
#: Real QR images with their expected contents (Apache-2.0, from zxing-cpp: see its README.txt).
CORPUS = REPO / "tests" / "corpus" / "zxing-cpp-samples"
__all__ = ["CHECKIN", "CORPUS", "REPO", "config_text", "fill_store", "read_scans"]


def config_text(data_dir: Path, source: str, *, extra: str = "") -> str:
    """A door's config file (the harness's, with a quick camera), *extra* TOML after it."""
    return toml(door_config("door-test", data_dir=data_dir, source=source,
                            camera={"fps": 20, "frames_per_image": 2})) + extra


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Path]:
    def make(source: str = "images:frames", *, extra: str = "", name: str = "door.toml") -> Path:
        path = tmp_path / name
        path.write_text(config_text(tmp_path / "data", source, extra=extra))
        return path

    return make


def fill_store(data_dir: Path, session: SessionRules, attendees: Iterable[str],
               registrants: Iterable[str]) -> None:
    """Pre-fill a device store as the sync daemon would after a full snapshot."""

    async def fill() -> None:
        store = await Store.open(data_dir)
        try:
            await store.replace_cache(session, attendees, registrants)
        finally:
            await store.close()

    asyncio.run(fill())


def read_scans(data_dir: Path) -> list[dict]:
    async def read() -> list[dict]:
        store = await Store.open(data_dir)
        try:
            return await store.scans()
        finally:
            await store.close()

    return asyncio.run(read())


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    return process_env()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """A ``checkin server`` of the test's own, killed after it."""
    server = Server(tmp_path / "server").start()
    yield server
    server.kill()


@pytest.fixture
def devices() -> Iterator[list[Device]]:
    """The test's devices (it appends them): their sync daemons are killed after it."""
    started: list[Device] = []
    yield started
    for device in started:
        if device.sync is not None:
            device.sync.stop(signal.SIGKILL)
