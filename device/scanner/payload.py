"""Parse a decoded QR payload into an attendee code.

A badge's QR code holds either the bare attendee code (``A1B2C3``) or a URL
that carries it (``https://tickets.example/t/A1B2C3`` or ``...?code=A1B2C3``).
Anything else a camera can read — binary data, control characters, text too
long to be a code, camera noise — is an invalid payload, rejected with a reason
that says what was wrong.

Pure functions only: no I/O, so the rules are tested exhaustively.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

#: Longest payload accepted, in bytes: a URL carrying a code fits easily;
#: anything longer is not a badge.
MAX_PAYLOAD_BYTES = 512
#: Longest attendee code accepted, in characters.
MAX_CODE_LENGTH = 128
#: Longest code the door records for a scan, in characters: an attendee code, or
#: the bounded rendering (:func:`printable`) of a payload that is not one. The sync
#: protocol accepts exactly this much, so every scan a door records can be uploaded.
MAX_RECORDED_CODE = 400
#: Query parameters that may carry the code in a badge URL, in order of preference.
CODE_QUERY_KEYS = ("code", "c", "ticket", "secret", "id")

_CODE_RE = re.compile(r"[A-Za-z0-9._~:@+=/-]+")


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


def check_code(code: str) -> str | None:
    """Say what is wrong with *code* as an attendee code, or ``None`` if nothing is.

    Codes are 1 to :data:`MAX_CODE_LENGTH` characters from a URL-safe set
    (letters, digits and ``. _ ~ : @ + = / -``). The server applies the same rule
    to the codes organizers upload, so anything the door can receive it can scan.
    """
    if not code:
        return "empty code"
    if len(code) > MAX_CODE_LENGTH:
        return f"code longer than {MAX_CODE_LENGTH} characters"
    if not _CODE_RE.fullmatch(code):
        return "code contains characters outside letters, digits and . _ ~ : @ + = / -"
    return None


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


def printable(raw: bytes, limit: int | None = MAX_RECORDED_CODE) -> str:
    """A safe rendering of raw payload bytes for records and logs, at most *limit* characters.

    Invalid payloads are recorded too; this keeps hostile bytes (control
    characters, invalid UTF-8, megabytes of noise) out of logs and the server.
    Bytes that are not printable text are escaped (``\\x01``, ``\\u202e``), so a
    byte can take up to ten characters: the rendering, not the payload, is cut to
    *limit* (whole escapes only), ending in ``…`` when something was left out.
    ``limit=None`` renders everything (for a technician's own terminal).
    """
    if limit is not None and limit < 1:
        raise ValueError("limit must be at least 1")
    # Every byte renders as at least one character: more than this is never shown.
    shown = raw if limit is None else raw[:4 * limit + 4]
    pieces = [_render(ch) for ch in shown.decode("utf-8", errors="surrogateescape")]
    rendered = "".join(pieces)
    if limit is None or len(rendered) <= limit:
        return rendered
    kept, length = [], 0
    for piece in pieces:
        if length + len(piece) > limit - 1:
            break
        kept.append(piece)
        length += len(piece)
    return "".join(kept) + "…"


def _render(ch: str) -> str:
    if ch.isprintable():
        return ch
    if "\udc80" <= ch <= "\udcff":  # a byte that is not UTF-8, kept by surrogateescape
        return f"\\x{ord(ch) - 0xDC00:02x}"
    return ch.encode("unicode_escape").decode("ascii")


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
