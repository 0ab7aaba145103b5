"""A real browser for the organizers' pages: Debian's chromium driven by Playwright's
Python client.

Playwright's own browser builds cannot be downloaded here (nor on the machines that run
the tests offline), so the system chromium is launched by path: scripts/system-packages.sh
installs it, ``$CHECKIN_CHROMIUM`` points elsewhere. Each test gets a new browser context
(its own cookies and storage) on the test's own ``checkin server`` (tests.system.Server,
started empty by tests/test_browser.py); the browser itself is shared by the module's
tests, started with a fresh profile of its own (Playwright's ``launch`` passes chromium a
throwaway ``--user-data-dir`` under /tmp and deletes it at ``close``).

``CHECKIN_SCREENSHOTS=1 pytest tests/test_browser.py`` also writes each page the
walkthrough visits to docs/screenshots/ (docs/organizers.md shows them); a normal run
writes nothing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Dialog,
    Page,
    Playwright,
    Response,
    sync_playwright,
)

from tests.system import Server

__all__ = ["CHROMIUM", "SCREENSHOTS", "VIEWPORT", "Visit", "chromium", "launch", "visit"]

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("CHECKIN_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = REPO / "docs" / "screenshots"
#: A large phone held upright: organizers use the pages walking the venue.
VIEWPORT = {"width": 414, "height": 896}
#: Nothing a test does should wait this long; it only turns a hang into a failure
#: that names the step (Playwright's default is 30 s, tight for a loaded CI machine).
STEP_TIMEOUT_MS = 60_000

#: Chromium's background work (updates, sync, field trials, GPU probing) is noise in a
#: test and would reach for the network; none of it is what the pages need.
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def launch(playwright: Playwright) -> Browser:
    """Start the system chromium, headless, with a fresh profile."""
    if not CHROMIUM.exists():
        pytest.fail(f"no chromium at {CHROMIUM}: run scripts/system-packages.sh "
                    "(or set CHECKIN_CHROMIUM to a chromium binary)")
    args = list(CHROMIUM_ARGS)
    if os.geteuid() == 0:
        # Chromium's sandbox refuses to run as root (CI containers do); the pages are
        # our own on 127.0.0.1, so there is no hostile content to contain.
        args.append("--no-sandbox")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """One headless chromium for a test module."""
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Visit:
    """A browser context on one server: its page, and what the page did besides
    (JavaScript errors, server errors, dialogs), which a test checks at its end."""

    server: Server
    context: BrowserContext
    page: Page
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def shoot(self, name: str) -> None:
        """A page of the walkthrough: check that it fits a phone's width, and save it as
        docs/screenshots/*name*.png when ``CHECKIN_SCREENSHOTS`` is set (the files are
        committed; a normal run must not rewrite them)."""
        if not re.fullmatch(r"[0-9a-z-]+", name):
            raise ValueError(f"screenshot name {name!r}: lower-case letters, digits, dashes")
        # Wide tables scroll inside their box; the page itself must not scroll sideways
        # (an organizer with a phone in one hand would lose the buttons off the edge).
        wide = self.page.evaluate("document.documentElement.scrollWidth")
        assert wide <= VIEWPORT["width"], f"{name}: the page is {wide} px wide on a phone"
        if not os.environ.get("CHECKIN_SCREENSHOTS"):
            return
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True,
                             animations="disabled")

    def _console(self, message: ConsoleMessage) -> None:
        # A missing resource is reported twice (here and as its response); the response
        # says which, and a missing /favicon.ico is no fault of the pages.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(f"console: {message.text}")

    def _response(self, response: Response) -> None:
        if response.status >= 500:
            self.errors.append(f"HTTP {response.status} for {response.request.method} "
                               f"{response.url}")

    def _dialog(self, dialog: Dialog) -> None:
        # Playwright dismisses dialogs unless told otherwise, which would cancel a
        # confirm(); an organizer clicking OK is what the tests mean.
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.accept()


def visit(browser: Browser, server: Server) -> Visit:
    """A fresh context (no cookies) on *server*, phone-sized, with one page."""
    context = browser.new_context(base_url=server.url, viewport=VIEWPORT,
                                  device_scale_factor=1, locale="en-GB",
                                  timezone_id="Europe/London")
    context.set_default_timeout(STEP_TIMEOUT_MS)
    page = context.new_page()
    seen = Visit(server, context, page)
    page.on("pageerror", lambda error: seen.errors.append(str(error)))
    page.on("console", seen._console)
    page.on("response", seen._response)
    page.on("dialog", seen._dialog)
    return seen


@pytest.fixture
def browsing(chromium: Browser, server: Server) -> Iterator[Visit]:
    """A fresh browser context on the test's own ``server`` fixture (each browser test
    module defines one); no JavaScript error may happen in it."""
    seen = visit(chromium, server)
    try:
        yield seen
    finally:
        seen.context.close()
    assert seen.errors == [], seen.errors
