"""The organizers' pages in a real browser (headless Debian chromium, tests/browser.py),
against a real ``checkin server``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, FilePayload, Locator, expect

from server.schema import SERVER_FILE
from tests.browser import STEP_TIMEOUT_MS, Visit, visit
from tests.system import ADMIN, Server, read_only_query

# A limit on waiting for a page, never an assertion on its speed (the default is 5 s).
expect.set_options(timeout=STEP_TIMEOUT_MS)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """An empty ``checkin server`` of the test's own."""
    server = Server(tmp_path / "server").start()
    try:
        yield server
    finally:
        server.stop()


def test_chromium_loads_the_server(browsing: Visit) -> None:
    """The browser runs and reaches the server: the health check, as a browser gets it."""
    answer = browsing.page.goto("/api/health")
    assert answer is not None and answer.status == 200
    assert json.loads(browsing.page.inner_text("body"))["status"] == "ok"


# -- the walkthrough: an empty server to a session with registrants ----------------------

#: The event's attendees, as a registration system exports them (UTF-8 with a BOM, commas,
#: CRLF: what a spreadsheet saves as "CSV UTF-8").
ATTENDEES_CSV = ("\ufeffBadge code,Full name,E-mail\r\n"
                 "ATT-0001,Ada Lovelace,ada@example.org\r\n"
                 "ATT-0002,Alan Turing,alan@example.org\r\n"
                 "ATT-0003,Grace Hopper,grace@example.org\r\n"
                 "ATT-0004,Edsger Dijkstra,edsger@example.org\r\n"
                 "ATT-0005,Barbara Liskov,barbara@example.org\r\n"
                 "ATT-0006,Zoë Ångström,zoe@example.org\r\n").encode()
#: The workshop's sign-up sheet, as Excel saves it in much of Europe: Windows-1252 and
#: semicolons, by email. Line 4 names someone who is not an attendee, line 5 has no email.
SIGNUPS_WITH_PROBLEMS = ("Name;Email\r\n"
                         "Alan Turing;alan@example.org\r\n"
                         "Zoë Ångström;zoe@example.org\r\n"
                         "René Descartes;rene@example.org\r\n"
                         "Grace Hopper;\r\n").encode("cp1252")
SIGNUPS = ("Name;Email\r\n"
           "Alan Turing;alan@example.org\r\n"
           "Zoë Ångström;zoe@example.org\r\n"
           "Grace Hopper;grace@example.org\r\n").encode("cp1252")


def column(table: Locator, header: str) -> int:
    """Where the column headed *header* is in *table* (by its header: the layout changes)."""
    return [text.strip() for text in table.locator("thead th").all_inner_texts()].index(header)


def csv_file(name: str, data: bytes) -> FilePayload:
    return {"name": name, "mimeType": "text/csv", "buffer": data}


def sign_in(seen: Visit) -> None:
    page = seen.page
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/signin"))
    page.fill("#token", "not the token")
    page.click("#signin-button")
    expect(page.locator("#signin-error")).to_contain_text("not this server's admin token")
    page.fill("#token", ADMIN)
    seen.shoot("sign-in")
    page.click("#signin-button")
    expect(page).to_have_url(re.compile(r"/sessions$"))
    expect(page.locator("#no-sessions")).to_be_visible()


def import_attendees(seen: Visit) -> None:
    page = seen.page
    page.click("#main-nav >> text=Attendees")
    expect(page.locator("#no-attendees")).to_be_visible()
    page.click("#import-attendees-link")
    page.set_input_files("#file", csv_file("attendees.csv", ATTENDEES_CSV))
    seen.shoot("attendees-import-upload")
    page.click("#upload-button")
    expect(page.locator("#file-encoding")).to_contain_text("UTF-8")
    expect(page.locator("#file-delimiter")).to_contain_text("comma")
    expect(page.locator("#file-rows")).to_have_text("6")
    # The columns are guessed from the header; the organizer checks them.
    expect(page.locator("#code-column")).to_have_value("Badge code")
    expect(page.locator("#name-column")).to_have_value("Full name")
    expect(page.locator("#email-column")).to_have_value("E-mail")
    page.click("#check-button")
    expect(page.locator("#check-ok")).to_contain_text("6 to add")
    seen.shoot("attendees-import-check")
    page.click("#commit-button")
    expect(page.locator("#flash")).to_contain_text("6 added")
    expect(page.locator("#attendees-table")).to_contain_text("Zoë Ångström")

    page.fill("#attendee-code", "ATT-0007")
    page.fill("#attendee-name", "Katherine Johnson")
    page.fill("#attendee-email", "katherine@example.org")
    page.click("#attendee-save")
    expect(page.locator("#flash")).to_contain_text("ATT-0007 added")
    expect(page.locator("#attendees-table")).to_contain_text("Katherine Johnson")
    page.click("#main-nav >> text=Attendees")
    expect(page.locator("#attendees-table tbody tr")).to_have_count(7)
    seen.shoot("attendees")


