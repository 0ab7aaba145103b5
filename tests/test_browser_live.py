"""During the session, in a real browser (headless Debian chromium, tests/browser.py): a
session's live attendance page follows a real door (``checkin door`` on an ``images:``
folder, with its ``checkin sync`` daemon) through a real ``checkin server`` without a
reload, says so when the door's link is cut (and catches up when it is back), and
exports CSV files that read back with every hostile name intact and no cell a
spreadsheet would run as a formula.

Timeouts here only stop a hang; nothing asserts on speed (bench/live.py measures it).
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect
from websockets.asyncio.client import connect

from checkin.harness import door_config, toml
from sync.device_end import ApplySnapshot
from sync.messages import Scan
from tests.browser import STEP_TIMEOUT_MS, Visit
from tests.system import ADMIN, Device, Server, SyncClient, process_env, wait_for

expect.set_options(timeout=STEP_TIMEOUT_MS)

SESSION = "keynote"
#: The live pages (server/web/dashboard.py) and what the test reads on them.
LIVE_PAGE = f"/sessions/{SESSION}/live"
OVERVIEW_PAGE = "/live"
DOORS_PAGE = "/doors/live"


#: Attendees whose names and emails are what a spreadsheet would run, or a page would.
HOSTILE = {
    "ATT-0001": ("=HYPERLINK(\"http://evil.example\",\"click\")", "ada@example.org"),
    "ATT-0002": ("<script>alert('x')</script> Turing", "+alan@example.org"),
    "ATT-0003": ("@SUM(A1:A9) Hopper", "grace@example.org"),
    "ATT-0004": ("-2+3 Dijkstra", "edsger@example.org"),
    "ATT-0005": ("Zoë Ångström", "zoe@example.org"),
}
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    server = Server(tmp_path / "server").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def door(tmp_path: Path, server: Server) -> Iterator[Device]:
    """A door of the session, its daemon in sync and its ``checkin door`` running on an
    empty camera folder; both stopped after the test."""
    server.api("POST", "/api/attendees",
               [{"code": code, "name": name, "email": email}
                for code, (name, email) in HOSTILE.items()], expect=200)
    server.api("PUT", f"/api/sessions/{SESSION}", {"name": "Keynote",
                                                  "validate_registrants": True}, expect=201)
    for code in ("ATT-0001", "ATT-0002", "ATT-0003", "ATT-0005"):
        server.api("PUT", f"/api/sessions/{SESSION}/registrants/{code}", expect=201)
    # tests.system.Device's, but a badge counts once however long the camera sees it (a
    # loaded machine may show an image's two frames further apart than 0.1 s).
    device = Device(tmp_path / "door-1", "door-1", server.sync_url)
    device.config.write_text(toml(door_config(
        "door-1", camera={"fps": 40, "frames_per_image": 2},
        scanner={"debounce_seconds": 30},
        server={"url": server.sync_url, "token_file": device.token_file.name,
                "retry_min_seconds": 0.1, "retry_max_seconds": 0.5, "status_seconds": 1})))
    device.token_file.write_text(server.provision("door-1", SESSION) + "\n")
    device.start_sync()
    try:
        wait_for(lambda: len(device.registrants()) == 4, 60, "the door's first sync",
                 process=device.sync)
        device.start_door(pipe=False, env=process_env())
        yield device
    finally:
        device.stop()


def sign_in(page: Page) -> None:
    page.goto("/signin")
    page.fill("#token", ADMIN)
    page.click("#signin-button")
    expect(page).to_have_url(re.compile(r"/sessions$"))


def scan(device: Device, code: str) -> None:
    """A badge in front of the door's camera (the door is running: it sees the image)."""
    device.show(code)


def not_arrived(page: Page, code: str) -> Locator:
    return page.locator(f'#not-arrived-table tbody tr[data-code="{code}"]')


