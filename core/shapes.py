"""Checking the shape of untrusted structured data, with errors that name the field.

One set of value checks serves every place that reads structured input from
outside: the device config file (TOML), the sync protocol's messages and the
organizer API's bodies (JSON). A check takes a value and returns it (perhaps
converted) or raises :class:`ValueError` whose message says what was expected;
:func:`check_fields` applies a table of checks to a mapping and collects every
problem at once, so a technician or an organizer fixes them in one go.

Where the input becomes a dataclass (a config section, a protocol message), the
dataclass is the one declaration: each field carries its check in its metadata
(:func:`checked`) and :func:`fields_of` derives the table from it.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any

#: A check: returns the value (perhaps converted) or raises ValueError(expected).
Check = Callable[[Any], Any]
#: A field of a table: its check and whether it is required.
Field = tuple[Check, bool]

#: Identifiers of devices and sessions: safe in URLs, file names and logs.
IDENTIFIER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def string(value: Any) -> str:
    if not isinstance(value, str) or not value or not _is_text(value):
        raise ValueError("a non-empty string of Unicode text")
    return value


def path(value: Any) -> str:
    """A file or folder path: a non-empty string the operating system can take."""
    if not isinstance(value, str) or not value or "\0" in value or not _is_text(value):
        raise ValueError("a path (a non-empty string without NUL characters)")
    return value


def text(limit: int) -> Check:
    """A string of at most *limit* characters (may be empty)."""

    def check(value: Any) -> str:
        if not isinstance(value, str) or len(value) > limit:
            raise ValueError(f"a string of at most {limit} characters")
        if not _is_text(value):
            raise ValueError(f"a string of at most {limit} characters of Unicode text "
                             "(it holds a lone surrogate, which is not a character)")
        if "\x00" in value:
            # SQLite would keep it, PostgreSQL's text cannot: refused alike on both.
            raise ValueError(f"a string of at most {limit} characters without NUL "
                             "(\\u0000)")
        return value

    return check


def _is_text(value: str) -> bool:
    """Whether *value* is Unicode text: JSON's ``"\\ud800"`` escapes decode to lone
    surrogates, which no UTF-8 file, database or socket can hold."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def integer(low: int, high: int) -> Check:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"an integer from {low} to {high}")
        return value

    return check


def number(low: float, high: float, *, open_low: bool = False) -> Check:
    def check(value: Any) -> float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        try:  # an integer beyond a float's range (TOML and JSON allow them) is out of range
            ok = ok and math.isfinite(value) and (value > low if open_low else value >= low)
        except OverflowError:
            ok = False
        if not ok or value > high:
            bound = "greater than" if open_low else "at least"
            raise ValueError(f"a number {bound} {low:g} and at most {high:g}")
        return float(value)

    return check


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def choice(*choices: str) -> Check:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError("one of " + ", ".join(f'"{c}"' for c in choices))
        return value

    return check


def member(kind: type[enum.Enum]) -> Check:
    """One of the values of the enum *kind* (as :func:`choice`), returned as its member."""
    check_value = choice(*(m.value for m in kind))

    def check(value: Any) -> enum.Enum:
        return kind(check_value(value))

    return check


