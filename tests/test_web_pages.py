"""The organizers' web interface over HTTP against a real ``checkin server``: sign-in,
cookies, CSRF, escaping, the seed's delete rule, the CSV import wizard, doors and the
attendee's schedule link. (The real-browser walkthrough is tests/test_browser.py.)"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from sync.device_end import ApplyChanges, ApplySnapshot
from sync.messages import CLOSE_REASSIGNED
from tests.system import ADMIN, Device, Server, SyncClient, private_ca, wait_for

XSS = "<script>alert(1)</script>"
PAGES_NEEDING_SIGN_IN = ["/", "/sessions", "/sessions/new", "/sessions/s1", "/sessions/s1/delete",
                         "/sessions/s1/import", "/attendees", "/attendees/import", "/doors"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory,
           module_database: str | None) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("web") / "server", database=module_database).start()
    try:
        yield running
    finally:
        running.stop()


class Page:
    """A browser's view of the pages: its cookie jar, and the last page's CSRF token."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.client = httpx.Client(base_url=server.url, timeout=60)
        self.last: httpx.Response | None = None

    def get(self, path: str, expect: int = 200, **params: Any) -> httpx.Response:
        response = self.client.get(path, params=params)
        assert response.status_code == expect, (path, response.status_code, response.text)
        self.last = response
        return response

    def csrf(self) -> str:
        assert self.last is not None
        match = re.search(r'name="csrf" value="([^"]*)"', self.last.text)
        assert match, "no CSRF field on the page"
        return match.group(1)

    def post(self, path: str, data: dict[str, Any] | None = None, expect: int = 303,
             files: Any = None, csrf: bool = True) -> httpx.Response:
        body = dict(data or {})
        if csrf and "csrf" not in body:
            body["csrf"] = self.csrf()
        response = self.client.post(path, data=body, files=files)
        assert response.status_code == expect, (path, response.status_code, response.text)
        if response.status_code != 303:
            self.last = response
        return response

    def follow(self, response: httpx.Response, expect: int = 200) -> httpx.Response:
        return self.get(response.headers["location"], expect)

    def sign_in(self) -> Page:
        self.get("/signin")
        self.post("/signin", {"token": ADMIN, "next": "/sessions"})
        self.get("/sessions")
        return self


def api(server: Server, method: str, path: str, body: Any = None) -> Any:
    return server.api(method, path, body)


@pytest.fixture
def page(server: Server) -> Page:
    return Page(server).sign_in()


def _session(server: Server, session_id: str, name: str = "Workshop", *,
             validate: bool = True) -> None:
    api(server, "PUT", f"/api/sessions/{session_id}",
        {"name": name, "validate_registrants": validate})


def _attendees(server: Server, *people: tuple[str, str] | tuple[str, str, str]) -> None:
    api(server, "POST", "/api/attendees",
        [{"code": p[0], "name": p[1], **({"email": p[2]} if len(p) > 2 else {})}
         for p in people])


def _registrants(server: Server, session_id: str) -> int:
    return server.client.get(f"/api/sessions/{session_id}/attendance").json()["registered"]


# -- sign-in, cookies, CSRF ---------------------------------------------------------------


@pytest.mark.parametrize("path", PAGES_NEEDING_SIGN_IN)
def test_every_page_but_sign_in_redirects_there_when_signed_out(server: Server,
                                                                 path: str) -> None:
    response = httpx.get(server.url + path)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/signin?next=")


def test_posts_need_sign_in_too(server: Server) -> None:
    response = httpx.post(server.url + "/sessions/s1/registrants/add", data={"name": "x"})
    assert response.status_code == 303
    assert response.headers["location"] == "/signin?next=%2Fsessions"
    response = httpx.post(server.url + "/sessions", data={"name": "x"})
    assert response.status_code == 303 and response.headers["location"].startswith("/signin")
    assert not any(s["name"] == "x" for s in api(server, "GET", "/api/sessions"))


def test_sign_in_page_and_stylesheet_are_public(server: Server) -> None:
    page = Page(server).get("/signin")
    assert 'id="signin-form"' in page.text and '<label for="token">' in page.text
    assert httpx.get(server.url + "/static/style.css").status_code == 200