def test_live_attendance_follows_the_door(browsing: Visit, door: Device) -> None:
    page = browsing.page
    sign_in(page)
    page.click("#nav-live")
    page.locator(f'#overview-table tr[data-session-id="{SESSION}"] a').click()
    expect(page).to_have_url(re.compile(re.escape(LIVE_PAGE) + "$"))
    expect(page.locator("#live-state")).to_have_attribute("data-state", "live")
    expect(page.locator("#registered-count")).to_have_text("4")
    expect(page.locator("#admitted-count")).to_have_text("0")
    expect(page.locator("#not-arrived-table tbody tr")).to_have_count(4)
    # The hostile names are text on the page, never markup.
    expect(not_arrived(page, "ATT-0002")).to_contain_text("<script>alert('x')</script> Turing")
    expect(not_arrived(page, "ATT-0001")).to_contain_text('=HYPERLINK("http://evil.example"')
    assert page.locator("#live-page script").count() == 0
    # A mark in the page's own window: a reload or a navigation would lose it.
    page.evaluate("window.__same_page = true")

    scan(door, "ATT-0002")
    expect(page.locator("#admitted-count")).to_have_text("1")
    expect(not_arrived(page, "ATT-0002")).to_have_count(0)
    expect(page.locator("#not-arrived-table tbody tr")).to_have_count(3)
    expect(page.locator("#not-arrived-count")).to_have_text("3")
    expect(page.locator("#arrivals-chart rect")).not_to_have_count(0)
    scan(door, "ATT-0001")
    expect(page.locator("#admitted-count")).to_have_text("2")
    expect(not_arrived(page, "ATT-0001")).to_have_count(0)
    scan(door, "ATT-0004")  # an attendee, not a registrant: turned away
    expect(page.locator("#rejected-count")).to_have_text("1")
    expect(page.locator('#rejected-table tr[data-reason="not_registered"]')).to_contain_text("1")
    expect(page.locator("#admitted-count")).to_have_text("2")
    expect(page.locator("#not-final")).to_be_hidden()
    assert page.evaluate("window.__same_page === true"), "the page was reloaded"
    assert page.locator("#live-page script").count() == 0
    browsing.shoot("live-attendance")

    # The door's link is cut: its daemon stops (the door keeps deciding on its own).
    door.stop_sync()
    expect(page.locator("#not-final")).to_be_visible()
    expect(page.locator("#not-final-why")).to_contain_text("door-1")
    expect(page.locator("#not-final-why")).to_contain_text("offline")
    expect(page.locator('#session-doors-table tr[data-device-id="door-1"]')).to_contain_text(
        "offline")
    expect(page.locator("#admitted-count")).to_have_text("2")
    assert page.evaluate("window.__same_page === true"), "the page was reloaded"
    browsing.shoot("live-attendance-door-offline")

    # The exports, from the page, as the browser saves them.
    check_exports(page)

    page.goto(OVERVIEW_PAGE)
    expect(page.locator(f'#overview-table tr[data-session-id="{SESSION}"]')).to_contain_text(
        "Keynote")
    browsing.shoot("live-overview")
    page.goto(DOORS_PAGE)
    expect(page.locator('#doors-table [data-device-id="door-1"]')).to_contain_text("offline")
    browsing.shoot("doors-at-a-glance")

    # Offline, the door goes on admitting from its own copy; back online, its scan arrives
    # and the numbers are final again, on the page as it was loaded.
    page.goto(LIVE_PAGE)
    expect(page.locator("#live-state")).to_have_attribute("data-state", "live")
    page.evaluate("window.__same_page = true")
    scan(door, "ATT-0003")
    wait_for(lambda: door.query("SELECT count(*) FROM scans WHERE code = 'ATT-0003'")
             == [(1,)], 60, "the door to record a scan offline", process=door.door_process)
    expect(page.locator("#admitted-count")).to_have_text("2")
    expect(page.locator("#not-final")).to_be_visible()
    door.start_sync()
    expect(page.locator("#admitted-count")).to_have_text("3")
    expect(not_arrived(page, "ATT-0003")).to_have_count(0)
    expect(page.locator("#not-final")).to_be_hidden()
    expect(page.locator('#session-doors-table tr[data-device-id="door-1"]')).to_contain_text(
        "connected")
    assert page.evaluate("window.__same_page === true"), "the page was reloaded"


