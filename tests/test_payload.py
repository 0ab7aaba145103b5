"""Payload parsing: examples for each rule, then Hypothesis over arbitrary bytes."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.codes import MAX_CODE_LENGTH, MAX_RECORDED_CODE, check_code, printable
from device.scanner.payload import MAX_PAYLOAD_BYTES, parse_payload


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"ATT-0001", "ATT-0001"),
        (b"  ATT-0001 \n", "ATT-0001"),
        (b"\tabc123\r\n", "abc123"),
        (b"https://tickets.example/t/ATT-0001", "ATT-0001"),
        (b"https://tickets.example/t/ATT-0001/", "ATT-0001"),
        (b"HTTPS://tickets.example/checkin?code=ATT-0002&lang=en", "ATT-0002"),
        (b"http://x.example/?lang=en&c=Z9", "Z9"),
        (b"https://x.example/scan?ticket=T%2D7", "T-7"),
        (b"https://x.example/a/b%2Dc", "b-c"),
        (b"a" * MAX_CODE_LENGTH, "a" * MAX_CODE_LENGTH),
        (b"base64+/=code", "base64+/=code"),
    ],
)
def test_valid_payloads_yield_the_code(raw: bytes, code: str) -> None:
    payload = parse_payload(raw)
    assert payload.valid
    assert payload.code == code
    assert payload.error is None


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"", "empty payload"),
        (b"   \n\t", "empty payload"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"ATT\x00001", "control character U+0000"),
        (b"ATT\x1b[31m", "control character U+001B"),
        ("ATT\u200b01".encode(), "control character U+200B"),
        (b"x" * (MAX_PAYLOAD_BYTES + 1), f"longer than {MAX_PAYLOAD_BYTES} bytes"),
        (b"a" * (MAX_CODE_LENGTH + 1), f"longer than {MAX_CODE_LENGTH} characters"),
        (b"two words", "characters outside"),
        (b"'; DROP TABLE scans; --", "characters outside"),
        ("caf\u00e9".encode(), "characters outside"),
        (b"https://tickets.example/", "URL carries no code"),
        (b"https://[::1/x", "URL carries no code"),
        (b"https://x.example/t/<script>", "characters outside"),
    ],
)
def test_invalid_payloads_say_what_is_wrong(raw: bytes, error: str) -> None:
    payload = parse_payload(raw)
    assert not payload.valid
    assert payload.code is None
    assert error in payload.error


@given(st.binary(max_size=2 * MAX_PAYLOAD_BYTES))
def test_any_bytes_give_a_code_or_a_reason(raw: bytes) -> None:
    payload = parse_payload(raw)
    assert (payload.code is None) != (payload.error is None)
    if payload.valid:
        assert check_code(payload.code) is None


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_any_text_gives_a_valid_code_or_a_reason(text: str) -> None:
    payload = parse_payload(text.encode())
    if payload.valid:
        assert 1 <= len(payload.code) <= MAX_CODE_LENGTH
        assert payload.code.isascii() and payload.code.isprintable()
        assert " " not in payload.code


@given(st.from_regex(r"[A-Za-z0-9._~:@+=-]{1,128}", fullmatch=True),
       st.sampled_from(["", " ", "\n", "\r\n\t "]))
def test_codes_round_trip_through_whitespace(code: str, pad: str) -> None:
    assert parse_payload(f"{pad}{code}{pad}".encode()).code == code


@given(st.binary(max_size=5000) | st.text(max_size=2000).map(str.encode))
def test_printable_is_bounded_and_safe(raw: bytes) -> None:
    text = printable(raw)
    assert text.isprintable()
    assert len(text) <= MAX_RECORDED_CODE
    text.encode("utf-8")  # no lone surrogates: storable and sendable
    if len(text) < MAX_RECORDED_CODE - 10:  # nothing was cut: all of it is there
        assert text == printable(raw, limit=None)


@given(st.binary(max_size=2000), st.integers(1, 500))
def test_printable_cuts_whole_escapes_only(raw: bytes, limit: int) -> None:
    text = printable(raw, limit=limit)
    assert len(text) <= limit
    full = printable(raw, limit=None)
    if text != full:
        assert text.endswith("…") and full.startswith(text[:-1])
        # the cut never splits an escape such as \\x01 into "\\x0"
        assert not re.search(r"\\(x[0-9a-f]?|u[0-9a-f]{0,3}|U[0-9a-f]{0,7})$", text[:-1])


def test_printable_escapes_control_characters_and_marks_truncation() -> None:
    assert printable(b"a\x00b\n") == "a\\x00b\\n"
    assert printable(b"\xff") == "\\xff"
    assert printable(b"x" * MAX_RECORDED_CODE) == "x" * MAX_RECORDED_CODE
    assert printable(b"x" * (MAX_RECORDED_CODE + 1)) == "x" * (MAX_RECORDED_CODE - 1) + "…"
    assert printable(b"x" * 3000, limit=None) == "x" * 3000
    # 150 control bytes render as 600 characters: cut to the limit at a whole escape
    assert printable(b"\x01" * 150) == "\\x01" * 99 + "…"
