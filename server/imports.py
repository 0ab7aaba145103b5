"""Importing a CSV file of attendees or of a session's registrants: the service both the
JSON API and the web pages use.

All or nothing: the file is read and planned (:mod:`server.csv_import`), looked up in the
store (unknown attendees, who is already there), and written in one transaction only if
no line has a problem. A dry run does everything but the write. Reading and planning a
file of 50,000 rows is CPU work, done in a thread so the event loop keeps serving the
doors meanwhile. The caller tells the hub what changed when something was written.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from server.csv_import import (
    MAX_ROWS,
    CsvPreview,
    CsvRefused,
    Problem,
    RegistrantPlan,
    plan_attendees,
    plan_registrants,
    show,
)
from server.csv_import import preview as _preview
from server.store import Attendee, NotFound, ServerStore

__all__ = ["MAX_ROWS", "CsvPreview", "ImportError_", "ImportResult", "Problem",
           "import_attendees", "import_registrants", "preview"]

#: A file refused as a whole, with its HTTP status (400 a column it lacks, 413 over
#: :data:`MAX_ROWS` rows, 415 not text): the name the web pages and the API catch.
ImportError_ = CsvRefused


@dataclass(slots=True)
class ImportResult:
    """What an import did, or would do (a dry run, or a file with problems)."""

    rows: int
    added: int
    already: int
    problems: list[Problem]
    written: bool
    dry_run: bool = False
    #: How the file was read, for the people importing it ("Windows-1252, converted").
    encoding: str = ""
    delimiter: str = ""

    def body(self) -> dict[str, Any]:
        """The API's answer, exactly as the contract has it."""
        return {"rows": self.rows, "added": self.added, "already": self.already,
                "problems": [{"line": p.line, "message": p.message} for p in self.problems],
                "written": self.written}

    @property
    def status(self) -> int:
        """200, or 422 when the file has problems and was meant to be written."""
        return 422 if self.problems and not self.dry_run else 200


def preview(data: bytes, rows: int = 5) -> CsvPreview:
    """The file's encoding, delimiter, header and first *rows* rows (and the problems
    found whatever the columns chosen), for choosing the columns. :data:`ImportError_`
    for a file that cannot be read at all."""
    return _preview(data, rows)


async def import_attendees(store: ServerStore, data: bytes, *, code: str, name: str,
                           email: str | None, dry_run: bool) -> ImportResult:
    """Import the attendees of *data* (columns headed *code*, *name* and, if given,
    *email*): new codes are added, known ones get the file's name and its email, if it
    has one for them (a blank email keeps theirs)."""
    plan = await asyncio.to_thread(plan_attendees, data, code=code, name=name, email=email)
    codes = [a.code for a in plan.attendees]
    known = await store.existing_codes(codes)
    result = ImportResult(len(plan.file.rows), len(codes) - len(known), len(known),
                          plan.problems, False, dry_run, plan.file.encoding,
                          plan.file.delimiter_name)
    if plan.problems or dry_run:
        return result
    created, updated = await store.upsert_attendees(
        [Attendee(a.code, a.name, a.email) for a in plan.attendees], keep_emails=True)
    result.added, result.already, result.written = created, updated, True
    return result


async def import_registrants(store: ServerStore, session_id: str, data: bytes, *,
                             column: str, match: str, dry_run: bool) -> ImportResult:
    """Make the attendees of *data* the session's registrants, the column headed *column*
    naming each by attendee code (*match* ``"code"``) or email (``"email"``).
    :class:`NotFound` for a session that does not exist."""
    if not await store.session_exists(session_id):
        raise NotFound(f"no session {session_id!r}")
    plan = await asyncio.to_thread(plan_registrants, data, column=column, match=match)
    problems = list(plan.problems)
    codes = await _attendees(store, plan, problems)
    problems.sort(key=lambda p: p.line)
    registered = await store.registered_among(session_id, codes)
    result = ImportResult(len(plan.file.rows), len(codes) - len(registered), len(registered),
                          problems, False, dry_run, plan.file.encoding,
                          plan.file.delimiter_name)
    if problems or dry_run:
        return result
    added = await store.put_registrants(session_id, codes)
    result.added, result.already, result.written = added, len(codes) - added, True
    return result


async def _attendees(store: ServerStore, plan: RegistrantPlan,
                     problems: list[Problem]) -> list[str]:
    """The codes of the attendees the plan's values name; a problem for each value that
    names nobody (or, for an email, several attendees)."""
    codes: list[str] = []
    if plan.match == "code":
        known = await store.existing_codes([value for _, value in plan.values])
        for line, value in plan.values:
            if value in known:
                codes.append(value)
            else:
                problems.append(Problem(line, f"unknown attendee: no attendee has code "
                                              f"{show(value)} (add the attendee first)"))
        return codes
    by_email = await store.codes_by_email()  # the plan's emails are folded and distinct
    for line, value in plan.values:
        code = by_email.get(value)
        if code is None:
            problems.append(Problem(line, f"unknown email: no attendee has email "
                                          f"{show(value)}"))
        elif not code:
            problems.append(Problem(line, f"email {show(value)} belongs to more than one "
                                          "attendee: import these by attendee code"))
        else:
            codes.append(code)
    return codes