def create_session(seen: Visit, name: str, *, validate: bool, capacity: str = "",
                   shoot: str = "") -> str:
    """Create a session on the page (*shoot*: the form's screenshot); its id (made from
    the name)."""
    page = seen.page
    page.click("#main-nav >> text=Sessions")
    page.click("#new-session-link")
    page.fill("#name", name)
    page.fill("#starts_at", "2026-06-11T14:00")
    page.fill("#ends_at", "2026-06-11T15:30")
    page.set_checked("#validate_registrants", validate)
    page.fill("#capacity", capacity)
    if shoot:  # only when asked: the hostile-name test's form is no page for the guide
        seen.shoot(shoot)
    page.click("#session-save")
    expect(page.locator("#flash")).to_contain_text(f"Session “{name}” created")
    expect(page.locator("#session-name")).to_have_text(name)
    expect(page.locator("#validate-state")).to_have_text("on" if validate else "off")
    expect(page.locator("#registered-count")).to_have_text("0")
    expect(page.locator("#inside-count")).to_have_text("0")
    if capacity:
        expect(page.locator("#inside")).to_have_text(f"Inside now: 0 of {capacity}",
                                                     use_inner_text=True)
    else:
        expect(page.locator("#inside")).to_have_text("Inside now: 0 (no capacity limit)",
                                                     use_inner_text=True)
    expect(page.locator("#capacity")).to_have_value(capacity)
    return page.url.rsplit("/", 1)[1].split("?")[0].split("#")[0]


def add_by_search(seen: Visit, find: str, names: list[str], *, shoot: str = "") -> None:
    """Search attendees in the Registrants box and add the ones named."""
    page = seen.page
    if not page.locator("#find").is_visible():  # after an add it stays open
        page.click("#add-registrants summary")
    page.fill("#find", find)
    page.click("#attendee-search-button")
    for name in names:
        page.locator("#found-table tr", has_text=name).locator("input[name=code]").check()
    if shoot:
        seen.shoot(shoot)
    page.click("#add-registrants-button")
    expect(page.locator("#flash")).to_contain_text(f"{len(names)} registrant(s) added")
    for name in names:
        expect(page.locator("#registrants-table")).to_contain_text(name)


def import_registrants(seen: Visit, session_id: str) -> None:
    """The sign-up sheet through the wizard: a file with problems (nothing written), then
    the corrected one."""
    page = seen.page
    registered = page.locator("#registered-count").inner_text()
    page.click("#import-registrants-link")
    page.set_input_files("#file", csv_file("workshop signups.csv", SIGNUPS_WITH_PROBLEMS))
    page.click("#upload-button")
    expect(page.locator("#file-encoding")).to_contain_text("1252")
    expect(page.locator("#file-delimiter")).to_contain_text("semicolon")
    expect(page.locator("#preview-table")).to_contain_text("Zoë Ångström")
    page.select_option("#column", "Email")
    page.check("#match-email")
    seen.shoot("registrants-import-columns")
    page.click("#check-button")
    expect(page.locator("#problems-heading")).to_contain_text("2 problem(s): nothing was written")
    problems = page.locator("#import-problems tbody tr")
    expect(problems).to_have_count(2)
    expect(problems.nth(0)).to_contain_text("4")
    expect(problems.nth(0)).to_contain_text("rene@example.org")
    expect(problems.nth(1)).to_contain_text("5")
    expect(page.locator("#commit-form")).to_have_count(0)
    seen.shoot("registrants-import-problems")
    page.goto(f"/sessions/{session_id}")
    expect(page.locator("#registered-count")).to_have_text(registered)  # nothing written

    page.click("#import-registrants-link")
    page.set_input_files("#file", csv_file("workshop signups.csv", SIGNUPS))
    page.click("#upload-button")
    page.select_option("#column", "Email")
    page.check("#match-email")
    page.click("#check-button")
    # Alan Turing was added by search already: the file adds the two others.
    expect(page.locator("#check-ok")).to_contain_text("3 row(s), 2 to add, 1 already there")
    seen.shoot("registrants-import-check")
    page.click("#commit-button")
    expect(page.locator("#flash")).to_contain_text("Imported 3 row(s): 2 added, 1 already there")
    expect(page.locator("#registered-count")).to_have_text(str(int(registered) + 2))


