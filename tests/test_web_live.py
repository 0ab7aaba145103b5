"""The organizers' live pages (issue 13) over HTTP against a real ``checkin server``: the
server-sent events stream of a session sends fresh numbers after a door's scan is
stored, every live page and stream needs sign-in, hostile names are escaped, the
one-time sign-in link works once; and in-process, that one computation per change is
shared by every stream and a stream that ends lets its feed go."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from server.live import Live
from server.web import dashboard
from server.web.dashboard import Feeds, _events, _silent, _unsettled
from server.web.pages import WebError, clock, form_capacity, offset
from sync.device_end import ApplySnapshot, CacheState, DeviceEnd
from sync.messages import Scan
from tests.system import ADMIN, Server, SyncClient

XSS = "<script>alert(1)</script>"
FORMULA = "=HYPERLINK(\"http://evil.example\")"
LIVE_PAGES = ["/live", "/doors/live", "/sessions/s1/live", "/live/overview", "/live/doors",
              "/live/sessions/s1", "/live/sessions/s1/not-arrived",
              "/sessions/s1/attendance.csv", "/scans.csv", "/sessions/s1/scans",
              "/sessions/s1/attendance"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory,
           module_database: str | None) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("live") / "server", database=module_database).start()
    running.api("POST", "/api/attendees", [{"code": "A1", "name": "Ann"},
                                           {"code": "B2", "name": XSS},
                                           {"code": "C3", "name": "Cleo"},
                                           {"code": "D4", "name": FORMULA}])
    running.api("PUT", "/api/sessions/s1", {"name": "One", "validate_registrants": True})
    running.api("PUT", "/api/sessions/evil", {"name": XSS, "validate_registrants": False})
    for session, code in (("s1", "A1"), ("s1", "B2"), ("s1", "C3"), ("evil", "B2"),
                          ("evil", "D4")):
        running.api("PUT", f"/api/sessions/{session}/registrants/{code}")
    try:
        yield running
    finally:
        running.stop()


def csrf_of(page: httpx.Response) -> str:
    match = re.search(r'name="csrf" value="([^"]*)"', page.text)
    assert match, "no CSRF field on the page"
    return match.group(1)


@contextlib.contextmanager
def signed_in(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        page = client.get("/signin")
        answer = client.post("/signin", data={"csrf": csrf_of(page), "token": ADMIN,
                                              "next": "/live"})
        assert answer.status_code == 303, answer.text
        yield client


def once_link(server: Server, next_page: str = "/live") -> str:
    answer = server.client.post("/signin/once", params={"next": next_page})
    assert answer.status_code == 201, answer.text
    return answer.json()["path"]


def scan(session: str, code: str) -> Scan:
    return Scan(str(uuid.uuid4()), 1, code, session, "admitted", "registered",
                datetime.now(UTC).isoformat(), 1, "boot")


async def updates(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON of each ``update`` event of an event stream."""
    event, data = "", []
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            if event == "update":
                yield json.loads("\n".join(data))
            event, data = "", []


# -- over HTTP -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", LIVE_PAGES)
def test_every_live_page_and_stream_needs_sign_in(server: Server, path: str) -> None:
    answer = httpx.get(server.url + path, timeout=30)
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/signin?next=")
    assert "text/event-stream" not in answer.headers.get("content-type", "")


def test_the_stream_is_an_event_stream_and_a_missing_session_a_404(server: Server) -> None:
    with signed_in(server) as client:
        with client.stream("GET", "/live/sessions/s1") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            assert stream.headers["cache-control"] == "no-store"
        assert client.get("/live/sessions/nope").status_code == 404
        assert client.get("/sessions/nope/live").status_code == 404