def test_wrong_token_is_refused(server: Server) -> None:
    page = Page(server)
    page.get("/signin")
    refused = page.post("/signin", {"token": "not-the-token", "next": "/sessions"}, expect=401)
    assert "not this server&#39;s admin token" in refused.text
    assert page.client.get("/sessions").status_code == 303  # still signed out


def test_sign_in_sets_a_signed_http_only_strict_cookie_and_sign_out_ends_it(
        server: Server) -> None:
    page = Page(server)
    first = page.get("/signin")
    anonymous = first.headers["set-cookie"]
    signed_in = page.post("/signin", {"token": ADMIN, "next": "/doors"})
    assert signed_in.headers["location"] == "/doors"
    cookie = signed_in.headers["set-cookie"]
    flags = [part.strip().lower() for part in cookie.split(";")]
    assert "httponly" in flags and "samesite=strict" in flags and "path=/" in flags
    assert "secure" not in flags  # plain HTTP here: a Secure cookie would never come back
    assert cookie.split(";")[0] != anonymous.split(";")[0]  # a new session id at sign-in
    assert ADMIN not in cookie
    page.get("/doors")
    # A tampered cookie is no sign-in.
    value = page.client.cookies["checkin_web"]
    forged = httpx.Client(base_url=server.url, cookies={"checkin_web": value[:-2] + "xx"})
    assert forged.get("/doors").status_code == 303
    page.post("/signout")
    assert page.client.get("/doors").status_code == 303
    # A copy of the cookie from before signing out signs nobody in.
    copy = httpx.Client(base_url=server.url, cookies={"checkin_web": value})
    assert copy.get("/doors").status_code == 303


def test_the_cookie_is_secure_over_tls(tmp_path: Path) -> None:
    ca_file, cert_file, key_file = private_ca(tmp_path)
    verify = ssl.create_default_context(cafile=str(ca_file))
    server = Server(tmp_path / "server", tls=(str(cert_file), str(key_file)),
                    verify=verify).start()
    try:
        client = httpx.Client(base_url=server.url, verify=verify)
        form = client.get("/signin")
        assert "secure" in [p.strip().lower() for p in form.headers["set-cookie"].split(";")]
        csrf = re.search(r'name="csrf" value="([^"]*)"', form.text).group(1)
        signed_in = client.post("/signin", data={"csrf": csrf, "token": ADMIN})
        flags = [p.strip().lower() for p in signed_in.headers["set-cookie"].split(";")]
        assert {"secure", "httponly", "samesite=strict"} <= set(flags)
        assert client.get("/sessions").status_code == 200
    finally:
        server.stop()


def test_the_sign_in_only_redirects_within_the_server(server: Server) -> None:
    page = Page(server)
    page.get("/signin")
    response = page.post("/signin", {"token": ADMIN, "next": "//evil.example/x"})
    assert response.headers["location"] == "/sessions"


def test_forms_without_or_with_a_wrong_csrf_token_are_refused(server: Server,
                                                              page: Page) -> None:
    form = {"name": "Forged", "session_id": "forged"}
    missing = page.post("/sessions", form, expect=403, csrf=False)
    assert "CSRF token" in missing.text and "Form refused" in missing.text
    wrong = page.post("/sessions", form | {"csrf": "x" * 32}, expect=403)
    assert "CSRF token" in wrong.text
    # Another browser's token (a real one) is as wrong as a made-up one.
    other = Page(server).sign_in()
    page.post("/sessions", form | {"csrf": other.csrf()}, expect=403)
    assert not any(s["session_id"] == "forged" for s in api(server, "GET", "/api/sessions"))
    # The sign-in form too: no token, no sign-in.
    fresh = Page(server)
    fresh.get("/signin")
    fresh.post("/signin", {"token": ADMIN}, expect=403, csrf=False)
    assert fresh.client.get("/sessions").status_code == 303


def test_the_api_keeps_its_bearer_token(server: Server, page: Page) -> None:
    response = page.client.get("/api/sessions")  # the page's cookie is not the API's token
    assert response.status_code == 401 and response.json()["error"]
    assert server.client.get("/api/sessions").status_code == 200  # the Bearer token
    assert page.client.get("/api/no-such").json() == {"error": "no such route: GET /api/no-such"}


