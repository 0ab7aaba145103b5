"""How every ``checkin`` process logs."""

from __future__ import annotations

import logging
import sys


def setup(*, verbose: bool, log_format: str = "text") -> None:
    """Send log records to stderr in *log_format*."""
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiosqlite").setLevel(logging.INFO)  # one DEBUG line per statement