async def test_the_session_stream_sends_fresh_numbers_after_a_scan_is_stored(
        server: Server) -> None:
    device_id = f"door-{uuid.uuid4().hex[:8]}"
    token = server.provision(device_id, "s1")
    with signed_in(server) as browser:
        cookies = browser.cookies
    async with httpx.AsyncClient(base_url=server.url, cookies=cookies,
                                 timeout=httpx.Timeout(30, read=30)) as client, \
            client.stream("GET", "/live/sessions/s1") as stream:
        events = updates(stream)
        first = await anext(events)  # the numbers as they are, at once
        assert first["session_id"] == "s1" and first["registered"] == 3
        before = first["admitted"]
        assert {a["code"] for a in first["not_arrived_page"]} <= {"A1", "B2", "C3"}
        async with connect(server.sync_url,
                           additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            door = SyncClient(ws, device_id)
            await door.until(ApplySnapshot)
            code = "C3"
            stored = await door.push(scan("s1", code))
            assert [r.result for r in stored.results] == ["accepted"]
            async with asyncio.timeout(20):
                async for data in events:
                    if data["admitted"] > before:
                        break
            assert data["admitted"] == before + 1
            assert code not in {a["code"] for a in data["not_arrived_page"]}
            assert data["arrivals_per_minute"] and data["last_scan_at"]
            mine = [d for d in data["doors"] if d["device_id"] == device_id]
            assert mine and mine[0]["connected"] is True
        # The door went away: the page hears of it and says the numbers are not final.
        # (Other tests' doors of s1 may make it not final already: wait for this door.)
        async with asyncio.timeout(20):
            async for data in events:
                if data["not_final"] and any(device_id in why for why in data["not_final_why"]):
                    break
            else:
                pytest.fail("the stream ended before it said the door went away")


@pytest.mark.parametrize("path", ["/live", "/sessions/evil/live", "/doors/live"])
def test_hostile_names_are_escaped_on_the_live_pages(server: Server, path: str) -> None:
    with signed_in(server) as client:
        page = client.get(path)
    assert page.status_code == 200, page.text
    assert XSS not in page.text
    if path != "/doors/live":
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    for element in ("live-state", "live-page"):
        assert f'id="{element}"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_the_live_session_page_has_its_elements_and_exports(server: Server) -> None:
    with signed_in(server) as client:
        page = client.get("/sessions/s1/live")
        for element in ("admitted-count", "registered-count", "not-arrived-table", "not-final",
                        "arrivals-chart", "rejected-table", "export-attendance", "export-scans",
                        "not-arrived-search", "inside-count", "capacity-of", "no-capacity",
                        "at-capacity", "overrides-count", "audit-flags", "over-capacity-count",
                        "double-admissions-count", "scan-log-link", "time-in-session-link"):
            assert f'id="{element}"' in page.text, element
        search = client.get("/live/sessions/s1/not-arrived", params={"q": "ann"})
        assert search.status_code == 200
        assert [r["code"] for r in search.json()["rows"]] in ([], ["A1"])
        doors = client.get("/doors/live")
        assert 'id="doors-table"' in doors.text or 'id="no-doors"' in doors.text


def test_the_csv_exports_under_the_cookie(server: Server) -> None:
    with signed_in(server) as client:
        attendance = client.get("/sessions/evil/attendance.csv")
        assert attendance.status_code == 200, attendance.text
        assert attendance.headers["content-type"].startswith("text/csv")
        assert "attachment" in attendance.headers["content-disposition"]
        rows = list(csv.reader(io.StringIO(attendance.content.decode("utf-8"))))
        assert rows[0][:3] == ["code", "name", "email"]
        names = {row[0]: row[1] for row in rows[1:]}
        assert names["B2"] == XSS and names["D4"] == "'" + FORMULA  # text, never a formula
        scans = client.get("/scans.csv", params={"session_id": "s1"})
        assert scans.status_code == 200 and scans.text.startswith("scan_id,")
        assert client.get("/scans.csv").status_code == 200
        assert client.get("/sessions/nope/attendance.csv").status_code == 404
        assert client.get("/scans.csv", params={"session_id": "../x"}).status_code == 400
        page = client.get("/sessions/s1/live")
        assert 'href="/sessions/s1/attendance.csv"' in page.text
        assert 'href="/scans.csv?session_id=s1"' in page.text


def test_the_one_time_sign_in_link_signs_in_once(server: Server) -> None:
    assert httpx.post(server.url + "/signin/once", timeout=30).status_code == 401
    assert httpx.post(server.url + "/signin/once", timeout=30,
                      headers={"Authorization": "Bearer wrong"}).status_code == 401
    path = once_link(server, "/sessions/s1/live")
    with httpx.Client(base_url=server.url, timeout=30) as browser:
        form = browser.get(path)  # opening (or a link preview) does not spend it
        assert form.status_code == 200 and 'id="signin-once-form"' in form.text
        form = browser.get(path)
        refused = browser.post(path, data={"next": "/live"})  # no CSRF token: refused
        assert refused.status_code == 403
        answer = browser.post(path, data={"csrf": csrf_of(form), "next": "/sessions/s1/live"})
        assert answer.status_code == 303
        assert answer.headers["location"] == "/sessions/s1/live"
        assert browser.get("/sessions/s1/live").status_code == 200
    with httpx.Client(base_url=server.url, timeout=30) as other:
        assert other.get(path).status_code == 404  # used
        page = other.get("/signin")
        again = other.post(path, data={"csrf": csrf_of(page), "next": "/live"})
        assert again.status_code == 404
        assert other.get("/live").status_code == 303  # not signed in
    # Only a path on this server: never another site.
    evil = once_link(server, "https://evil.example/")
    assert "evil.example" not in evil


# -- two doors of one session: capacity, exits, overrides and the audit's flags ----------


#: One moment for every scan of a test (their times are exact minutes apart).
NOW = datetime.now(UTC).replace(microsecond=0)


def door_scan(code: str, seq: int, minutes_ago: float, *, decision: str = "admitted",
              reason: str = "registered", direction: str | None = None,
              override_of: str | None = None, session: str = "hall") -> Scan:
    at = NOW - timedelta(minutes=minutes_ago)
    return Scan(str(uuid.uuid4()), seq, code, session, decision, reason, at.isoformat(),
                seq, "boot", direction=direction, override_of=override_of)


async def push_from(server: Server, device_id: str, *scans: Scan,
                    session: str = "hall") -> None:
    token = server.provision(device_id, session)
    async with connect(server.sync_url,
                       additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        door = SyncClient(ws, device_id)
        await door.until(ApplySnapshot)
        stored = await door.push(*scans)
        assert [r.result for r in stored.results] == ["accepted"] * len(scans), stored


def rows_of(page: str, table: str) -> dict[str, str]:
    """The rows of *table* on *page* by their ``data-scan-id`` or ``data-code``."""
    body = re.search(rf'<table id="{table}".*?</table>', page, re.S)
    assert body, f"no {table} on the page"
    return {m.group(1): m.group(2) for m in re.finditer(
        r'<tr (?:id="[^"]*" )?data-(?:scan-id|code)="([^"]*)"(.*?)</tr>', body.group(0), re.S)}


@pytest.fixture(scope="module")
def hall(server: Server) -> dict[str, Scan]:
    """Session *hall* (capacity 1) and what its two doors did: front admitted Ann 30
    minutes ago and she left through the exit 10 minutes later; side admitted Cleo while
    Ann was inside (over capacity), then Ann again (a double admission: re-entry is
    forbidden and side had not heard of front's admission); side turned D4 away and staff
    overrode it; a hostile badge was read. The session ended 3 minutes ago."""
    server.api("PUT", "/api/sessions/hall", {
        "name": "Hall " + XSS, "validate_registrants": False, "capacity": 1,
        "starts_at": (NOW - timedelta(hours=1)).isoformat(),
        "ends_at": (NOW - timedelta(minutes=3)).isoformat()})
    scans = {
        "ann_in": door_scan("A1", 1, 30),
        "ann_out": door_scan("A1", 2, 20, direction="out"),
        "cleo_in": door_scan("C3", 1, 25),
        "ann_again": door_scan("A1", 2, 15),
        "d4_refused": door_scan("D4", 3, 5, decision="rejected", reason="full"),
        "hostile": door_scan(XSS, 5, 1, decision="rejected", reason="invalid_code"),
    }
    scans["d4_override"] = door_scan("D4", 4, 4.9, reason="override",
                                     override_of=scans["d4_refused"].scan_id)
    asyncio.run(push_from(server, "front", scans["ann_in"], scans["ann_out"]))
    asyncio.run(push_from(server, "side", scans["cleo_in"], scans["ann_again"],
                          scans["d4_refused"], scans["d4_override"], scans["hostile"]))
    return scans


def test_the_scan_log_shows_each_door_direction_override_and_flag(
        server: Server, hall: dict[str, Scan]) -> None:
    with signed_in(server) as client:
        page = client.get("/sessions/hall/scans")
        assert page.status_code == 200, page.text
        rows = rows_of(page.text, "scans-table")
        assert set(rows) == {s.scan_id for s in hall.values()}
        out = rows[hall["ann_out"].scan_id]
        assert 'class="exit"' in out and '<td class="direction" data-label="In/out">out</td>' in out
        assert '<td class="direction" data-label="In/out">in</td>' in rows[hall["ann_in"].scan_id]
        assert "<code>front</code>" in out
        override = rows[hall["d4_override"].scan_id]
        assert "<code>side</code>" in override
        assert f'override of <code title="{hall["d4_refused"].scan_id}">' in override
        assert 'data-flag="double_admission"' in rows[hall["ann_again"].scan_id]
        assert not any('data-flag="double_admission"' in rows[hall[k].scan_id]
                       for k in ("ann_in", "cleo_in", "d4_override"))
        # Capacity 1, counted as the scans reached the server: front's two first (Ann in
        # and out), then side's: Cleo makes 1, Ann 2 and D4's override 3.
        assert {k for k, s in hall.items()
                if 'data-flag="over_capacity"' in rows[s.scan_id]} == {"ann_again",
                                                                       "d4_override"}
        # Hostile text is text.
        assert XSS not in page.text and "&lt;script&gt;" in page.text
        # Each filter shows its scans only.
        for show, expected in (("exit", {"ann_out"}), ("override", {"d4_override"}),
                               ("double_admission", {"ann_again"})):
            shown = client.get("/sessions/hall/scans", params={"show": show})
            assert set(rows_of(shown.text, "scans-table")) == {
                hall[k].scan_id for k in expected}, show
            assert 'aria-current="page"' in shown.text
        over = rows_of(client.get("/sessions/hall/scans",
                                  params={"show": "over_capacity"}).text, "scans-table")
        assert set(over) == {hall["ann_again"].scan_id, hall["d4_override"].scan_id}
        flagged = rows_of(client.get("/sessions/hall/scans", params={"show": "flagged"}).text,
                          "scans-table")
        assert hall["ann_again"].scan_id in flagged and hall["ann_in"].scan_id not in flagged
        # Bad parameters are pages naming them.
        bad = client.get("/sessions/hall/scans", params={"show": XSS})
        assert bad.status_code == 400 and "show" in bad.text and XSS not in bad.text
        bad = client.get("/sessions/hall/scans", params={"after": "-1"})
        assert bad.status_code == 400 and "after" in bad.text
        assert client.get("/sessions/nope/scans").status_code == 404


def test_the_scan_log_pages_on_from_where_it_stopped(server: Server) -> None:
    server.api("PUT", "/api/sessions/long", {"name": "Long", "validate_registrants": False})
    scans = [door_scan(f"L{n}", n, 1, session="long",
                       reason="override" if n % 3 == 0 else "registered")
             for n in range(1, 121)]
    asyncio.run(push_from(server, "long-door", *scans, session="long"))
    with signed_in(server) as client:
        for show, expected, pages in (
                ("all", scans, 3),
                ("override", [s for s in scans if s.reason == "override"], 1)):
            seen: list[str] = []
            path = f"/sessions/long/scans?show={show}"
            for _ in range(pages):
                page = client.get(path)
                assert page.status_code == 200, page.text
                seen += list(rows_of(page.text, "scans-table"))
                found = re.search(r'id="scans-next" rel="next" href="([^"]+)"', page.text)
                if not found:
                    break
                path = found.group(1).replace("&amp;", "&")
            assert seen == [s.scan_id for s in expected], show
            assert not found, f"{show}: a next page after the last scan"


def test_live_counts_inside_capacity_overrides_and_flags(server: Server,
                                                         hall: dict[str, Scan]) -> None:
    with signed_in(server) as client:
        page = client.get("/sessions/hall/live")
        assert page.status_code == 200
        # Ann left; Cleo, Ann (again) and D4 (override) are inside: 3 of capacity 1.
        assert 'id="inside-count">3<' in page.text and 'id="capacity-count">1<' in page.text
        assert re.search(r'id="at-capacity"\s*>full<', page.text)
        assert 'id="overrides-count">1<' in page.text
        assert re.search(r'id="audit-flags"\s*>', page.text)  # shown
        assert 'id="double-admissions-count">1<' in page.text
        assert 'id="over-capacity-count">2<' in page.text
        assert 'href="/sessions/hall/scans?show=over_capacity"' in page.text
        assert XSS not in page.text
        overview = client.get("/live")
        row = re.search(r'<tr data-session-id="hall">.*?</tr>', overview.text, re.S).group(0)
        assert ">3 of 1<" in row and "flagged" in row


def test_time_in_session_per_attendee(server: Server, hall: dict[str, Scan]) -> None:
    with signed_in(server) as client:
        page = client.get("/sessions/hall/attendance")
        assert page.status_code == 200, page.text
        rows = rows_of(page.text, "attendance-table")
        assert {"A1", "C3", "D4", XSS.replace("<", "&lt;").replace(">", "&gt;")} >= set(rows)
        minutes = {code: re.search(r'class="num minutes"[^>]*>([^<]*)<', row).group(1)
                   for code, row in rows.items()}
        # Ann: in 30 minutes ago, out 10 minutes later, in again 15 minutes ago until the
        # session's end 3 minutes ago: 10 + 12 minutes. Cleo: 25 - 3.
        assert (minutes["A1"], minutes["C3"]) == ("22", "22")
        assert 'data-label="Overrides">1</td>' in rows["D4"]  # one override
        assert "Traceback" not in page.text and XSS not in page.text
        # A page may end at any code a door recorded, a hostile one too: the next goes on.
        after = client.get("/sessions/hall/attendance", params={"after": XSS})
        assert after.status_code == 200 and XSS not in after.text
        assert set(rows_of(after.text, "attendance-table")) == {"A1", "C3", "D4"}
        bad = client.get("/sessions/hall/attendance", params={"after": "x" * 401})
        assert bad.status_code == 400 and "after" in bad.text


# -- in-process: the pages' pure parts ---------------------------------------------------


def test_pick_scans_takes_what_the_filter_keeps_and_says_where_it_stopped() -> None:
    rows = [{"position": n, "reason": "override" if n % 3 == 0 else "registered"}
            for n in range(1, 11)]
    keep = dashboard.SCAN_FILTERS["override"][1]
    assert dashboard.pick_scans(rows, keep, 2, 0) == ([rows[2], rows[5]], 6)
    assert dashboard.pick_scans(rows, keep, 5, 0) == ([rows[2], rows[5], rows[8]], 10)
    assert dashboard.pick_scans([], keep, 5, 7) == ([], 7)


def test_minutes_in_session_are_whole_minutes_as_in_the_export() -> None:
    assert dashboard.minutes_in_session({"time_in_session": 720}) == 12
    assert dashboard.minutes_in_session({"time_in_session": 719}) == 11
    assert dashboard.minutes_in_session({"time_in_session": 0}) == 0
    assert dashboard.minutes_in_session({}) is None


def test_the_capacity_field() -> None:
    assert form_capacity("") is None and form_capacity("  ") is None
    assert form_capacity(" 0 ") == 0 and form_capacity("10000000") == 10_000_000
    for bad in ("-1", "1.0", "1e3", "\u0663", "10000001", "1_000", "+5"):
        with pytest.raises(WebError, match=r"capacity .*whole number of people"):
            form_capacity(bad)


# -- in-process: feeds ------------------------------------------------------------------


async def test_one_computation_per_change_is_shared_by_every_stream() -> None:
    live = Live()
    feeds = Feeds(live)
    computed = 0

    async def compute() -> dict[str, Any]:
        nonlocal computed
        computed += 1
        return {"n": computed}

    def cares(topic: str) -> bool:
        return topic == "session:s1"

    streams = [_events(feeds, feeds.acquire("session:s1", compute, cares)) for _ in range(5)]
    assert len(feeds) == 1
    assert [await anext(s) for s in streams] == ["retry: 2000\n\n"] * 5
    firsts = [await anext(s) for s in streams]
    assert all('"n":1' in f for f in firsts) and computed == 1
    live.publish("session:other", "doors")  # not this feed's: nothing recomputed
    live.publish("session:s1")
    seconds = [await anext(s) for s in streams]
    assert all('"n":2' in f for f in seconds) and computed == 2
    for stream in streams:
        await stream.aclose()  # the browser went away: the stream's finally runs
    assert len(feeds) == 0
    await asyncio.sleep(0)
    assert len(live) == 0  # the feed's subscription is gone with it


async def test_the_server_stopping_ends_every_stream() -> None:
    live = Live()
    feeds = Feeds(live)

    async def compute() -> dict[str, Any]:
        return {"ok": True}

    stream = _events(feeds, feeds.acquire("doors", compute, lambda t: t == "doors"))
    assert await anext(stream) == "retry: 2000\n\n"
    assert "update" in await anext(stream)
    live.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(stream), 10)
    assert len(feeds) == 0


def test_a_door_is_silent_after_twice_its_status_interval() -> None:
    now = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)

    def door(seconds_ago: float | None, interval: float | None, **more: Any) -> dict[str, Any]:
        seen = None if seconds_ago is None else (
            now - timedelta(seconds=seconds_ago)).isoformat()
        return {"last_seen_at": seen, "status_seconds": interval, **more}

    assert _silent(door(11, 5), now)
    assert not _silent(door(9, 5), now)
    assert not _silent(door(600, None), now)  # an interval not told: never called silent
    assert not _silent(door(None, 5), now)  # never seen: offline, not silent
    assert not _silent(door(600, 5, revoked=True), now)