def use_schedule_link(seen: Visit, chromium: Browser, session_name: str) -> None:
    """The organizer makes Barbara Liskov's link; she opens it in her own browser (no
    cookie) and adds the workshop ("Add to Schedule"), which makes her a registrant."""
    page = seen.page
    page.click("#main-nav >> text=Attendees")
    page.fill("#q", "Liskov")
    page.click("#attendees-search-button")
    page.locator("#attendees-table tr", has_text="Barbara Liskov").locator(
        "form.link-form button").click()
    link = page.locator("#schedule-link").get_attribute("href")
    assert link is not None and "/schedule/" in link
    seen.shoot("schedule-link")

    barbara = visit(chromium, seen.server)
    try:
        barbara.page.goto(link)
        row = barbara.page.locator("#schedule-table tr", has_text=session_name)
        expect(row).to_contain_text("registrants only")
        row.get_by_role("button", name="Add to Schedule").click()
        expect(row).to_contain_text("On my schedule")
        barbara.shoot("schedule")
        assert barbara.errors == [], barbara.errors
    finally:
        barbara.context.close()

    # The organizer sees her in the Registrants box; then revokes the link.
    page.click("#main-nav >> text=Sessions")
    page.locator("#sessions-table a", has_text=session_name).click()
    expect(page.locator("#registrants-table")).to_contain_text("Barbara Liskov")
    page.click("#main-nav >> text=Attendees")
    page.fill("#q", "Liskov")
    page.click("#attendees-search-button")
    page.locator("#attendees-table tr", has_text="Barbara Liskov").locator(
        "form.link-form button").click()
    page.click("#revoke-link-button")
    expect(page.locator("#flash")).to_contain_text("revoked")
    stranger = visit(chromium, seen.server)
    try:
        answer = stranger.page.goto(link)
        assert answer is not None and answer.status == 404
        expect(stranger.page.locator("#error-message")).to_contain_text("does not work")
    finally:
        stranger.context.close()


def provision_door(seen: Visit, session_id: str, session_name: str) -> None:
    page = seen.page
    page.click("#main-nav >> text=Doors")
    expect(page.locator("#no-doors")).to_be_visible()
    page.fill("#device_id", "door-hall-a")
    page.select_option("#door-session", session_id)
    page.click("#door-save")
    token = page.locator("#door-token").input_value()
    assert len(token) >= 20
    expect(page.locator("#door-config")).to_contain_text('id = "door-hall-a"')
    seen.shoot("door-provisioned")
    page.click("#doors-link")
    row = page.locator("#doors-table tr[data-device-id='door-hall-a']")
    expect(row).to_contain_text(session_name)
    expect(row).to_contain_text("never")
    seen.shoot("doors")


