"""Organizer pages: a session's page when the session has 50,000 registrants, as an
organizer's browser gets it from a real ``checkin server``: time to the first byte
(goal < 300 ms, p50 of several), for the first page of the Registrants box, a page deep
into it (its paging is by page number, 50 a page) and a search among the registrants.

The server's store is filled through its own methods before the server starts (as
the API's bulk calls would); the organizer signs in through the sign-in form like anyone
else, and every request carries that cookie. Time to the first byte is from sending the
request until the status line and headers are read (the page is rendered before a byte
is sent), on a kept-alive connection, so it is the server's work, not the handshake's.
"""

from __future__ import annotations

import asyncio
import http.client
import re
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from bench.report import Row, percentile
from checkin.harness import ROOT, Server
from server.store import Attendee, ServerStore
from sync.messages import SessionInfo

SESSION = SessionInfo("bench-pages", "A session with many registrants", True)
#: The goal for every page measured here.
GOAL_MS = 300.0
#: Registrants in the session (the issue's figure), and attendees beside them who are not.
REGISTRANTS = 50_000
OTHERS = 5_000
#: Where the sign-in form is, and the session page (server/web/pages.py).
SIGN_IN = "/signin"
SESSION_PAGE = "/sessions/{session_id}"


async def populate(data_dir: Path) -> None:
    store = await ServerStore.open(data_dir)
    try:
        codes = [f"ATT-{i:06d}" for i in range(REGISTRANTS + OTHERS)]
        await store.upsert_attendees([
            Attendee(code, f"Attendee {i:06d}", f"attendee{i:06d}@example.org")
            for i, code in enumerate(codes)])
        await store.put_session(SESSION)
        await store.put_registrants(SESSION.session_id, codes[:REGISTRANTS])
    finally:
        await store.close()


class Browser:
    """An organizer's signed-in connection to the server, kept alive between requests."""

    def __init__(self, server: Server) -> None:
        url = urlsplit(server.url)
        self.connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port,
                                                     timeout=60)
        self.cookies: dict[str, str] = {}
        self._sign_in(server.admin_token)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[float, float, int, bytes]:
        """(seconds to the first byte, seconds to the last, status, body)."""
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        started = time.perf_counter()
        self.connection.request(method, path, body=body, headers=headers)
        answer = self.connection.getresponse()
        first = time.perf_counter() - started
        content = answer.read()
        last = time.perf_counter() - started
        for value in answer.headers.get_all("Set-Cookie") or []:
            name, _, rest = value.partition("=")
            self.cookies[name.strip()] = rest.split(";", 1)[0]
        return first, last, answer.status, content

    def _sign_in(self, token: str) -> None:
        _, _, status, page = self.request("GET", SIGN_IN)
        csrf = re.search(rb'name="csrf"[^>]*value="([^"]+)"', page) or re.search(
            rb'value="([^"]+)"[^>]*name="csrf"', page)
        if status != 200 or csrf is None:
            raise RuntimeError(f"sign-in page: HTTP {status}, no CSRF field")
        form = urlencode({"csrf": csrf.group(1).decode(), "token": token}).encode()
        _, _, status, _ = self.request(
            "POST", SIGN_IN, form, {"Content-Type": "application/x-www-form-urlencoded"})
        if status not in (302, 303):
            raise RuntimeError(f"sign-in: HTTP {status}")

    def close(self) -> None:
        self.connection.close()


def _measure(browser: Browser, path: str, samples: int, expect: bytes) -> tuple[float, float]:
    """(p50 ms to the first byte, p50 ms to the last) of *samples* GETs of *path*, after
    one unmeasured (the server's caches and SQLite's pages warm, as in use)."""
    firsts, lasts = [], []
    for attempt in range(samples + 1):
        first, last, status, body = browser.request("GET", path)
        if status != 200 or expect not in body:
            raise RuntimeError(f"GET {path}: HTTP {status}, {expect!r} not in the page")
        if attempt:
            firsts.append(first * 1000)
            lasts.append(last * 1000)
    return percentile(firsts, 50), percentile(lasts, 50)


def run(quick: bool) -> list[Row]:
    samples = 5 if quick else 21
    page = SESSION_PAGE.format(session_id=SESSION.session_id)
    cases = [
        ("first page", page, b"ATT-000000"),
        # 50 a page: page 901 starts at the 45,001st registrant, by name.
        ("page 901 of 1,000", f"{page}?page=901", b"ATT-045000"),
        ("a search", f"{page}?q=049999", b"ATT-049999"),
    ]
    rows = []
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        folder = Path(tmp)
        asyncio.run(populate(folder / "server"))
        with Server(folder / "server", timeout=60) as server:
            browser = Browser(server)
            try:
                for what, path, expect in cases:
                    first, last = _measure(browser, path, samples, expect)
                    print(f"  session page with {REGISTRANTS:,} registrants, {what}: "
                          f"first byte {first:.1f} ms, last {last:.1f} ms (p50 of {samples})",
                          file=sys.stderr, flush=True)
                    rows.append(Row(f"session page, {REGISTRANTS:,} registrants, {what}: "
                                    "first byte", first, None, "", "ms",
                                    f"< {GOAL_MS:g} ms", first < GOAL_MS))
            finally:
                browser.close()
    return rows
