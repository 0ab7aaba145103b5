"""Attendee codes: the rule every code follows, and what a door records when a badge holds none.

One rule for the whole system: the door parses badges by it, the sync protocol
checks codes by it, and the server applies it to the codes organizers upload,
so anything the door can receive it can scan. :func:`printable` renders any
bytes a camera read as bounded, printable text, at most
:data:`MAX_RECORDED_CODE` characters, which is exactly what the protocol
carries: every scan a door records can be uploaded.
"""

from __future__ import annotations

import re

#: Longest attendee code accepted, in characters.
MAX_CODE_LENGTH = 128
#: Longest code the door records for a scan, in characters: an attendee code, or
#: the bounded rendering (:func:`printable`) of a payload that is not one. The sync
#: protocol accepts exactly this much, so every scan a door records can be uploaded.
MAX_RECORDED_CODE = 400

_CODE_RE = re.compile(r"[A-Za-z0-9._~:@+=/-]+")


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
