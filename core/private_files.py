"""Files only their owner may read: tokens and secrets, written whole or not at all.

A device token (``checkin provision``), the server's link secret (made by the store,
copied by ``checkin server migrate``): each is written to a temporary file created with
mode 0600 (never readable by others, not even for a moment), synced, then renamed over
the old one, so a crash leaves the old file or the new, never half of one.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, text: str) -> None:
    """*path* holding *text*, mode 0600 from the start, replaced atomically."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
