"""CSV import: a file of 50,000 registrants imported through the organizer API of a real
``checkin server`` (goal < 3 s, p50 of 3), from sending the request until the answer is
read: reading and checking the file, looking every attendee up, and writing them all in
one transaction. The server's store holds the 50,000 attendees (put into it through its
own methods before it starts); each run imports into a new session, so every row is
added. Beside it, for comparison: the dry run of the same file (everything but the
write), and "Delete All" of the session's registrants.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from bench.report import Row, percentile
from checkin.harness import ROOT, Server
from server.store import Attendee, ServerStore

#: The goal, in seconds.
GOAL_S = 3.0
RUNS = 3


async def _populate(data_dir: Path, codes: list[str]) -> None:
    store = await ServerStore.open(data_dir)
    try:
        await store.upsert_attendees([Attendee(code, f"Attendee {code}", f"{code}@example.org")
                                      for code in codes])
    finally:
        await store.close()


def _file(codes: list[str]) -> bytes:
    """The file as a spreadsheet would save it: a BOM, CRLF, more columns than the one
    used, a quoted name."""
    lines = ["Attendee code,Name,Email,Ticket"]
    lines += [f'{code},"Attendee, {code}",{code}@example.org,Full pass' for code in codes]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8-sig")


def _timed(server: Server, method: str, path: str, **request: object) -> tuple[float, dict]:
    started = time.perf_counter()
    answer = server.client.request(method, path, **request)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    if not answer.is_success:
        raise RuntimeError(f"{method} {path}: HTTP {answer.status_code} {answer.text[:500]}")
    return elapsed, answer.json()


def measure(quick: bool) -> list[Row]:
    n = 5000 if quick else 50_000
    codes = [f"ATT-{i:06d}" for i in range(n)]
    data = _file(codes)
    imports, dry_runs, deletes = [], [], []
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        folder = Path(tmp)
        asyncio.run(_populate(folder / "server", codes))
        with Server(folder / "server", timeout=120) as server:
            for run in range(RUNS):
                session = f"bench-import-{run}"
                server.api("PUT", f"/api/sessions/{session}",
                           {"name": "Import", "validate_registrants": True}, expect=201)
                path = f"/api/sessions/{session}/registrants/import"
                request = {"content": data, "headers": {"Content-Type": "text/csv"}}
                elapsed, body = _timed(server, "POST", path, params={
                    "column": "Attendee code", "match": "code", "dry_run": "true"}, **request)
                dry_runs.append(elapsed)
                elapsed, body = _timed(server, "POST", path, params={
                    "column": "Attendee code", "match": "code"}, **request)
                if body["added"] != n or not body["written"]:
                    raise RuntimeError(f"import of {n:,} registrants answered {body}")
                imports.append(elapsed)
                elapsed, body = _timed(server, "DELETE", f"/api/sessions/{session}/registrants")
                if body != {"removed": n}:
                    raise RuntimeError(f"Delete All of {n:,} registrants answered {body}")
                deletes.append(elapsed)
    p50 = percentile(imports, 50)
    print(f"  CSV import of {n:,} registrants ({len(data) / 1e6:.1f} MB): "
          + ", ".join(f"{t:.2f}" for t in imports) + " s; dry runs "
          + ", ".join(f"{t:.2f}" for t in dry_runs) + " s; Delete All "
          + ", ".join(f"{t:.2f}" for t in deletes) + " s", file=sys.stderr, flush=True)
    return [
        Row(f"CSV import, {n:,} registrants (p50 of {RUNS})", p50, None, "", "s",
            f"< {GOAL_S:g} s", p50 < GOAL_S),
        Row(f"  dry run of the same file (p50 of {RUNS})", percentile(dry_runs, 50), None,
            "", "s", "", None),
        Row(f"Delete All, {n:,} registrants (p50 of {RUNS})", percentile(deletes, 50), None,
            "", "s", "", None),
    ]


def run(quick: bool) -> list[Row]:
    return measure(quick)
