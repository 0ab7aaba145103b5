"""CSV files of attendees and registrants: reading them as organizers save them, and
planning an import, without I/O (the import service, :mod:`server.imports`, looks the
plan up in the store and writes it).

Files come from spreadsheets, so this reads what they write: UTF-8 with or without a
BOM, UTF-16 with a BOM (Excel's "Unicode text"), else Windows-1252 (Excel's "CSV" on
Windows), which is detected, said and converted; comma, semicolon (Excel where the
decimal mark is a comma) or tab, detected; quoted fields holding delimiters, quotes and
newlines; CRLF, LF or CR line ends. A binary file (an Excel workbook, an image) is
refused as a whole; anything wrong with a row is a :class:`Problem` on its line.

Line numbers are the file's physical lines, the header being line 1: a row is reported
on the line where it starts, and a newline inside a quoted field counts, so the number
is the one a text editor shows.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field

from core.codes import check_code

#: Most data rows (the header aside) in one file.
MAX_ROWS = 50_000
#: Longest attendee name and email, as the JSON API accepts them.
MAX_NAME = 200
MAX_EMAIL = 320
#: The delimiters detected, in the order a tie is broken.
DELIMITERS = (",", ";", "\t")
#: The readable name of each delimiter, for messages and headers.
DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab"}
#: How a registrant row names the attendee: by attendee code or by email.
MATCHES = ("code", "email")

_UTF8 = "UTF-8"
_UTF8_BOM = "UTF-8 (with BOM)"
_UTF16 = "UTF-16"
_CP1252 = "Windows-1252"

#: Starts of files that are certainly not text, with what they are.
_MAGIC = (
    (b"PK\x03\x04", "a ZIP archive (an Excel .xlsx or OpenDocument .ods workbook?)"),
    (b"\xd0\xcf\x11\xe0", "an old Excel .xls workbook"),
    (b"%PDF", "a PDF document"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip archive"),
)
#: Control characters that have no business in a CSV cell (tab, CR and LF aside: a
#: quoted cell may hold a line break).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
#: Valid UTF-8 sequences of more than one byte: a file holding some is UTF-8.
_UTF8_MULTIBYTE = re.compile(
    rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}")
#: An email address, checked loosely: something, one @, something with a dot.
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


class CsvRefused(Exception):
    """The file as a whole cannot be imported; *status* is the HTTP status that says so
    (400 a column it lacks or no header, 413 too many rows, 415 not a text file)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Problem:
    """Something wrong with one line of the file (the header is line 1)."""

    line: int
    message: str


@dataclass(frozen=True, slots=True)
class Row:
    """A data row: the physical line it starts on, and its cells."""

    line: int
    cells: list[str]


@dataclass(slots=True)
class CsvFile:
    """A file read: how it was decoded and split, its header, its rows, and what was
    wrong with lines whatever the columns chosen (bad encoding, ragged rows, quotes)."""

    encoding: str
    delimiter: str
    header: list[str]
    rows: list[Row]
    problems: list[Problem] = field(default_factory=list)

    @property
    def converted(self) -> bool:
        """Whether the file was not Unicode and was converted (to say so)."""
        return self.encoding == _CP1252

    @property
    def delimiter_name(self) -> str:
        return DELIMITER_NAMES[self.delimiter]

    def column(self, name: str, what: str) -> int:
        """The index of the column headed *name* (exactly, else ignoring case and
        surrounding spaces), for *what*; :class:`CsvRefused` (400) naming it if the
        file has none, or more than one."""
        for candidates in ([i for i, h in enumerate(self.header) if h == name],
                           [i for i, h in enumerate(self.header)
                            if h.strip().casefold() == name.strip().casefold()]):
            if len(candidates) == 1:
                return candidates[0]
            if len(candidates) > 1:
                raise CsvRefused(400, f"{what}: the header has {len(candidates)} columns named "
                                      f"{show(name)} (columns "
                                      f"{', '.join(str(i + 1) for i in candidates)}): rename "
                                      "one so the choice is clear")
        listed = ", ".join(show(h) for h in self.header[:20])
        more = len(self.header) - 20
        raise CsvRefused(400, f"{what}: the file has no column {show(name)}; its columns are "
                              + listed + (f" and {more} more" if more > 0 else ""))


