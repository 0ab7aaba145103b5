"""How every ``checkin`` process logs: to stderr, as text or as JSON lines.

``text`` on a terminal (or into a file): ``TIME LEVEL LOGGER: MESSAGE``, as before.
``text`` under systemd, whose journal stores stderr: journald stamps each line itself,
so no timestamp of ours, and each line starts with its syslog priority (``<3>`` for
an error...: journald's ``SyslogLevelPrefix``), so ``journalctl -p warning`` finds
the warnings. ``json`` (``--log-format json``): one object per line with ``ts``,
``level``, ``logger``, ``message`` and the record's extra fields (a door's decision,
a sync event: ``log.info(..., extra={...})``), for shipping to a log store.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

#: syslog priorities (RFC 5424) by logging level; journald reads them from ``<N>``.
PRIORITIES = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
              logging.DEBUG: 7}
#: The text format where nobody else stamps the lines.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Attributes every LogRecord has: anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName"}


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (a custom level: the next one above it)."""
    for level in sorted(PRIORITIES):
        if levelno <= level:
            return PRIORITIES[level]
    return PRIORITIES[logging.CRITICAL]


def under_journald(environ: Mapping[str, str], stderr_dev: int, stderr_ino: int) -> bool:
    """Whether stderr is the journal stream systemd gave this process: ``$JOURNAL_STREAM``
    is ``DEVICE:INODE`` of it; a child whose stderr was redirected keeps the variable but
    not the stream, so both must match."""
    dev, _, ino = environ.get("JOURNAL_STREAM", "").partition(":")
    return dev.isdigit() and ino.isdigit() and (int(dev), int(ino)) == (stderr_dev, stderr_ino)


def extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a log call added with ``extra=``."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class JournalFormatter(logging.Formatter):
    """Text for journald: ``<N>LOGGER: MESSAGE``, the prefix on every line of it (a
    traceback's lines too, so none of them lands at the default priority)."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extras(record).items():
            line.setdefault(key, value)  # an extra never hides the four above
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def formatter(log_format: str, *, journald: bool) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    if log_format != "text":
        raise ValueError(f"log format {log_format!r}: expected text or json")
    return JournalFormatter() if journald else logging.Formatter(TEXT_FORMAT)


def setup(*, verbose: bool, log_format: str = "text", stream: TextIO | None = None,
          environ: Mapping[str, str] | None = None) -> None:
    """Send log records to *stream* (stderr) in *log_format*. Like logging.basicConfig,
    leaves a root logger that already has handlers alone (pytest's, in-process)."""
    stream = sys.stderr if stream is None else stream
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter(log_format, journald=_stream_is_journal(
            stream, os.environ if environ is None else environ)))
        root.addHandler(handler)
        root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("aiosqlite").setLevel(logging.INFO)  # one DEBUG line per statement


def _stream_is_journal(stream: TextIO, environ: Mapping[str, str]) -> bool:
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # not a file (e.g. io.StringIO)
        return False
    return under_journald(environ, info.st_dev, info.st_ino)