def test_times_and_offsets_for_people() -> None:
    today = datetime.now(UTC).replace(microsecond=0)
    assert clock(today.isoformat()) == f"{today:%H:%M:%S} UTC"
    assert clock("2020-01-02T03:04:05.678Z") == "2020-01-02 03:04:05 UTC"
    assert clock("2020-01-02T03:04:00Z", minutes=True) == "2020-01-02 03:04"
    assert clock(None) == "" and clock("garbage") == "garbage"
    assert offset(None) == "?" and offset(-0.01) == "0.0 s" and offset(1.25) == "+1.2 s"


async def test_an_idle_stream_sends_a_heartbeat_comment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dashboard, "HEARTBEAT", 0.05)
    live = Live()
    feeds = Feeds(live)

    async def compute() -> dict[str, Any]:
        return {"ok": True}

    stream = _events(feeds, feeds.acquire("doors", compute, lambda t: t == "doors"))
    assert await anext(stream) == "retry: 2000\n\n"
    assert (await anext(stream)).startswith("event: update\n")
    assert await asyncio.wait_for(anext(stream), 10) == ": heartbeat\n\n"  # nothing changed
    live.publish("sessions")  # not the doors' topic: still nothing to send
    assert await asyncio.wait_for(anext(stream), 10) == ": heartbeat\n\n"
    await stream.aclose()
    assert len(feeds) == 0


