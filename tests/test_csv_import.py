"""Reading and planning CSV imports (server/csv_import.py), without a server: the files
spreadsheets save, every problem on its physical line, and whatever bytes arrive."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from server.csv_import import (
    _UTF8_MULTIBYTE,
    MAX_ROWS,
    CsvRefused,
    plan_attendees,
    plan_registrants,
    preview,
    read,
)


def refused(data: bytes) -> CsvRefused:
    with pytest.raises(CsvRefused) as caught:
        read(data)
    return caught.value


@pytest.mark.parametrize(("data", "encoding"), [
    ("code,name\nA1,José\n".encode(), "UTF-8"),
    ("code,name\nA1,José\n".encode("utf-8-sig"), "UTF-8 (with BOM)"),
    ("code,name\nA1,José\n".encode("utf-16"), "UTF-16"),
    ("code,name\nA1,José\n".encode("cp1252"), "Windows-1252"),
])
def test_encodings_are_detected_and_converted(data: bytes, encoding: str) -> None:
    parsed = read(data)
    assert (parsed.encoding, parsed.header, parsed.rows[0].cells) == (
        encoding, ["code", "name"], ["A1", "José"])
    assert parsed.converted == (encoding == "Windows-1252")
    assert parsed.problems == []


def test_a_bad_byte_in_a_utf8_file_is_a_problem_on_its_physical_line() -> None:
    data = 'code,note\n"A1","Zoë\nsecond line"\nA2,ok\n'.encode() + b"A3,caf\xe9\n"
    parsed = read(data)
    assert parsed.encoding == "UTF-8"
    assert [(p.line, p.message[:12]) for p in parsed.problems] == [(5, "bad encoding")]
    assert "0xe9" in parsed.problems[0].message
    plan = plan_registrants(data, column="code", match="code")
    assert [v for _, v in plan.values] == ["A1", "A2"]  # line 5 is said once, not planned


@pytest.mark.parametrize(("data", "says"), [
    (b"", "empty"),
    (b"\r\n\r\n", "empty"),
    (b"PK\x03\x04\x14\x00", "Excel"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1", "Excel"),
    (b"%PDF-1.7\n", "PDF"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"code\nA1\x00\x00", "NUL"),
    (bytes(range(1, 32)) * 40, "binary"),
])
def test_files_that_are_not_csv_are_refused_whole(data: bytes, says: str) -> None:
    problem = refused(data)
    assert problem.status in (400, 415) and says in problem.message


@pytest.mark.parametrize(("text", "delimiter"), [
    ("code,name\nA1,Ann\n", ","),
    ("code;name\nA1;Smith, Ann\n", ";"),
    ("code\tname\nA1\tSmith; Ann, Jr\n", "\t"),
    ("code\nA1\nA2\n", ","),
    ('"code;x",name\n"A1;y",Ann\n', ","),
])
def test_the_delimiter_is_detected(text: str, delimiter: str) -> None:
    parsed = read(text.encode())
    assert parsed.delimiter == delimiter and parsed.problems == []
    assert len(parsed.header) == len(parsed.rows[0].cells)


def test_line_numbers_count_physical_lines_blank_lines_and_quoted_newlines() -> None:
    text = ('code,name\r\n\r\n'              # 1, 2 (blank: passed over, counted)
            '"A1","Ann\r\nof two lines"\r\n'  # 3-4
            ',,\r\n'                          # 5 (only delimiters: blank)
            'A2,"three\nline\nname"\r\n'      # 6-8
            'A3\r\n'                          # 9: ragged
            'A4,Bo,extra\r\n')                # 10: ragged
    parsed = read(text.encode())
    assert [r.line for r in parsed.rows] == [3, 6, 9, 10]
    assert parsed.rows[1].cells == ["A2", "three\nline\nname"]
    assert [(p.line, p.message.split(":")[0]) for p in parsed.problems] == [
        (9, "ragged row"), (10, "ragged row")]


def test_an_unclosed_quote_is_said_where_it_opens() -> None:
    parsed = read(b'code,name\nA1,Ann\nA2,"Bob\nA3,Cy\n')
    assert [r.line for r in parsed.rows] == [2]
    assert parsed.problems[0].line == 3 and "never closed" in parsed.problems[0].message


def test_columns_are_matched_by_header_name() -> None:
    data = b"Code, Full Name ,email\nA1,Ann,a@x.org\n"
    plan = plan_attendees(data, code="code", name="Full Name", email="EMAIL")
    assert [(a.code, a.name, a.email) for a in plan.attendees] == [("A1", "Ann", "a@x.org")]
    with pytest.raises(CsvRefused) as caught:
        plan_attendees(data, code="Badge", name="Full Name", email=None)
    assert caught.value.status == 400
    assert "'Badge'" in caught.value.message and "'Full Name'" in caught.value.message
    with pytest.raises(CsvRefused) as caught:
        plan_registrants(b"code,CODE\nA,B\n", column="Code", match="code")
    assert "2 columns" in caught.value.message
    with pytest.raises(CsvRefused):
        plan_registrants(b"code\nA\n", column="code", match="phone")


def test_registrant_problems() -> None:
    # In a file of one column an empty value is a blank line: passed over.
    data = b"who,n\nA1,1\n,2\nA1,3\nnot a code,4\nx@y.org,5\n" + b"L" * 129 + b",6\n"
    plan = plan_registrants(data, column="who", match="code")
    problems = {p.line: p.message for p in plan.problems}
    assert sorted(problems) == [3, 4, 5, 7]
    assert "empty value in column 'who'" in problems[3]
    assert "duplicate row" in problems[4] and "line 2" in problems[4]
    assert "not an attendee code" in problems[5]
    assert "longer than 128" in problems[7]
    assert [v for _, v in plan.values] == ["A1", "x@y.org"]  # '@' and '.' are code characters
    emails = plan_registrants(b"mail\nAnn@X.org\nann@x.ORG\nnobody\n", column="mail",
                              match="email")
    assert emails.values == [(2, "ann@x.org")]
    assert [p.line for p in emails.problems] == [3, 4]


def test_attendee_names_are_checked() -> None:
    data = ("c,n\nA1,Ann\nA2,\nA3," + "n" * 201 + "\nA4,Bell\x07\nA1,Ann again\n").encode()
    plan = plan_attendees(data, code="c", name="n", email=None)
    assert [a.code for a in plan.attendees] == ["A1"]
    problems = {p.line: p.message for p in plan.problems}
    assert "empty value" in problems[3] and "longer than 200" in problems[4]
    assert "control character" in problems[5] and "\\x07" in problems[5]
    assert "duplicate row" in problems[6]


def test_at_most_50000_rows() -> None:
    assert len(read(b"code\n" + b"A\n" * MAX_ROWS).rows) == MAX_ROWS
    too_many = refused(b"code\n" + b"A\n" * (MAX_ROWS + 1))
    assert too_many.status == 413 and "50,000" in too_many.message


def test_preview_shows_the_first_rows() -> None:
    shown = preview("Code;Name\r\nA1;Zoë\r\nA2;Bo\r\nA3;Cy\r\n".encode("cp1252"), rows=2)
    assert (shown.encoding, shown.converted, shown.delimiter_name) == (
        "Windows-1252", True, "semicolon")
    assert shown.header == ["Code", "Name"] and shown.total_rows == 3
    assert [r.cells for r in shown.rows] == [["A1", "Zoë"], ["A2", "Bo"]]


# -- Hypothesis --------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_are_read_or_refused_with_a_reason(data: bytes) -> None:
    try:
        parsed = read(data)
    except CsvRefused as exc:
        assert exc.status in (400, 413, 415) and exc.message
        return
    lines = data.count(b"\n") + data.count(b"\r") + 1
    assert all(1 <= p.line <= lines for p in parsed.problems)
    assert all(1 <= r.line <= lines for r in parsed.rows)


_cells = st.text(st.characters(exclude_categories=("Cs", "Cc"),
                               include_characters="\n\t,;\"'"), max_size=15)


@settings(max_examples=200, deadline=None)
@given(header=st.lists(st.text("abcdefXYZ _-", min_size=1, max_size=8).map(str.strip)
                       .filter(bool), min_size=1, max_size=5, unique=True),
       data=st.data(),
       delimiter=st.sampled_from([",", ";", "\t"]),
       quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]),
       ending=st.sampled_from(["\r\n", "\n"]),
       encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "cp1252"]))
def test_written_rows_read_back_on_their_lines(header, data, delimiter, quoting, ending,
                                                encoding) -> None:
    width = len(header)
    rows = data.draw(st.lists(st.lists(_cells.map(str.strip), min_size=width, max_size=width)
                              .filter(lambda r: any(r)), max_size=20))
    if encoding == "cp1252":
        rows = [[c.encode("cp1252", "replace").decode("cp1252") for c in r] for r in rows]
    out = io.StringIO(newline="")
    writer = csv.writer(out, delimiter=delimiter, quoting=quoting, lineterminator=ending)
    writer.writerow(header)
    lines = []
    for row in rows:
        lines.append(out.getvalue().count("\n") + 1)  # the line the row starts on
        writer.writerow(row)
    raw = out.getvalue().encode(encoding)
    assume(encoding != "cp1252" or not _UTF8_MULTIBYTE.search(raw))  # ambiguous: UTF-8 wins
    parsed = read(raw)
    assert parsed.header == header and parsed.problems == []
    if width > 1 or rows:  # a lone column cannot tell its delimiter, nor needs to
        assert parsed.delimiter == delimiter or width == 1
    assert [r.cells for r in parsed.rows] == rows
    assert [r.line for r in parsed.rows] == lines