def download(page: Page, link: str) -> list[dict[str, str]]:
    """The CSV file behind *link* on the page, as the browser saves it, read back."""
    with page.expect_download() as saving:
        page.click(link)
    saved = saving.value.path()
    assert saved is not None, saving.value.failure()
    rows = list(csv.DictReader(io.StringIO(Path(saved).read_bytes().decode("utf-8"))))
    # No cell a spreadsheet would run as a formula.
    cells = [cell for row in rows for cell in [*row, *row.values()]]
    assert not [c for c in cells if c.startswith(FORMULA_START)], cells
    return rows


def safe(text: str) -> str:
    """*text* as the export writes it: a formula-like start gets a ' before it."""
    return "'" + text if text.startswith(FORMULA_START) else text


def check_exports(page: Page) -> None:
    attendance = {row["code"]: row for row in download(page, "#export-attendance")}
    # The registrants, and the attendee turned away (scanned here, not registered).
    assert set(attendance) == {"ATT-0001", "ATT-0002", "ATT-0003", "ATT-0004", "ATT-0005"}
    assert list(next(iter(attendance.values()))) == [
        "code", "name", "email", "registered", "first_admitted_at", "door", "reentries",
        "rejected_attempts", "minutes_in_session", "overrides", "time_source",
        "time_corrected", "device_scanned_at"]
    for code, row in attendance.items():
        name, email = HOSTILE[code]
        assert (row["name"], row["email"]) == (safe(name), safe(email)), row
        assert row["registered"] == ("no" if code == "ATT-0004" else "yes"), row
        admitted = code in ("ATT-0001", "ATT-0002")
        assert bool(row["first_admitted_at"]) == admitted, row
        assert row["door"] == ("door-1" if admitted else ""), row
        assert row["rejected_attempts"] == ("1" if code == "ATT-0004" else "0"), row

    scans = download(page, "#export-scans")
    assert [(r["code"], r["decision"], r["reason"], r["device"], r["session"])
            for r in sorted(scans, key=lambda r: r["device_time"])] == [
        ("ATT-0002", "admitted", "registered", "door-1", SESSION),
        ("ATT-0001", "admitted", "registered", "door-1", SESSION),
        ("ATT-0004", "rejected", "not_registered", "door-1", SESSION)]
    assert {r["uploaded_late"] for r in scans} == {"no"}


# -- two doors of one session: inside now, capacity, overrides, the audit's flags ---------


def door_scan(code: str, seq: int, minutes_ago: float, *, reason: str = "registered",
              decision: str = "admitted", direction: str | None = None,
              override_of: str | None = None) -> Scan:
    at = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return Scan(str(uuid.uuid4()), seq, code, "hall", decision, reason, at.isoformat(), seq,
                "boot", direction=direction, override_of=override_of)


def push(server: Server, device_id: str, *scans: Scan) -> None:
    """*scans* uploaded by door *device_id* over the sync protocol (as its daemon would),
    from a thread of its own: the browser's driver keeps this one."""

    async def upload() -> None:
        token = server.provision(device_id, "hall")
        async with connect(server.sync_url,
                           additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            door = SyncClient(ws, device_id)
            await door.until(ApplySnapshot)
            stored = await door.push(*scans)
            assert {r.result for r in stored.results} == {"accepted"}, stored

    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, upload()).result()