def test_unknown_pages_and_errors_are_pages_without_tracebacks(page: Page) -> None:
    missing = page.get("/no-such-page", expect=404)
    assert "text/html" in missing.headers["content-type"] and "Not found" in missing.text
    page.get("/sessions")
    bad = page.post("/sessions", {"name": "", "session_id": "empty-name"}, expect=400)
    assert "name: a session needs a name" in bad.text
    page.get("/sessions")
    bad = page.post("/sessions", {"name": "x", "session_id": "bad id!"}, expect=400)
    assert "session id" in bad.text and "letters, digits" in bad.text
    page.get("/sessions")
    bad = page.post("/sessions", {"name": "x", "starts_at": "2026-11-28T10:00",
                                  "ends_at": "2026-11-28T09:00"}, expect=400)
    assert "ends:" in bad.text and "before the start" in bad.text
    assert "Traceback" not in bad.text
    page.get("/sessions/no-such-session", expect=404)


# -- sessions --------------------------------------------------------------------------------


def test_sessions_are_created_listed_and_edited(server: Server, page: Page) -> None:
    page.get("/sessions/new")
    created = page.post("/sessions", {"session_id": "talk-1", "name": "Talk one",
                                      "starts_at": "2026-11-28T09:00",
                                      "ends_at": "2026-11-28T10:30"})
    assert created.headers["location"] == "/sessions/talk-1"
    shown = page.follow(created)
    assert "Session “Talk one” created." in shown.text
    assert 'id="validate-state">off<' in shown.text
    assert "2026-11-28 09:00-10:30 UTC" in shown.text
    listing = page.get("/sessions")
    assert 'id="sessions-table"' in listing.text and "Talk one" in listing.text
    # Validate Registrants on, through the edit form.
    page.get("/sessions/talk-1")
    page.post("/sessions/talk-1", {"name": "Talk one", "validate_registrants": "on",
                                   "starts_at": "2026-11-28T09:00",
                                   "ends_at": "2026-11-28T10:30"})
    session = next(s for s in api(server, "GET", "/api/sessions")
                   if s["session_id"] == "talk-1")
    assert session["validate_registrants"] is True
    assert session["starts_at"] == "2026-11-28T09:00:00+00:00"
    # The same id again is refused, not overwritten.
    page.get("/sessions/new")
    again = page.post("/sessions", {"session_id": "talk-1", "name": "Other"}, expect=409)
    assert "a session with this id exists" in again.text


def test_a_deleted_sessions_id_used_again_makes_its_connected_doors_resync(
        server: Server, page: Page) -> None:
    """As through the API: a door that dropped the deleted session would be sent its
    registrants before the session itself; the form closes its link (4002) instead, and
    the door reconnects for a snapshot."""
    _session(server, "phoenix", "Phoenix")
    token = server.provision("door-phoenix", "phoenix")

    async def door_sees_the_session_come_back() -> int | None:
        headers = {"Authorization": f"Bearer {token}"}
        async with websockets.connect(server.sync_url, additional_headers=headers) as ws:
            door = SyncClient(ws, "door-phoenix")
            await door.until(ApplySnapshot)
            await asyncio.to_thread(api, server, "DELETE", "/api/sessions/phoenix")
            await door.until(ApplyChanges)  # the session gone
            await asyncio.to_thread(page.get, "/sessions/new")
            await asyncio.to_thread(page.post, "/sessions",
                                    {"session_id": "phoenix", "name": "Phoenix again"})
            with pytest.raises(websockets.ConnectionClosed):
                async with asyncio.timeout(20):
                    while True:
                        await ws.recv()
            return ws.close_code

    assert asyncio.run(door_sees_the_session_come_back()) == CLOSE_REASSIGNED


def _capacity(server: Server, session_id: str) -> Any:
    return next(s for s in api(server, "GET", "/api/sessions")
                if s["session_id"] == session_id)["capacity"]


