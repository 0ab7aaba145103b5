"""The organizers' pages in a real browser (headless Debian chromium, tests/browser.py),
against a real ``checkin server``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from tests.browser import Visit, chromium, visit
from tests.system import Server

__all__ = ["chromium"]  # the fixture, imported for pytest to find


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """An empty ``checkin server`` of the test's own."""
    server = Server(tmp_path / "server").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def browsing(chromium: Browser, server: Server) -> Iterator[Visit]:
    """A fresh browser context on the test's server; no JavaScript error may happen in it."""
    seen = visit(chromium, server)
    try:
        yield seen
    finally:
        seen.context.close()
    assert seen.errors == [], seen.errors


def test_chromium_loads_the_server(browsing: Visit) -> None:
    """The browser runs and reaches the server: the health check, as a browser gets it."""
    answer = browsing.page.goto("/api/health")
    assert answer is not None and answer.status == 200
    assert json.loads(browsing.page.inner_text("body"))["status"] == "ok"
