"""The organizers' CSV exports: a session's attendance and the scan log.

Every cell goes through :func:`safe_cell`: a cell a spreadsheet would read as a formula
(starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return) is prefixed with
``'``, so a name like ``=HYPERLINK(...)`` is shown as text, never run. The files are
UTF-8 with a header row, written a page of rows at a time as they are read
(:meth:`ServerStore.scans_export_page`): a log of 100,000 scans is never held in memory.
The API (``server/api.py``) and the organizers' pages serve the same files.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

from starlette.responses import StreamingResponse

from core.database import StoreError
from server.store import NotFound, ServerStore

log = logging.getLogger("checkin.server")

#: What a spreadsheet may take for the start of a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

#: Columns added later go at the end: a sheet reading the older columns by position
#: reads them still.
ATTENDANCE_HEADER = ("code", "name", "email", "registered", "first_admitted_at", "door",
                     "reentries", "rejected_attempts", "minutes_in_session", "overrides",
                     # of the first admission: first_admitted_at re-timed by the server
                     # when its door did not know the time (server/retime.py)
                     "time_source", "time_corrected", "device_scanned_at")
#: ``device_time`` is the scan's time as the server keeps it (re-timed when the door did
#: not know the time: ``time_corrected``, the door's own then in ``device_scanned_at``).
SCANS_HEADER = ("scan_id", "device", "session", "code", "decision", "reason", "device_time",
                "server_time", "uploaded_late", "flagged", "direction", "override_of",
                "double_admission", "over_capacity", "time_source", "time_corrected",
                "device_scanned_at")


def safe_cell(value: Any) -> str:
    """*value* as the text of one CSV cell, safe to open in a spreadsheet: ``None`` is
    empty, booleans are ``yes``/``no``, and text a spreadsheet would take for a formula
    is prefixed with ``'``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _line(cells: Iterable[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow([safe_cell(c) for c in cells])
    return buffer.getvalue()


def _lines(rows: Iterable[Iterable[Any]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerows([safe_cell(c) for c in row] for row in rows)
    return buffer.getvalue().encode("utf-8", "replace")


async def attendance_csv(store: ServerStore, session_id: str) -> AsyncIterator[bytes]:
    """The session's attendance file, a page at a time (raises :class:`NotFound` at once
    for an unknown session)."""
    if not await store.session_exists(session_id):
        raise NotFound(f"no session {session_id!r}")

    async def lines() -> AsyncIterator[bytes]:
        yield _line(ATTENDANCE_HEADER).encode()
        after = ""
        while True:
            page = await store.attendance_export_page(session_id, after)
            if not page:
                return
            after = page[-1]["code"]
            yield _lines((r["code"], r["name"], r["email"], r["registered"],
                          r["first_admitted_at"], r["door"], r["reentries"], r["rejected"],
                          r["time_in_session"] // 60, r["overrides"], r["time_source"],
                          r["time_corrected"], r["device_scanned_at"])
                         for r in page)

    return _guarded(lines(), f"attendance of session {session_id}")


async def scans_csv(store: ServerStore, session_id: str | None = None) -> AsyncIterator[bytes]:
    """The scan log (of every session, or of *session_id*), in the order the server stored
    the scans, a page at a time. A session that does not exist (any more) may still
    have scans: none is not an error."""

    async def lines() -> AsyncIterator[bytes]:
        yield _line(SCANS_HEADER).encode()
        after = 0
        while True:
            after, page = await store.scans_export_page(session_id, after)
            if not page:
                return
            yield _lines((r["scan_id"], r["device_id"], r["session_id"], r["code"],
                          r["decision"], r["reason"], r["scanned_at"], r["received_at"],
                          r["uploaded_late"],
                          "; ".join(f for f in (r["disagreement"], r["clock_flag"]) if f),
                          r["direction"], r["override_of"], r["double_admission"],
                          r["over_capacity"], r["time_source"], r["time_corrected"],
                          r["device_scanned_at"])
                         for r in page)

    return _guarded(lines(), "scan log")


async def _guarded(lines: AsyncIterator[bytes], what: str) -> AsyncIterator[bytes]:
    """*lines*, ended (not crashed) by a storage error once the answer has begun: the
    file is then cut short, which the download shows as failed."""
    try:
        async for chunk in lines:
            yield chunk
    except StoreError as exc:
        log.error("export of the %s stopped: %s", what, exc)
        raise


def csv_response(body: AsyncIterator[bytes], filename: str) -> StreamingResponse:
    """A streamed ``text/csv`` download named *filename*."""
    return StreamingResponse(
        body, media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"',
                 "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


async def attendance_response(store: ServerStore, session_id: str) -> StreamingResponse:
    return csv_response(await attendance_csv(store, session_id),
                        f"attendance-{session_id}.csv")


async def scans_response(store: ServerStore, session_id: str | None = None
                         ) -> StreamingResponse:
    return csv_response(await scans_csv(store, session_id),
                        f"scans-{session_id}.csv" if session_id else "scans.csv")
