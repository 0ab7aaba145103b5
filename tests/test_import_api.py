"""CSV import through the organizer API, as the contract states it, against a real
``checkin server``: column matching, every problem by line before anything is written,
the files spreadsheets really save (and Hypothesis-made ones), and "Delete All"."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from server.csv_import import _UTF8_MULTIBYTE as UTF8_MULTIBYTE
from server.csv_import import MAX_ROWS
from sync.device_end import ApplyChanges, ApplySnapshot
from tests.system import Server, SyncClient, read_only_query

CSV = {"Content-Type": "text/csv"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, module_database) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("import") / "server",
                    database=module_database).start()
    yield server
    server.kill()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def new_session(server: Server) -> str:
    sid = new_id("s")
    server.api("PUT", f"/api/sessions/{sid}", {"name": "Workshop", "validate_registrants": True},
               expect=201)
    return sid


def post(server: Server, path: str, data: bytes | str, **params: Any) -> httpx.Response:
    body = data.encode() if isinstance(data, str) else data
    return server.client.post(path, content=body, headers=CSV,
                              params={k: str(v).lower() if isinstance(v, bool) else v
                                      for k, v in params.items() if v is not None})


def store_file(server: Server) -> Path | str:
    return server.store_location


def registrants(server: Server, sid: str) -> set[str]:
    return {code for (code,) in read_only_query(
        store_file(server), "SELECT code FROM registrants WHERE session_id = ? AND deleted = 0",
        (sid,))}


def attendee(server: Server, code: str) -> tuple[str, str | None] | None:
    rows = read_only_query(store_file(server), "SELECT name, email FROM attendees WHERE code = ?",
                           (code,))
    return rows[0] if rows else None


def people(server: Server, n: int) -> list[tuple[str, str, str]]:
    """*n* new attendees (code, name, email), added through the API."""
    prefix = new_id("P")
    rows = [(f"{prefix}-{i}", f"Person {i}", f"{prefix}-{i}@example.org".lower())
            for i in range(n)]
    server.api("POST", "/api/attendees",
               [{"code": c, "name": n, "email": e} for c, n, e in rows], expect=200)
    return rows


def test_attendees_import_with_chosen_columns_then_update(server) -> None:
    prefix = new_id("A")
    file = (f"Badge;Full name;E-mail;Company\r\n{prefix}1;Ada Lovelace;ada@example.org;X\r\n"
            f"{prefix}2;\"Turing; Alan\";;Y\r\n")
    answer = post(server, "/api/attendees/import", file, code="Badge", name="Full name",
                  email="E-mail")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"rows": 2, "added": 2, "already": 0, "problems": [],
                             "written": True}
    assert answer.headers["x-csv-delimiter"] == "semicolon"
    assert attendee(server, f"{prefix}1") == ("Ada Lovelace", "ada@example.org")
    assert attendee(server, f"{prefix}2") == ("Turing; Alan", None)
    again = post(server, "/api/attendees/import",
                 f"Badge,Full name\n{prefix}2,Alan Turing\n{prefix}3,Grace Hopper\n",
                 code="Badge", name="Full name")
    assert again.json() == {"rows": 2, "added": 1, "already": 1, "problems": [],
                            "written": True}
    assert attendee(server, f"{prefix}2") == ("Alan Turing", None)
    # A file without emails, or with a blank one, does not erase an attendee's email.
    for file in (f"Badge,Full name\n{prefix}1,Ada King\n",
                 f"Badge,Full name,E-mail\n{prefix}1,Ada King,\n"):
        post(server, "/api/attendees/import", file, code="Badge", name="Full name",
             email="E-mail" if "E-mail" in file else None)
        assert attendee(server, f"{prefix}1") == ("Ada King", "ada@example.org")


def test_registrants_import_by_code_and_by_email(server) -> None:
    everyone = people(server, 4)
    sid = new_session(server)
    server.api("PUT", f"/api/sessions/{sid}/registrants/{everyone[0][0]}", expect=201)
    by_code = "code,seat\n" + "".join(f"{c},{i}\n" for i, (c, _, _) in enumerate(everyone[:3]))
    answer = post(server, f"/api/sessions/{sid}/registrants/import", by_code, column="code",
                  match="code")
    assert answer.json() == {"rows": 3, "added": 2, "already": 1, "problems": [],
                             "written": True}
    # Emails match whatever their case; a tab-separated file.
    by_email = "Name\tMail\n" + "".join(f"{n}\t{e.upper()}\n" for _, n, e in everyone)
    answer = post(server, f"/api/sessions/{sid}/registrants/import", by_email, column="Mail",
                  match="email")
    assert answer.json() == {"rows": 4, "added": 1, "already": 3, "problems": [],
                             "written": True}
    assert answer.headers["x-csv-delimiter"] == "tab"
    assert registrants(server, sid) == {c for c, _, _ in everyone}


def test_every_problem_is_listed_by_physical_line_and_nothing_is_written(server) -> None:
    known = people(server, 2)
    sid = new_session(server)
    file = ("code,note\r\n"                                   # line 1
            f"{known[0][0]},\"two\r\nlines\"\r\n"              # lines 2-3: one row
            "NOBODY-here,x\r\n"                                # 4: unknown attendee
            f"{known[0][0]},again\r\n"                         # 5: duplicate of line 2
            ",empty\r\n"                                       # 6: empty value
            "bad code!,x\r\n"                                  # 7: not a code
            f"{known[1][0]},x,extra\r\n"                       # 8: ragged
            "\r\n"                                             # 9: blank, passed over
            f"{'C' * 129},x\r\n")                              # 10: too long
    answer = post(server, f"/api/sessions/{sid}/registrants/import", file, column="code",
                  match="code")
    assert answer.status_code == 422
    body = answer.json()
    assert body["written"] is False and body["rows"] == 7
    lines = [p["line"] for p in body["problems"]]
    assert lines == [4, 5, 6, 7, 8, 10], body["problems"]
    messages = {p["line"]: p["message"] for p in body["problems"]}
    assert "unknown attendee" in messages[4] and "'NOBODY-here'" in messages[4]
    assert "duplicate" in messages[5] and "line 2" in messages[5]
    assert "empty" in messages[6] and "'code'" in messages[6]
    assert "not an attendee code" in messages[7]
    assert "ragged" in messages[8] and "3 field" in messages[8]
    assert "longer than 128" in messages[10]
    assert registrants(server, sid) == set()  # all or nothing: not even the good rows

    dry = post(server, f"/api/sessions/{sid}/registrants/import", file, column="code",
               match="code", dry_run=True)
    assert dry.status_code == 200 and dry.json() == body
    good = f"code\n{known[0][0]}\n{known[1][0]}\n"
    dry = post(server, f"/api/sessions/{sid}/registrants/import", good, column="code",
               match="code", dry_run=True)
    assert dry.json() == {"rows": 2, "added": 2, "already": 0, "problems": [],
                          "written": False}
    assert registrants(server, sid) == set()


def test_attendee_problems_name_line_and_column(server) -> None:
    prefix = new_id("B")
    file = (f"id,name,email\n{prefix}1,,a@b.org\n{prefix}2,{'n' * 201},\n"
            f"{prefix}3,Ok,not-an-email\n{prefix}3,Again,\n{prefix}4,Fine,f@example.org\n")
    answer = post(server, "/api/attendees/import", file, code="id", name="name", email="email")
    assert answer.status_code == 422
    problems = answer.json()["problems"]
    assert [p["line"] for p in problems] == [2, 3, 4, 5]
    assert "empty value in column 'name'" in problems[0]["message"]
    assert "longer than 200" in problems[1]["message"]
    assert "'email'" in problems[2]["message"] and "not an email" in problems[2]["message"]
    assert "duplicate" in problems[3]["message"] and "line 4" in problems[3]["message"]
    assert attendee(server, f"{prefix}4") is None


def test_windows_1252_is_detected_said_and_converted(server) -> None:
    prefix = new_id("W")
    file = f"code;name\r\n{prefix}1;José Müller\r\n{prefix}2;Zoë “Zed” Œuvre\r\n"
    answer = post(server, "/api/attendees/import", file.encode("cp1252"), code="code",
                  name="name")
    assert answer.status_code == 200 and answer.json()["added"] == 2, answer.text
    assert answer.headers["x-csv-encoding"] == "Windows-1252"
    assert attendee(server, f"{prefix}2") == ("Zoë “Zed” Œuvre", None)
    bom = f"code,name\n{prefix}3,Ünal\n".encode("utf-8-sig")
    answer = post(server, "/api/attendees/import", bom, code="code", name="name")
    assert answer.json()["added"] == 1 and answer.headers["x-csv-encoding"] == "UTF-8 (with BOM)"
    assert attendee(server, f"{prefix}3") == ("Ünal", None)  # the BOM is not in the header


def test_a_utf8_file_with_a_bad_byte_is_a_problem_on_its_line(server) -> None:
    prefix = new_id("E")
    file = f"code,name\n{prefix}1,Zoë\n".encode() + f"{prefix}2,Jos".encode() + b"\xe9\n"
    answer = post(server, "/api/attendees/import", file, code="code", name="name")
    assert answer.status_code == 422
    assert answer.json()["problems"][0]["line"] == 3
    assert "bad encoding" in answer.json()["problems"][0]["message"]
    assert attendee(server, f"{prefix}1") is None


def test_whole_file_refusals(server) -> None:
    sid = new_session(server)
    path = f"/api/sessions/{sid}/registrants/import"
    lacking = post(server, path, "code,name\nA,B\n", column="Badge", match="code")
    assert lacking.status_code == 400 and "'Badge'" in lacking.json()["error"]
    assert "'code'" in lacking.json()["error"]  # and the columns it has
    assert post(server, path, "code\nA\n", match="code").status_code == 400  # no column given
    assert post(server, path, "code\nA\n", column="code", match="name").status_code == 400
    assert post(server, path, "code\nA\n", column="code", dry_run="perhaps").status_code == 400
    workbook = post(server, path, b"PK\x03\x04\x14\x00\x06\x00" + bytes(200), column="code")
    assert workbook.status_code == 415 and "Excel" in workbook.json()["error"]
    binary = post(server, path, bytes(range(256)) * 4, column="code")
    assert binary.status_code == 415 and "binary" in binary.json()["error"]
    as_json = server.client.post(path, params={"column": "code"}, json=["A"])
    assert as_json.status_code == 415 and "text/csv" in as_json.json()["error"]
    big = "code\n" + "A\n" * (MAX_ROWS + 1)
    too_many = post(server, path, big, column="code", match="code")
    assert too_many.status_code == 413 and "50,000" in too_many.json()["error"]
    huge = post(server, path, b"code\n" + b"A" * (32 << 20), column="code")
    assert huge.status_code == 413 and "bytes" in huge.json()["error"]
    assert post(server, "/api/sessions/nope/registrants/import", "code\nA\n",
                column="code").status_code == 404
    no_token = httpx.post(server.url + path, content=b"code\nA\n", headers=CSV,
                          params={"column": "code"})
    assert no_token.status_code == 401
    assert registrants(server, sid) == set()


def test_a_file_of_only_a_header_imports_nothing(server) -> None:
    sid = new_session(server)
    answer = post(server, f"/api/sessions/{sid}/registrants/import", "code,name\r\n\r\n",
                  column="code")
    assert answer.status_code == 200 and answer.json() == {
        "rows": 0, "added": 0, "already": 0, "problems": [], "written": True}


def test_delete_all_registrants_then_the_session(server) -> None:
    everyone = people(server, 30)
    sid = new_session(server)
    file = "code\n" + "".join(f"{c}\n" for c, _, _ in everyone)
    assert post(server, f"/api/sessions/{sid}/registrants/import", file,
                column="code").json()["added"] == 30
    assert server.client.delete(f"/api/sessions/{sid}").status_code == 409
    assert server.api("DELETE", f"/api/sessions/{sid}/registrants", expect=200) == {
        "removed": 30}
    assert server.api("DELETE", f"/api/sessions/{sid}/registrants", expect=200) == {
        "removed": 0}
    server.api("DELETE", f"/api/sessions/{sid}", expect=204)
    assert server.client.delete(f"/api/sessions/{sid}/registrants").status_code == 404


def test_a_registrant_named_import_is_still_a_code(server) -> None:
    sid = new_session(server)
    server.api("POST", "/api/attendees", [{"code": "import", "name": "I. Port"}], expect=200)
    server.api("PUT", f"/api/sessions/{sid}/registrants/import", expect=201)
    assert registrants(server, sid) == {"import"}
    server.api("DELETE", f"/api/sessions/{sid}/registrants/import", expect=204)


# -- Hypothesis: files as spreadsheets and scripts write them ---------------------------

_CODE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~:@+=/-"
#: Names: any text a person's name might hold, delimiters, quotes and newlines included;
#: no other control characters, no surrogates, nothing to strip at either end.
_names = st.text(
    st.characters(exclude_categories=("Cs", "Cc"), include_characters="\n,;\t\"'"),
    min_size=1, max_size=40).map(str.strip).filter(
        lambda n: n and n == n.strip() and "\r" not in n)


@st.composite
def csv_files(draw: st.DrawFn) -> tuple[bytes, str, list[tuple[str, str, str]]]:
    """(a file, its encoding, the (code, name, email) rows it holds)."""
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "cp1252", "utf-16"]))
    n = draw(st.integers(1, 25))
    codes = draw(st.lists(st.text(_CODE_ALPHABET, min_size=1, max_size=20), min_size=n,
                          max_size=n, unique=True))
    names = draw(st.lists(_names, min_size=n, max_size=n))
    if encoding == "cp1252":  # what the code page holds, and a tab Excel would not quote
        names = [n.encode("cp1252", "replace").decode("cp1252") for n in names]
        names = [n.replace("?", "x") for n in names]
    rows = [(f"u{uuid.uuid4().hex[:6]}-{c}"[:128], name, f"p{i}.{uuid.uuid4().hex[:6]}@ex.org")
            for i, (c, name) in enumerate(zip(codes, names, strict=True))]
    delimiter = draw(st.sampled_from([",", ";", "\t"]))
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))
    ending = draw(st.sampled_from(["\r\n", "\n"]))
    order = draw(st.permutations(["Code", "Name", "E-mail"]))
    out = io.StringIO(newline="")
    writer = csv.writer(out, delimiter=delimiter, quoting=quoting, lineterminator=ending)
    writer.writerow(order)
    for code, name, email in rows:
        cells = {"Code": code, "Name": name, "E-mail": email}
        writer.writerow([cells[c] for c in order])
    return out.getvalue().encode(encoding), encoding, rows


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(csv_files())
def test_generated_files_round_trip(server, file) -> None:
    data, encoding, rows = file
    # Windows-1252 text that happens to hold UTF-8 sequences ("Ã©") reads as UTF-8: such
    # a file is ambiguous, and real names almost never are.
    assume(encoding != "cp1252" or not UTF8_MULTIBYTE.search(data))
    answer = post(server, "/api/attendees/import", data, code="Code", name="Name",
                  email="E-mail")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"rows": len(rows), "added": len(rows), "already": 0,
                             "problems": [], "written": True}
    for code, name, email in rows:
        assert attendee(server, code) == (name, email)
    sid = new_session(server)
    half = rows[: len(rows) // 2 + 1]
    by_email = data.decode(encoding).replace("E-mail", "Mail").encode(encoding)
    answer = post(server, f"/api/sessions/{sid}/registrants/import", by_email, column="Mail",
                  match="email")
    assert answer.json()["added"] == len(rows), answer.text
    again = "Code\n" + "".join(f"{c}\n" for c, _, _ in half)
    answer = post(server, f"/api/sessions/{sid}/registrants/import", again, column="Code")
    assert answer.json() == {"rows": len(half), "added": 0, "already": len(half),
                             "problems": [], "written": True}
    assert registrants(server, sid) == {c for c, _, _ in rows}


async def test_imports_and_delete_all_reach_a_connected_door_at_once(server) -> None:
    everyone = people(server, 5)
    sid = new_session(server)
    device_id = new_id("door")
    token = server.provision(device_id, sid)
    async with connect(server.sync_url,
                       additional_headers={"Authorization": f"Bearer {token}"}) as websocket:
        door = SyncClient(websocket, device_id)
        await door.until(ApplySnapshot)

        async def changes(expected: set[tuple[str, str, bool]]) -> None:
            seen: set[tuple[str, str, bool]] = set()
            while not expected <= seen:  # one or more messages: bounded by until's timeout
                action = await door.until(ApplyChanges)
                seen |= {(c.kind, c.code, c.deleted) for c in action.changes}

        prefix = new_id("N")
        answer = post(server, "/api/attendees/import", f"code,name\n{prefix},New\n",
                      code="code", name="name")
        assert answer.json()["added"] == 1
        await changes({("attendee", prefix, False)})
        file = "code\n" + "".join(f"{c}\n" for c, _, _ in everyone)
        assert post(server, f"/api/sessions/{sid}/registrants/import", file,
                    column="code").json()["added"] == 5
        await changes({("registrant", c, False) for c, _, _ in everyone})
        assert server.api("DELETE", f"/api/sessions/{sid}/registrants") == {"removed": 5}
        await changes({("registrant", c, True) for c, _, _ in everyone})