def test_a_sessions_capacity_is_set_shown_cleared_and_checked(server: Server,
                                                               page: Page) -> None:
    page.get("/sessions/new")
    assert 'id="capacity"' in page.last.text and 'max="10000000"' in page.last.text
    created = page.post("/sessions", {"session_id": "room-9", "name": "Room 9",
                                      "capacity": " 40 "})
    assert _capacity(server, "room-9") == 40
    shown = page.follow(created)
    inside = re.search(r'<li id="inside".*?</li>', shown.text, re.S)
    assert inside, "no 'Inside now' on the session page"
    shown_part = inside.group(0)
    assert 'id="inside-count">0<' in shown_part and 'id="capacity-count">40<' in shown_part
    assert re.search(r'id="capacity-of"\s*>', shown_part)  # shown: "of 40"
    assert re.search(r'id="no-capacity"\s+hidden', shown_part)
    assert re.search(r'id="at-capacity"\s+hidden', shown_part)  # not full
    assert 'value="40"' in shown.text  # the edit form keeps it
    listing = page.get("/sessions")
    row = re.search(r'<tr data-session-id="room-9">.*?</tr>', listing.text, re.S).group(0)
    assert ">0 of 40<" in row
    # Zero closes the room; empty is no limit again.
    page.get("/sessions/room-9")
    page.post("/sessions/room-9", {"name": "Room 9", "capacity": "0"})
    assert _capacity(server, "room-9") == 0
    page.get("/sessions/room-9")
    page.post("/sessions/room-9", {"name": "Room 9", "capacity": ""})
    assert _capacity(server, "room-9") is None
    shown = page.get("/sessions/room-9")
    assert re.search(r'id="capacity-of"\s+hidden', shown.text)
    # Anything but a whole number of people is refused, naming the field and the range;
    # nothing changes.
    for bad in ("-1", "2.5", "ten", "1e3", "10000001", "\u0663", "0x10", "9" * 40):
        page.get("/sessions/room-9")
        refused = page.post("/sessions/room-9", {"name": "Renamed", "capacity": bad},
                            expect=400)
        assert "capacity" in refused.text and "whole number of people" in refused.text
        assert "from 0 to 10,000,000, or empty for no limit" in refused.text
        assert "Traceback" not in refused.text
    page.get("/sessions/new")
    page.post("/sessions", {"session_id": "room-10", "name": "Room 10", "capacity": "many"},
              expect=400)
    sessions = {s["session_id"]: s for s in api(server, "GET", "/api/sessions")}
    assert "room-10" not in sessions and sessions["room-9"]["name"] == "Room 9"
    # The form without its CSRF token changes nothing.
    page.post("/sessions/room-9", {"name": "Room 9", "capacity": "5"}, expect=403, csrf=False)
    assert _capacity(server, "room-9") is None


def test_a_session_with_registrants_is_deleted_only_after_removing_them(
        server: Server, page: Page) -> None:
    _session(server, "doomed", "Doomed")
    _attendees(server, ("D-1", "Ada"), ("D-2", "Grace"), ("D-3", "Edsger"))
    for code in ("D-1", "D-2", "D-3"):
        api(server, "PUT", f"/api/sessions/doomed/registrants/{code}")
    page.get("/sessions/doomed/delete", expect=409)
    # Posting the delete anyway is refused, naming how many remain.
    refused = page.post("/sessions/doomed/delete", expect=409)
    assert 'id="remaining-registrants">3<' in refused.text
    assert "Remove all 3 registrants" in refused.text and 'id="delete-all-form"' in refused.text
    assert 'id="delete-session-form"' not in refused.text
    removed = page.post("/sessions/doomed/registrants/remove", {"all": "yes", "then": "delete"})
    assert removed.headers["location"] == "/sessions/doomed/delete"
    ready = page.follow(removed)
    assert "3 registrant(s) removed." in ready.text and 'id="delete-session-form"' in ready.text
    assert _registrants(server, "doomed") == 0
    gone = page.post("/sessions/doomed/delete")
    assert gone.headers["location"] == "/sessions"
    assert "Session “Doomed” deleted." in page.follow(gone).text
    assert not any(s["session_id"] == "doomed" for s in api(server, "GET", "/api/sessions"))


# -- the Registrants box -----------------------------------------------------------------------


