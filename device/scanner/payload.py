"""Parse a decoded QR payload into an attendee code.

A badge's QR code holds either the bare attendee code (``A1B2C3``) or a URL
that carries it (``https://tickets.example/t/A1B2C3`` or ``...?code=A1B2C3``).
Anything else a camera can read — binary data, control characters, text too
long to be a code, camera noise — is an invalid payload, rejected with a reason
that says what was wrong.

Pure functions only: no I/O, so the rules are tested exhaustively.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from core.codes import check_code

#: Longest payload accepted, in bytes: a URL carrying a code fits easily;
#: anything longer is not a badge.
MAX_PAYLOAD_BYTES = 512
#: Query parameters that may carry the code in a badge URL, in order of preference.
CODE_QUERY_KEYS = ("code", "c", "ticket", "secret", "id")



@dataclass(frozen=True, slots=True)
class Payload:
    """What a QR payload turned out to be.

    Exactly one of :attr:`code` and :attr:`error` is set.
    """

    code: str | None
    error: str | None = None

    @property
    def valid(self) -> bool:
        return self.code is not None


def parse_payload(raw: bytes) -> Payload:
    """Turn the raw bytes of a QR payload into a :class:`Payload`.

    Surrounding whitespace is ignored. URLs (``http``/``https``) yield the code
    from a known query parameter or else from the last path segment.
    """
    if len(raw) > MAX_PAYLOAD_BYTES:
        return Payload(None, f"payload longer than {MAX_PAYLOAD_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Payload(None, "payload is not UTF-8 text")
    text = text.strip()
    if not text:
        return Payload(None, "empty payload")
    bad = _first_control_character(text)
    if bad is not None:
        return Payload(None, f"payload contains control character U+{ord(bad):04X}")
    code = _code_from_url(text) if _looks_like_url(text) else text
    if code is None:
        return Payload(None, "URL carries no code")
    problem = check_code(code)
    if problem is not None:
        return Payload(None, problem)
    return Payload(code)


def _first_control_character(text: str) -> str | None:
    for ch in text:
        # Cc: C0/C1 controls; Cf: invisible format characters (zero-width, bidi overrides).
        if unicodedata.category(ch) in ("Cc", "Cf"):
            return ch
    return None


def _looks_like_url(text: str) -> bool:
    return text[:8].lower().startswith(("http://", "https://"))


def _code_from_url(text: str) -> str | None:
    try:
        parts = urlsplit(text)
    except ValueError:
        return None
    query = parse_qs(parts.query)
    for key in CODE_QUERY_KEYS:
        values = query.get(key)
        if values and values[0]:
            return values[0]
    segments = [s for s in parts.path.split("/") if s]
    return unquote(segments[-1]) if segments else None