def test_numbers_are_not_final_while_a_door_is_offline_silent_or_has_scans_waiting() -> None:
    def door(**state: Any) -> dict[str, Any]:
        return {"device_id": "d1", "connected": True, "silent": False, "scans_waiting": 0,
                "revoked": False, **state}

    assert _unsettled([door()]) == []
    assert _unsettled([door(revoked=True, connected=False)]) == []  # no longer a door
    assert _unsettled([door(connected=False)]) == ["door d1 is offline"]
    assert _unsettled([door(silent=True)]) == ["door d1 is silent"]
    assert _unsettled([door(scans_waiting=3)]) == ["door d1 has 3 scan(s) waiting to upload"]
    assert _unsettled([door(scans_waiting=None)]) == []  # not told yet


def test_the_scan_log_marks_times_the_door_did_not_know(server: Server) -> None:
    """A door three days behind, its time unknown: a scan of the boot it said hello in is
    shown at the server's reckoning, marked reconstructed with what the door said; a scan
    of an earlier boot (no anchor yet) is marked unknown. The "time" filter shows both."""
    server.api("PUT", "/api/sessions/clockless", {"name": "Clockless",
                                                 "validate_registrants": False})
    behind = (NOW - timedelta(days=3)).isoformat()

    def unknown(code: str, boot: str) -> Scan:
        return Scan(str(uuid.uuid4()), 1, code, "clockless", "admitted", "registered", behind,
                    400 * 10**9, boot, time_source="unknown")

    known = door_scan("A1", 1, 1, session="clockless")
    retimed, flagged = unknown("B2", "boot-now"), unknown("C3", "boot-before")

    async def push() -> None:
        token = server.provision("clockless-door", "clockless")
        async with connect(server.sync_url,
                           additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            door = SyncClient(ws, "clockless-door")
            door.end = DeviceEnd("clockless-door", "test", CacheState(None, None, 0),
                                 boot_id="boot-now", monotonic_ns=460 * 10**9)
            await door.until(ApplySnapshot)
            stored = await door.push(known, retimed, flagged)
            assert [r.result for r in stored.results] == ["accepted"] * 3, stored

    asyncio.run(push())
    with signed_in(server) as client:
        rows = rows_of(client.get("/sessions/clockless/scans").text, "scans-table")
        assert 'data-flag="time"' not in rows[known.scan_id]
        assert "time reconstructed" in rows[retimed.scan_id]
        assert clock(behind) in rows[retimed.scan_id]  # what the door said
        assert clock(behind) not in rows[retimed.scan_id].split("</td>")[0]  # not its time
        assert "time unknown" in rows[flagged.scan_id]
        assert clock(behind) in rows[flagged.scan_id].split("</td>")[0]
        shown = rows_of(client.get("/sessions/clockless/scans", params={"show": "time"}).text,
                        "scans-table")
        assert set(shown) == {retimed.scan_id, flagged.scan_id}
        # The live page counts them, and links to them.
        live = client.get("/sessions/clockless/live").text
        assert '<li id="times" >' in live or '<li id="times">' in live  # not hidden
        assert '<strong id="times-reconstructed-count">1</strong>' in live
        assert '<strong id="times-unknown-count">1</strong>' in live
        assert 'href="/sessions/clockless/scans?show=time"' in live
        assert '<li id="times" hidden>' in client.get("/sessions/s1/live").text