def test_registrants_are_added_by_search_removed_by_ticking_and_paged(
        server: Server, page: Page) -> None:
    _session(server, "box", "Box")
    _attendees(server, *[(f"BOX-{n:03d}", f"Person {n:03d}", f"p{n}@example.org")
                         for n in range(120)])
    found = page.get("/sessions/box", find="Person 00")
    assert 'id="add-registrants-form"' in found.text
    page.post("/sessions/box/registrants/add", {"code": ["BOX-001", "BOX-002"],
                                                "find": "Person 00"})
    assert _registrants(server, "box") == 2
    # Already registered: shown ticked off, added again harmlessly.
    again = page.get("/sessions/box", find="BOX-001")
    assert "(registered)" in again.text
    added = page.post("/sessions/box/registrants/add", {"code": ["BOX-001"]})
    assert "0 registrant(s) added, 1 already registered." in page.follow(added).text
    # Remove one ticked.
    page.get("/sessions/box")
    page.post("/sessions/box/registrants/remove", {"code": ["BOX-002"]})
    assert _registrants(server, "box") == 1
    # 120 registrants: 50 a page, three pages; a filter.
    page.get("/sessions/box")
    page.post("/sessions/box/registrants/add", {"code": [f"BOX-{n:03d}" for n in range(120)]})
    assert _registrants(server, "box") == 120
    first = page.get("/sessions/box")
    assert first.text.count('name="code" value="BOX-') == 50 and "Page 1 of 3" in first.text
    last = page.get("/sessions/box", page="3")
    assert last.text.count('name="code" value="BOX-') == 20
    past = page.get("/sessions/box", page="7")  # past the end: the last page
    assert past.text.count('name="code" value="BOX-') == 20 and "Page 3 of 3" in past.text
    filtered = page.get("/sessions/box", q="Person 11")
    assert filtered.text.count('name="code" value="BOX-') == 10
    # Delete All, from the box.
    page.post("/sessions/box/registrants/remove", {"all": "yes"})
    assert _registrants(server, "box") == 0
    empty = page.get("/sessions/box")
    assert 'id="delete-all-form"' not in empty.text and 'id="no-registrants"' in empty.text


# -- attendees -------------------------------------------------------------------------------


def test_attendees_are_listed_searched_and_added(server: Server, page: Page) -> None:
    page.get("/attendees")
    added = page.post("/attendees", {"code": "ATT-ADD-1", "name": "Barbara Liskov",
                                     "email": "barbara@example.org"})
    shown = page.follow(added)
    assert "Attendee ATT-ADD-1 added." in shown.text and "barbara@example.org" in shown.text
    found = page.get("/attendees", q="liskov")
    assert 'id="attendees-table"' in found.text and "ATT-ADD-1" in found.text
    assert "No attendee matches" in page.get("/attendees", q="nobody-like-this").text
    bad = page.post("/attendees", {"code": "", "name": "x"}, expect=400)
    assert "code" in bad.text and "attendee code" in bad.text


# -- the CSV import wizard ----------------------------------------------------------------------


def _upload(page: Page, base: str, content: bytes, name: str = "list.csv",
            expect: int = 303) -> httpx.Response:
    page.get(base)
    return page.post(base, files={"file": (name, content, "text/csv")}, expect=expect)


def test_registrants_import_shows_problems_by_line_then_imports_a_good_file(
        server: Server, page: Page) -> None:
    _session(server, "imp", "Imported")
    _attendees(server, ("IMP-1", "Ada", "ada@example.org"), ("IMP-2", "Grace", "grace@example.org"))
    bad = _upload(page, "/sessions/imp/import",
                  "Name;E-mail\r\nAda;ada@example.org\r\nNobody;nobody@example.org\r\n"
                  .encode("cp1252"))
    wizard = page.follow(bad)
    assert 'id="columns-form"' in wizard.text and 'id="preview-table"' in wizard.text
    assert "semicolon" in wizard.text.lower()
    assert '<option value="E-mail" selected>' in wizard.text  # guessed from the header
    checked = page.post(bad.headers["location"], {"column": "E-mail", "match": "email"},
                        expect=422)
    assert 'id="import-problems"' in checked.text
    assert re.search(r'<td class="num">3</td><td>[^<]*unknown email', checked.text)
    assert 'id="commit-form"' not in checked.text
    # Committing anyway writes nothing.
    page.post(bad.headers["location"], {"column": "E-mail", "match": "email",
                                        "action": "commit"}, expect=422)
    assert _registrants(server, "imp") == 0
    good = _upload(page, "/sessions/imp/import", b"\xef\xbb\xbfcode\nIMP-1\nIMP-2\n")
    page.follow(good)
    ready = page.post(good.headers["location"], {"column": "code", "match": "code"}, expect=200)
    assert 'id="check-ok"' in ready.text and 'id="commit-form"' in ready.text
    assert _registrants(server, "imp") == 0  # a check writes nothing
    done = page.post(good.headers["location"], {"column": "code", "match": "code",
                                                "action": "commit"})
    assert done.headers["location"] == "/sessions/imp"
    assert "2 added" in page.follow(done).text
    assert _registrants(server, "imp") == 2
    # The upload is gone after the commit.
    page.get(good.headers["location"], expect=404)