@dataclass(frozen=True, slots=True)
class CsvPreview:
    """What the import page shows before the columns are chosen."""

    encoding: str
    converted: bool
    delimiter: str
    delimiter_name: str
    header: list[str]
    rows: list[Row]
    total_rows: int
    problems: list[Problem]


def show(value: str, limit: int = 60) -> str:
    """*value* quoted for a message, cut to *limit* characters, anything unprintable
    escaped by ``repr`` (the message is shown to people and may end up in a log)."""
    return repr(value if len(value) <= limit else value[:limit - 1] + "…")


# -- reading ----------------------------------------------------------------------------


def decode(data: bytes) -> tuple[str, str, list[Problem]]:
    """(the text, the encoding found, lines that are not valid in it). :class:`CsvRefused`
    (415) for a file that is not text."""
    if not data.strip():
        raise CsvRefused(400, "the file is empty: expected a header row and data rows")
    for magic, what in _MAGIC:
        if data.startswith(magic):
            raise CsvRefused(415, f"this is {what}, not a CSV file: save it from your "
                                  "spreadsheet as CSV (UTF-8) and upload that")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16"), _UTF16, []
        except UnicodeDecodeError as exc:
            raise CsvRefused(415, f"the file starts like UTF-16 text but is not: {exc.reason} "
                                  f"at byte {exc.start}") from None
    if b"\x00" in data:
        raise CsvRefused(415, f"this is a binary file, not a CSV file: it holds NUL bytes "
                              f"(the first at byte {data.index(0)})")
    encoding = _UTF8
    if data.startswith(b"\xef\xbb\xbf"):
        data, encoding = data[3:], _UTF8_BOM
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        # A file with some valid multi-byte UTF-8 is UTF-8 with bad bytes on some lines;
        # one with none is in the Windows code page spreadsheets on Windows save in.
        if encoding == _UTF8_BOM or _UTF8_MULTIBYTE.search(data):
            text, problems = _decode_lines(data, "utf-8", encoding)
        else:
            text, problems = _decode_lines(data, "cp1252", _CP1252)
            encoding = _CP1252
    else:
        problems = []
    sample = text[:8192]
    if sample and len(_CONTROL.findall(sample)) > max(8, len(sample) // 100):
        raise CsvRefused(415, "this is a binary file, not a CSV file: it is full of "
                              "control characters")
    return text, encoding, problems


def _decode_lines(data: bytes, codec: str, name: str) -> tuple[str, list[Problem]]:
    """*data* decoded line by line, bytes invalid in *codec* replaced, each line holding
    some reported."""
    lines, problems = [], []
    # bytes.splitlines breaks at CRLF, CR and LF alone, as the CSV reader counts lines.
    for number, raw in enumerate(data.splitlines(keepends=True), start=1):
        try:
            lines.append(raw.decode(codec))
        except UnicodeDecodeError as exc:
            lines.append(raw.decode(codec, errors="replace"))
            problems.append(Problem(number, f"bad encoding: byte 0x{raw[exc.start]:02x} "
                                            f"(byte {exc.start + 1} of the line) is not "
                                            f"valid {name} text; save the file as CSV UTF-8"))
    return "".join(lines), problems


def read(data: bytes, *, max_rows: int = MAX_ROWS) -> CsvFile:
    """The file *data*, decoded and split into its header and rows. Blank rows (only
    delimiters and spaces, as spreadsheets leave at the end) are passed over."""
    text, encoding, problems = decode(data)
    delimiter = _detect_delimiter(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header: list[str] | None = None
    rows: list[Row] = []
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append(_quote_problem(start, reader.line_num, str(exc)))
            break  # past a broken quote the rest of the file cannot be split reliably
        if not any(c.strip() for c in cells):
            continue
        if header is None:
            header = [c.strip() for c in cells]
            continue
        if len(rows) == max_rows:
            raise CsvRefused(413, f"the file has more than {max_rows:,} rows (line {start} "
                                  f"is row {max_rows + 1:,}): split it into smaller files")
        rows.append(Row(start, cells))
        if len(cells) != len(header):
            problems.append(Problem(start, f"ragged row: {len(cells)} field(s), but the header "
                                           f"has {len(header)} (a missing or extra "
                                           f"{DELIMITER_NAMES[delimiter]}, or an unquoted "
                                           "one inside a value?)"))
    if header is None:
        raise CsvRefused(400, "the file has no header row: the first line must name the "
                              "columns")
    if not any(header):
        raise CsvRefused(400, "the header row names no column")
    problems.sort(key=lambda p: p.line)
    return CsvFile(encoding, delimiter, header, rows, problems)


def _quote_problem(start: int, at: int, error: str) -> Problem:
    if "unexpected end of data" in error:
        return Problem(start, "a quoted field starts on this line and is never closed (a "
                              "missing closing quote?); nothing after it can be read")
    if "field larger than field limit" in error:
        return Problem(start, f"a field longer than {csv.field_size_limit():,} characters "
                              "(a missing closing quote?); nothing after it can be read")
    return Problem(at, f"malformed quoting ({error}): a quote inside a quoted field must be "
                       "doubled; nothing after it can be read")


def _detect_delimiter(text: str) -> str:
    """The delimiter among :data:`DELIMITERS` that splits the first rows most
    consistently into the most columns (a one-column file: comma)."""
    best, best_score = ",", (False, 0, 0)
    sample = text[:65536]
    for delimiter in DELIMITERS:
        reader = csv.reader(io.StringIO(sample, newline=""), delimiter=delimiter)
        widths: list[int] = []
        try:
            for cells in reader:
                if any(c.strip() for c in cells):
                    widths.append(len(cells))
                if len(widths) == 50:
                    break
        except csv.Error:
            pass
        if not widths:
            continue
        score = (widths[0] > 1, sum(w == widths[0] for w in widths), widths[0])
        if score > best_score:
            best, best_score = delimiter, score
    return best


def preview(data: bytes, rows: int = 5) -> CsvPreview:
    """The file's encoding, delimiter, header and first *rows* rows, and the problems
    found whatever the columns chosen. :class:`CsvRefused` as :func:`read`."""
    parsed = read(data)
    return CsvPreview(parsed.encoding, parsed.converted, parsed.delimiter,
                      parsed.delimiter_name, parsed.header, parsed.rows[:rows],
                      len(parsed.rows), parsed.problems)


# -- planning ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AttendeeRow:
    line: int
    code: str
    name: str
    email: str | None


@dataclass(slots=True)
class Plan:
    """What a file would import: its values with their lines, and every problem found
    without looking at the store."""

    file: CsvFile
    problems: list[Problem]


@dataclass(slots=True)
class AttendeePlan(Plan):
    attendees: list[AttendeeRow] = field(default_factory=list)


@dataclass(slots=True)
class RegistrantPlan(Plan):
    match: str = "code"
    #: (line, value) for each row whose value is well formed: a code, or an email
    #: folded to lower case.
    values: list[tuple[int, str]] = field(default_factory=list)


def plan_attendees(data: bytes, *, code: str, name: str, email: str | None) -> AttendeePlan:
    """An attendee import of *data* with the columns headed *code*, *name* and *email*
    (``None``: no email). :class:`CsvRefused` for a file that cannot be read or lacks
    a column."""
    parsed = read(data)
    columns = {"code": parsed.column(code, "code column"),
               "name": parsed.column(name, "name column")}
    if email:
        columns["email"] = parsed.column(email, "email column")
    # Messages name the columns as the file spells them.
    code, name = parsed.header[columns["code"]], parsed.header[columns["name"]]
    email = parsed.header[columns["email"]] if email else None
    plan = AttendeePlan(parsed, list(parsed.problems))
    broken = {p.line for p in parsed.problems}  # said once already: ragged, bad bytes
    seen: dict[str, int] = {}
    for row in parsed.rows:
        if row.line in broken:
            continue
        cells = {key: row.cells[index].strip() for key, index in columns.items()}
        found = [_check_code(cells["code"], code)]
        if not found[0]:  # a row with other problems still has its code: a repeat is said
            if cells["code"] in seen:
                found.append(f"duplicate row: code {show(cells['code'])} is already on line "
                             f"{seen[cells['code']]}")
            else:
                seen[cells["code"]] = row.line
        found.append(_check_name(cells["name"], name))
        if cells.get("email"):
            found.append(_check_email(cells["email"], email or ""))
        found = [f for f in found if f]
        if found:
            plan.problems += [Problem(row.line, f) for f in found]
            continue
        plan.attendees.append(AttendeeRow(row.line, cells["code"], cells["name"],
                                          cells.get("email") or None))
    plan.problems.sort(key=lambda p: p.line)
    return plan


def plan_registrants(data: bytes, *, column: str, match: str) -> RegistrantPlan:
    """A registrant import of *data* whose column headed *column* holds attendee codes
    (*match* ``"code"``) or emails (``"email"``). :class:`CsvRefused` as
    :func:`plan_attendees`; a *match* that is neither is a 400."""
    if match not in MATCHES:
        raise CsvRefused(400, f"match {show(match)}: expected 'code' or 'email'")
    parsed = read(data)
    index = parsed.column(column, "column")
    column = parsed.header[index]  # messages name it as the file spells it
    plan = RegistrantPlan(parsed, list(parsed.problems), match)
    broken = {p.line for p in parsed.problems}  # said once already: ragged, bad bytes
    seen: dict[str, int] = {}
    for row in parsed.rows:
        if row.line in broken:
            continue
        value = row.cells[index].strip()
        problem = (_check_code(value, column) if match == "code"
                   else _check_email(value, column))
        key = value if match == "code" else value.casefold()
        if not problem and key in seen:
            problem = f"duplicate row: {match} {show(value)} is already on line {seen[key]}"
        if problem:
            plan.problems.append(Problem(row.line, problem))
            continue
        seen[key] = row.line
        plan.values.append((row.line, key))
    plan.problems.sort(key=lambda p: p.line)
    return plan


def _check_code(value: str, column: str) -> str | None:
    if not value:
        return f"empty value in column {show(column)}: expected an attendee code"
    problem = check_code(value)
    return f"column {show(column)}: {show(value)} is not an attendee code ({problem})" \
        if problem else None


def _check_name(value: str, column: str) -> str | None:
    if not value:
        return f"empty value in column {show(column)}: expected the attendee's name"
    if len(value) > MAX_NAME:
        return f"column {show(column)}: name longer than {MAX_NAME} characters"
    return _check_text(value, column)


def _check_email(value: str, column: str) -> str | None:
    if not value:
        return f"empty value in column {show(column)}: expected an email address"
    if len(value) > MAX_EMAIL:
        return f"column {show(column)}: email longer than {MAX_EMAIL} characters"
    if not _EMAIL.fullmatch(value):
        return f"column {show(column)}: {show(value)} is not an email address"
    return _check_text(value, column)


def _check_text(value: str, column: str) -> str | None:
    if _CONTROL.search(value):
        return f"column {show(column)}: {show(value)} holds a control character"
    if "\ufffd" in value:  # what a bad byte was replaced with: its line is reported already
        return f"column {show(column)}: {show(value)} holds an undecodable byte"
    return None