def delete_the_seeds_way(seen: Visit) -> None:
    """A cancelled talk with registrants: deleting it is refused, naming how many remain;
    Delete All in the Registrants box, then the session goes."""
    page = seen.page
    session_id = create_session(seen, "Cancelled talk", validate=False)
    page.click("#add-registrants summary")
    page.fill("#find", "example.org")
    page.click("#attendee-search-button")
    page.check("#found-select-all")  # the header's box ticks every row (app.js)
    expect(page.locator("#found-table tbody input[name=code]:checked")).to_have_count(7)
    page.click("#add-registrants-button")
    expect(page.locator("#registered-count")).to_have_text("7")

    page.click("#delete-session-link")
    expect(page.locator("#delete-refused")).to_be_visible()
    expect(page.locator("#remaining-registrants")).to_have_text("7")
    expect(page.locator("#delete-session-form")).to_have_count(0)
    seen.shoot("session-delete-refused")
    page.click("#cancel-link")

    # The seed's Delete All: from the Registrants box.
    expect(page.locator("#delete-all-button")).to_have_text("Delete All (7 registrants)")
    page.click("#delete-all-button")
    expect(page.locator("#flash")).to_contain_text("7 registrant(s) removed")
    expect(page.locator("#registered-count")).to_have_text("0")
    expect(page.locator("#no-registrants")).to_be_visible()

    page.click("#delete-session-link")
    expect(page.locator("#delete-ready")).to_be_visible()
    seen.shoot("session-delete-ready")
    page.click("#delete-session-button")
    expect(page.locator("#flash")).to_contain_text("Session “Cancelled talk” deleted")
    expect(page.locator(f"#sessions-table tr[data-session-id='{session_id}']")).to_have_count(0)
    assert session_id not in {s["session_id"] for s in seen.server.api("GET", "/api/sessions")}


def test_walkthrough(chromium: Browser, browsing: Visit) -> None:
    """docs/organizers.md, in a real browser: sign in, import the attendees, create a
    session, add a registrant by search, import the sign-up sheet (a file with problems
    first, then the corrected one), an attendee's schedule link, a door, and a session
    deleted the seed's way (Delete All, then delete)."""
    page = browsing.page
    sign_in(browsing)
    import_attendees(browsing)
    workshop = create_session(browsing, "Workshop: Writing Good Tests", validate=True,
                              capacity="30", shoot="session-new")
    add_by_search(browsing, "turing", ["Alan Turing"], shoot="session-add-registrants")
    add_by_search(browsing, "ada", ["Ada Lovelace"])
    import_registrants(browsing, workshop)
    use_schedule_link(browsing, chromium, "Workshop: Writing Good Tests")
    provision_door(browsing, workshop, "Workshop: Writing Good Tests")
    delete_the_seeds_way(browsing)

    # Where the walkthrough ends: the workshop and its five registrants.
    page.goto(f"/sessions/{workshop}")
    expect(page.locator("#registered-count")).to_have_text("5")
    names = page.locator("#registrants-table tbody tr")
    expect(names).to_have_count(5)
    browsing.shoot("session")
    page.click("#main-nav >> text=Sessions")
    table = page.locator("#sessions-table")
    row = table.locator(f"tr[data-session-id='{workshop}']")
    expect(row.locator("td").nth(column(table, "Validate Registrants"))).to_have_text("on")
    expect(row.locator("td").nth(column(table, "Registered"))).to_have_text("5")
    expect(row.locator("td").nth(column(table, "Inside"))).to_have_text("0 of 30")
    browsing.shoot("sessions")
    # The server agrees with the pages: what the doors will get.
    rows = read_only_query(browsing.server.data_dir / SERVER_FILE,
                           "SELECT code FROM registrants WHERE session_id = ? AND NOT deleted "
                           "ORDER BY code", (workshop,))
    assert [code for (code,) in rows] == ["ATT-0001", "ATT-0002", "ATT-0003", "ATT-0005",
                                          "ATT-0006"]
    page.click("#signout-button")
    expect(page).to_have_url(re.compile(r"/signin"))
    page.goto(f"/sessions/{workshop}")
    expect(page).to_have_url(re.compile(r"/signin\?next="))


#: A name that runs script wherever a page puts it into HTML unescaped.
HOSTILE = "<img src=x onerror=alert(1)><script>alert(2)</script>"