def test_the_wizard_shows_a_ragged_files_problems_before_any_column_is_chosen(
        page: Page) -> None:
    upload = _upload(page, "/attendees/import", b"code,name\nR-1,Ada\nR-2,Grace,extra\n")
    wizard = page.follow(upload)
    assert 'id="file-problems"' in wizard.text and "line 3:" in wizard.text


def test_attendees_import_wizard(server: Server, page: Page) -> None:
    upload = _upload(page, "/attendees/import",
                     b"Badge,Full name,Mail\nCSV-1,Alan Turing,alan@example.org\n"
                     b"CSV-2,\"Hopper, Grace\",\n")
    wizard = page.follow(upload)
    assert "comma" in wizard.text.lower() and "Hopper, Grace" in wizard.text
    location = upload.headers["location"]
    missing = page.post(location, {"code": "", "name": "Full name"}, expect=400)
    assert "code: choose the column" in missing.text
    page.get(location)
    page.post(location, {"code": "Badge", "name": "Full name", "email": "Mail"}, expect=200)
    done = page.post(location, {"code": "Badge", "name": "Full name", "email": "Mail",
                                "action": "commit"})
    assert done.headers["location"] == "/attendees"
    assert "Hopper, Grace" in page.get("/attendees", q="CSV-").text


def test_import_refuses_binary_and_oversized_files_and_other_browsers_uploads(
        server: Server, page: Page) -> None:
    binary = _upload(page, "/attendees/import", b"\x00\x01\x02PNG\x00" * 100, "x.png",
                     expect=415)
    assert "Traceback" not in binary.text
    huge = b"code,name\n" + b"X-1,Someone with a long name\n" * 700_000
    too_large = _upload(page, "/attendees/import", huge, expect=413)
    assert "larger than 16 MiB" in too_large.text
    upload = _upload(page, "/attendees/import", b"code,name\nQ-1,Q\n")
    other = Page(server).sign_in()
    other.get(upload.headers["location"], expect=404)
    page.get(upload.headers["location"])


# -- escaping -----------------------------------------------------------------------------------


def test_attacker_controlled_text_is_escaped_on_every_page(server: Server, page: Page) -> None:
    _session(server, "xss", XSS)
    _attendees(server, ("XSS-1", XSS, '"><img src=x onerror=alert(1)>@example.org'))
    api(server, "PUT", "/api/sessions/xss/registrants/XSS-1")
    api(server, "PUT", "/api/devices/xss-door", {"session_id": "xss"})
    page.get("/attendees")
    link = page.post("/attendees/schedule-link", {"code": "XSS-1"}, expect=200)
    url = re.search(r'id="schedule-link" href="([^"]+)"', link.text).group(1)
    upload = _upload(page, "/sessions/xss/import", f"code,{XSS}\nXSS-1,{XSS}\n".encode())
    pages = [page.get("/sessions"), page.get("/sessions/xss"), page.get("/sessions/xss/import"),
             page.get("/sessions/xss", find="XSS"), page.get("/sessions/xss", q=XSS),
             page.get("/sessions/xss/delete", expect=409), page.get("/attendees"),
             page.get("/attendees", q=XSS), page.get("/doors"), link,
             page.get(upload.headers["location"]),
             page.post(upload.headers["location"], {"column": XSS, "match": "code"},
                       expect=422),
             page.get("/no-such/" + XSS, expect=404),
             page.get("/sessions/xss/attendance"), page.get("/sessions/xss/scans"),
             page.get("/sessions/xss/scans", show=XSS, expect=400),
             Page(server).get(url.removeprefix(server.url))]
    for shown in pages:
        assert XSS not in shown.text, shown.url
        assert "<img src=x" not in shown.text, shown.url
    assert all("&lt;script&gt;" in shown.text for shown in pages)