def test_inside_now_capacity_overrides_and_flags_follow_the_doors(browsing: Visit,
                                                                  server: Server) -> None:
    """A hall of capacity 2 with an entrance at the front, one at the side and an exit:
    the live page counts who is inside against the capacity, says "full", counts the
    staff overrides, and shows the audit's flags (the side door was offline: its
    admissions went past the capacity, and one admitted someone the front had admitted)
    with the scan log naming the door and the scan, all without a reload."""
    server.api("POST", "/api/attendees",
               [{"code": code, "name": name} for code, (name, _) in HOSTILE.items()],
               expect=200)
    server.api("PUT", "/api/sessions/hall", {"name": "Main hall", "validate_registrants": False,
                                            "capacity": 2}, expect=201)
    page = browsing.page
    sign_in(page)
    page.goto("/sessions/hall/live")
    expect(page.locator("#live-state")).to_have_attribute("data-state", "live")
    expect(page.locator("#inside")).to_have_text("Inside now: 0 of 2", use_inner_text=True)
    expect(page.locator("#at-capacity")).to_be_hidden()
    expect(page.locator("#audit-flags")).to_be_hidden()
    expect(page.locator("#overrides-count")).to_have_text("0")
    page.evaluate("window.__same_page = true")

    first = door_scan("ATT-0001", 1, 20)
    push(server, "front", first, door_scan("ATT-0002", 2, 19))
    expect(page.locator("#inside-count")).to_have_text("2")
    expect(page.locator("#at-capacity")).to_be_visible()
    expect(page.locator("#inside")).to_have_text("Inside now: 2 of 2 full",
                                                 use_inner_text=True)

    # The side door, offline meanwhile, let two in (one of them admitted at the front
    # already), refused a third as full and staff overrode it.
    refused = door_scan("ATT-0004", 3, 15, decision="rejected", reason="full")
    push(server, "side", door_scan("ATT-0003", 1, 18), door_scan("ATT-0001", 2, 17), refused,
         door_scan("ATT-0004", 4, 14.9, reason="override", override_of=refused.scan_id))
    expect(page.locator("#overrides-count")).to_have_text("1")
    expect(page.locator("#audit-flags")).to_be_visible()
    expect(page.locator("#double-admissions-count")).to_have_text("1")
    # Over capacity: ATT-0003 (3 inside) and the override (4); ATT-0001 was inside already.
    expect(page.locator("#over-capacity-count")).to_have_text("2")
    expect(page.locator("#inside-count")).to_have_text("4")

    # Two leave through the exit door.
    push(server, "exit", door_scan("ATT-0002", 1, 5, direction="out"),
         door_scan("ATT-0003", 2, 4, direction="out"))
    expect(page.locator("#inside")).to_have_text("Inside now: 2 of 2 full",
                                                 use_inner_text=True)
    assert page.evaluate("window.__same_page === true"), "the page was reloaded"
    browsing.shoot("live-attendance-capacity")

    # The flags lead to the scans: which door, which scan.
    page.click("#double-admissions-link")
    rows = page.locator("#scans-table tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("side")
    expect(rows.first).to_contain_text("double admission")
    page.locator("#scan-filters a[data-show=all]").click()
    expect(rows).to_have_count(8)
    exit_row = page.locator('#scans-table tr.exit[data-code="ATT-0002"]')
    expect(exit_row.locator("td.direction")).to_have_text("out")
    override = page.locator('#scans-table tr[data-code="ATT-0004"]', has_text="override of")
    expect(override).to_contain_text(f"override of {refused.scan_id[:8]}")
    browsing.shoot("scan-log")

    # Minutes in session: stays from an entrance to the exit; a stay still open counts up
    # to the session's last scan (the hall has no end time).
    page.goto("/sessions/hall/live")
    page.click("#time-in-session-link")
    minutes = {code: page.locator(f'#attendance-table tr[data-code="{code}"] td.minutes')
               for code in ("ATT-0001", "ATT-0002", "ATT-0003", "ATT-0004")}
    for code, expected in (("ATT-0001", "16"), ("ATT-0002", "14"), ("ATT-0003", "14"),
                           ("ATT-0004", "10")):
        expect(minutes[code]).to_have_text(expected)
    expect(page.locator('#attendance-table tr[data-code="ATT-0002"]')).to_contain_text(
        "<script>alert('x')</script> Turing")
    browsing.shoot("time-in-session")

    page.goto(OVERVIEW_PAGE)
    row = page.locator('#overview-table tr[data-session-id="hall"]')
    expect(row).to_contain_text("2 of 2")
    expect(row.locator(".flag-mark")).to_have_text("3 flagged")