def test_a_hostile_name_is_only_text(chromium: Browser, browsing: Visit) -> None:
    """Attendee names are attacker-controlled: in a real browser every page shows one as
    the text it is (escaped: the pages' CSP would also stop it running, the text check does
    not rely on that), and no dialog opens."""
    page = browsing.page
    sign_in(browsing)
    page.click("#main-nav >> text=Attendees")
    page.fill("#attendee-code", "ATT-EVIL")
    page.fill("#attendee-name", HOSTILE)
    page.click("#attendee-save")
    expect(page.locator("#attendees-table")).to_contain_text(HOSTILE)
    session_id = create_session(browsing, HOSTILE, validate=True)
    expect(page.locator("#session-name")).to_have_text(HOSTILE)
    add_by_search(browsing, "ATT-EVIL", [HOSTILE])
    page.click("#main-nav >> text=Sessions")
    expect(page.locator(f"#sessions-table tr[data-session-id='{session_id}']")).to_contain_text(
        HOSTILE)
    page.click("#main-nav >> text=Attendees")
    page.locator("#attendees-table tr", has_text="ATT-EVIL").locator(
        "form.link-form button").click()
    expect(page.locator("h1")).to_contain_text(HOSTILE)
    link = page.locator("#schedule-link").get_attribute("href")
    assert link is not None
    page.goto(link)
    expect(page.locator("h1")).to_contain_text(HOSTILE)
    expect(page.locator("#schedule-table")).to_contain_text(HOSTILE)
    assert browsing.dialogs == []


def test_delete_page_removes_the_registrants_in_one_click(browsing: Visit) -> None:
    """The refusal offers the way out: "Remove all N registrants" there, and the same
    page then offers the delete."""
    page = browsing.page
    sign_in(browsing)
    page.click("#main-nav >> text=Attendees")
    for code, name in (("ATT-0001", "Ada Lovelace"), ("ATT-0002", "Alan Turing")):
        page.fill("#attendee-code", code)
        page.fill("#attendee-name", name)
        page.click("#attendee-save")
        expect(page.locator("#flash")).to_contain_text(f"{code} added")
    session_id = create_session(browsing, "Moved online", validate=False)
    add_by_search(browsing, "ATT-000", ["Ada Lovelace", "Alan Turing"])
    page.click("#delete-session-link")
    expect(page.locator("#remaining-registrants")).to_have_text("2")
    page.click("#delete-all-button")
    expect(page.locator("#flash")).to_contain_text("2 registrant(s) removed")
    expect(page.locator("#delete-ready")).to_be_visible()
    page.click("#delete-session-button")
    expect(page.locator("#flash")).to_contain_text("Session “Moved online” deleted")
    page.goto(f"/sessions/{session_id}")
    expect(page.locator("#error-message")).to_contain_text("no session")


def test_capacity_is_checked_by_the_browser_and_by_the_server(browsing: Visit) -> None:
    """The Capacity field: the browser itself refuses a negative number (the form is not
    sent); a value that reaches the server anyway is refused with a page naming the field;
    a good one is saved, and emptied means no limit again."""
    page = browsing.page
    sign_in(browsing)
    session_id = create_session(browsing, "Small room", validate=False, capacity="12")
    page.fill("#capacity", "-3")
    page.click("#session-save")
    assert page.locator("#capacity").evaluate("field => !field.validity.valid")
    expect(page).to_have_url(re.compile(re.escape(f"/sessions/{session_id}") + "$"))
    # Past the browser's check (an old browser, a script): the server's own.
    page.locator("#capacity").evaluate("field => { field.removeAttribute('min'); "
                                       "field.type = 'text'; field.value = 'lots'; }")
    page.click("#session-save")
    expect(page.locator("#error-message")).to_contain_text(
        "capacity 'lots': expected a whole number of people from 0 to 10,000,000, or "
        "empty for no limit")
    page.go_back()
    page.reload()
    expect(page.locator("#capacity")).to_have_value("12")
    page.fill("#capacity", "")
    page.click("#session-save")
    expect(page.locator("#flash")).to_contain_text("Session saved")
    expect(page.locator("#inside")).to_have_text("Inside now: 0 (no capacity limit)",
                                                 use_inner_text=True)
    capacity = {s["session_id"]: s["capacity"] for s in browsing.server.api("GET",
                                                                            "/api/sessions")}
    assert capacity[session_id] is None