# -- doors ----------------------------------------------------------------------------------------


def test_doors_are_provisioned_reassigned_and_revoked(server: Server, page: Page) -> None:
    _session(server, "hall-a", "Hall A")
    _session(server, "hall-b", "Hall B")
    page.get("/doors")
    shown = page.post("/doors", {"device_id": "door-web-1", "session_id": "hall-a"},
                      expect=200)
    token = re.search(r'id="door-token" readonly value="([^"]+)"', shown.text).group(1)
    config = unescape(re.search(r'id="door-config"[^>]*>([^<]+)<', shown.text).group(1))
    assert 'id = "door-web-1"' in config
    assert f'url = "ws://127.0.0.1:{server.port}/sync"' in config
    assert 'token_file = "/etc/checkin/device.token"' in config
    assert len(token) >= 20
    doors = page.get("/doors")
    assert 'id="doors-table"' in doors.text and "door-web-1" in doors.text
    assert token not in doors.text  # shown once
    again = page.post("/doors", {"device_id": "door-web-1", "session_id": "hall-b"},
                      expect=409)
    assert "valid token" in again.text
    page.get("/doors")
    page.post("/doors/reassign", {"device_id": "door-web-1", "session_id": "hall-b"})
    device = next(d for d in api(server, "GET", "/api/devices")
                  if d["device_id"] == "door-web-1")
    assert device["session_id"] == "hall-b"
    page.get("/doors")
    page.post("/doors/revoke", {"device_id": "door-web-1"})
    device = next(d for d in api(server, "GET", "/api/devices")
                  if d["device_id"] == "door-web-1")
    assert device["revoked_at"]
    page.get("/doors")
    page.post("/doors/reassign", {"device_id": "door-web-1", "session_id": "hall-a"},
              expect=409)


# -- the attendee's schedule link ----------------------------------------------------------


def test_the_schedule_link_adds_and_removes_sessions_until_revoked(server: Server,
                                                                    page: Page) -> None:
    _session(server, "sched-a", "Morning talk")
    _session(server, "sched-b", "Afternoon workshop")
    _attendees(server, ("SCH-1", "Katherine Johnson", "kj@example.org"))
    page.get("/attendees", q="SCH-1")
    shown = page.post("/attendees/schedule-link", {"code": "SCH-1"}, expect=200)
    url = re.search(r'id="schedule-link" href="([^"]+)"', shown.text).group(1)
    assert url.startswith(server.url + "/schedule/")
    path = url.removeprefix(server.url)
    # The attendee is not signed in: the link alone lets them in.
    attendee = Page(server)
    schedule = attendee.get(path)
    assert "set-cookie" not in schedule.headers  # the link is the credential, no session
    assert 'id="schedule-table"' in schedule.text and "Add to Schedule" in schedule.text
    attendee.post(path, {"session_id": "sched-a", "action": "add"})
    assert _registrants(server, "sched-a") == 1
    assert "✓ On my schedule" in attendee.get(path).text
    # A form without the page's token is refused.
    attendee.post(path, {"session_id": "sched-b", "action": "add", "csrf": "nope"}, expect=403)
    attendee.get(path)
    attendee.post(path, {"session_id": "sched-a", "action": "remove"})
    assert _registrants(server, "sched-a") == 0
    # The same link again while it stands; revoked, it stops working.
    page.get("/attendees")
    again = page.post("/attendees/schedule-link", {"code": "SCH-1"}, expect=200)
    assert url in again.text
    page.post("/attendees/schedule-link/revoke", {"code": "SCH-1"})
    gone = attendee.get(path, expect=404)
    assert "Link not valid" in gone.text
    attendee.post(path, {"session_id": "sched-a", "action": "add", "csrf": "x"}, expect=404)
    page.get("/attendees")
    renewed = page.post("/attendees/schedule-link", {"code": "SCH-1"}, expect=200)
    assert url not in renewed.text
    Page(server).get("/schedule/" + "A" * 43, expect=404)


