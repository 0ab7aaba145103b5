"""Shared fixtures: device config files and pre-filled stores on real files."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from core.rules import SessionRules
from sync.device_store import Store

REPO = Path(__file__).resolve().parent.parent
#: Real QR images with their expected contents (Apache-2.0, from zxing-cpp: see its README.txt).
CORPUS = REPO / "tests" / "corpus" / "zxing-cpp-samples"
CHECKIN = [sys.executable, "-m", "checkin.cli"]


def config_text(data_dir: Path, source: str, *, extra: str = "", gpio: str = "") -> str:
    return f"""
[device]
id = "door-test"
data_dir = "{data_dir}"

[camera]
source = "{source}"
fps = 20
frames_per_image = 2

[gpio]
pin_factory = "mock"
green = 17
red = 27
buzzer = 22
{gpio}
{extra}
"""


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
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env["PYTHONPATH"] = str(REPO)
    return env