def identifier(value: Any) -> str:
    """A device or session id."""
    if not isinstance(value, str) or not IDENTIFIER_RE.fullmatch(value):
        raise ValueError("1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return value


def optional(check: Check) -> Check:
    """*check*, or JSON ``null`` (``None``)."""

    def check_or_none(value: Any) -> Any:
        if value is None:
            return None
        try:
            return check(value)
        except ValueError as exc:
            raise ValueError(f"{exc}, or null") from None

    return check_or_none


def timestamp(value: Any) -> str:
    """An ISO 8601 date and time with a UTC offset; returned as given."""
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise ValueError("an ISO 8601 date and time with a UTC offset")
    return value


def list_of(check: Check, limit: int) -> Check:
    """A list of at most *limit* items, each passing *check*."""

    def check_list(value: Any) -> list[Any]:
        if not isinstance(value, list) or len(value) > limit:
            raise ValueError(f"a list of at most {limit} items")
        checked = []
        for index, item in enumerate(value):
            try:
                checked.append(check(item))
            except ValueError as exc:
                raise ValueError(f"item {index}: {exc}") from None
        return checked

    return check_list


def checked(check: Check, *, required: bool | None = None,
            first: bool = False) -> dict[str, Any]:
    """The metadata of a dataclass field read from outside, checked by *check*:
    ``name: str = dataclasses.field(metadata=checked(identifier))``.

    The field is required in the input when it has no default, unless *required*
    says otherwise (a value the input must always give, though code building the
    dataclass may leave it to its default). *first*: checked and listed ahead of
    the fields declared before it (a field that comes last in the constructor, as
    it has a default, but leads in the input).
    """
    return {"check": check, "required": required, "first": first}


@functools.cache
def fields_of(cls: type) -> Mapping[str, Field]:
    """The table of *cls*'s fields for :func:`check_fields`: name -> (check, required).

    In declaration order (fields marked *first* ahead); every field must carry
    :func:`checked` metadata.
    """
    table: dict[str, Field] = {}
    for f in sorted(dataclasses.fields(cls), key=lambda f: not f.metadata.get("first")):
        if "check" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} has no checked() metadata")
        required = f.metadata["required"]
        if required is None:
            required = (f.default is dataclasses.MISSING
                        and f.default_factory is dataclasses.MISSING)
        table[f.name] = (f.metadata["check"], required)
    return MappingProxyType(table)


def check_fields(
    table: Mapping[str, Any], fields: Mapping[str, Field], label: str = ""
) -> tuple[dict[str, Any], list[str]]:
    """Check every key of *table* against *fields*.

    Returns the checked values and a list of problems, each naming the key
    (prefixed with *label*), the value given and what was expected. Unknown keys
    and missing required keys are problems too.
    """
    checked: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in table.items():
        if key not in fields:
            problems.append(
                f"{label}{name(key)} = {show(value)}: unknown key{did_you_mean(key, fields)} "
                f"(expected one of: {', '.join(fields)})"
            )
            continue
        try:
            checked[key] = fields[key][0](value)
        except ValueError as exc:
            problems.append(f"{label}{key} = {show(value)}: expected {exc}")
    for key, (_check, required) in fields.items():
        if required and key not in table:
            problems.append(f"{label}{key} is missing")
    return checked, problems


def did_you_mean(given: Any, known: Iterable[str], template: str = "{}") -> str:
    """``"; did you mean green?"`` when *given* is close to one of *known* (a typo such
    as ``gren``), else ``""``. *template* shows the match (e.g. ``"[{}]"`` for a section)."""
    if not isinstance(given, str):
        return ""
    close = difflib.get_close_matches(given.lower(), list(known), n=1, cutoff=0.6)
    return f"; did you mean {template.format(close[0])}?" if close else ""


def name(key: Any) -> str:
    """A key as it may be shown: as is when plain, else quoted and escaped (never raw
    control characters in an error message)."""
    if isinstance(key, str) and _PLAIN_KEY.fullmatch(key):
        return key
    return show(key)


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def show(value: Any) -> str:
    """*value* as it would appear in the input, cut short for an error message."""
    try:
        rendered = json.dumps(value) if isinstance(value, str) else repr(value)
    except ValueError:  # e.g. lone surrogates
        rendered = ascii(value)
    except RecursionError:  # a deeply nested value
        rendered = f"<{type(value).__name__} nested too deeply>"
    return rendered if len(rendered) <= 80 else rendered[:77] + "..."


def utc_timestamp(value: Any) -> str:
    """An ISO 8601 date and time with a UTC offset, returned in UTC (``...+00:00``).

    Times that are stored are normalised so that each instant has one spelling: the
    same instant given as ``14:30+02:00`` and ``12:30Z`` is then one value, and
    anything that compares the stored text (SQL, a diff, a person reading it) gets
    time order. Times whose UTC value falls outside years 1-9999 are refused.
    """
    from datetime import UTC

    timestamp(value)
    try:
        return datetime.fromisoformat(value).astimezone(UTC).isoformat()
    except OverflowError:  # e.g. 0001-01-01T00:30:00+01:00 is before year 1 in UTC
        raise ValueError("an ISO 8601 date and time with a UTC offset, "
                         "in years 1 to 9999 once in UTC") from None