def test_secret_file_is_private(server: Server) -> None:
    secret = Path(server.data_dir) / "web-secret"
    assert secret.stat().st_mode & 0o777 == 0o600


# -- changes reach a real door at once ------------------------------------------------------------


def test_changes_made_on_the_pages_reach_a_connected_door(server: Server, page: Page,
                                                          tmp_path: Path) -> None:
    _session(server, "live", "Live", validate=False)
    _attendees(server, ("LIVE-1", "Ada"))
    page.get("/doors")
    shown = page.post("/doors", {"device_id": "door-live", "session_id": "live"}, expect=200)
    token = re.search(r'id="door-token" readonly value="([^"]+)"', shown.text).group(1)
    door = Device(tmp_path / "door-live", "door-live", server.sync_url)
    door.token_file.write_text(token + "\n")
    door.start_sync()
    try:
        def session_row() -> list[tuple]:
            return door.query("SELECT validate_registrants FROM session")

        wait_for(lambda: session_row() == [(0,)], what="the door's first snapshot")
        wait_for(lambda: ">1</strong> door(s) online" in page.get("/sessions/live").text,
                 what="the door online on the session page")
        page.post("/sessions/live", {"name": "Live", "validate_registrants": "on"})
        wait_for(lambda: session_row() == [(1,)], what="Validate Registrants at the door")
        page.get("/sessions/live")
        page.post("/sessions/live/registrants/add", {"code": ["LIVE-1"]})
        wait_for(lambda: door.registrants() == {"LIVE-1"}, what="the registrant at the door")
        page.get("/sessions/live")
        page.post("/sessions/live/registrants/remove", {"all": "yes"})
        wait_for(lambda: door.registrants() == set(), what="Delete All at the door")
        page.get("/doors")
        page.post("/doors/revoke", {"device_id": "door-live"})
        wait_for(lambda: "4004" in door.log(), what="the revoked door's link closed")
    finally:
        door.stop_sync()


def test_hostile_form_values_get_pages_naming_the_field(server: Server, page: Page) -> None:
    page.get("/attendees")
    long = page.post("/attendees", {"code": "H-1", "name": "n" * 201}, expect=400)
    assert "name" in long.text and "at most 200 characters" in long.text
    control = page.post("/attendees", {"code": "H\x01", "name": "x"}, expect=400)
    assert "code" in control.text and "attendee code" in control.text
    huge = page.post("/attendees", {"code": "H-2", "name": "x", "pad": "p" * (2 << 20)},
                     expect=413)
    assert "larger than 1 MiB" in huge.text
    page.get("/sessions", page="not-a-number")
    page.get("/attendees", q="%_\\'\"; DROP TABLE attendees; --")
    two = page.post("/attendees/import", files=[("file", ("a.csv", b"a\n", "text/csv")),
                                                ("file", ("b.csv", b"b\n", "text/csv"))],
                    expect=400)
    assert "Traceback" not in two.text
    page.get("/attendees/import")
    empty = page.post("/attendees/import", files={"file": ("e.csv", b"", "text/csv")},
                      expect=400)
    assert "file" in empty.text
    page.get("/attendees/import/not-an-upload-id-at-all", expect=404)
    page.get("/attendees/import/../../etc/passwd", expect=404)


def test_the_cookie_secret_is_made_once_kept_private_or_taken_from_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from server.web.auth import SECRET_ENV, SECRET_FILE, load_secret

    monkeypatch.delenv(SECRET_ENV, raising=False)
    first = load_secret(tmp_path)
    assert len(first) == 32 and load_secret(tmp_path) == first
    assert (tmp_path / SECRET_FILE).stat().st_mode & 0o777 == 0o600
    (tmp_path / SECRET_FILE).write_text("")  # truncated by a crash: a new, good one
    renewed = load_secret(tmp_path)
    assert len(renewed) == 32 and renewed != first
    (tmp_path / SECRET_FILE).write_text("not hex at all")
    assert len(load_secret(tmp_path)) == 32
    monkeypatch.setenv(SECRET_ENV, "from-the-environment")
    assert load_secret(tmp_path) == b"from-the-environment"
