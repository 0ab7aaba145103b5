"""``checkin config check FILE``: every problem with a device config, before anything starts.

The same checks the door and the sync daemon make when they start (:mod:`device.config`:
missing, mistyped and unknown keys, pins out of range or used twice), plus those of the
files it names and its server URL (:func:`device.config.file_problems`: the token file
missing or readable by others, the CA file, the camera's ``images:`` folder, a ``ws://``
server that is not this machine), which the door and the daemon only warn about. All
problems at once, each naming the key, the value and what was expected. Touches no
hardware and no network. :func:`problems` is for other commands (``checkin doctor``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from device.config import ConfigError, file_problems, parse_config, read_document

#: Exit status: the file is valid / the file has problems (as every config error).
EXIT_VALID = 0
EXIT_INVALID = 2


def problems(path: Path | str) -> list[str]:
    """Every problem with the device config at *path* (empty: valid), each a line naming
    the key, the value and what was expected. Never raises for a bad file."""
    try:
        data = read_document(path)
    except ConfigError as exc:
        return exc.problems
    found: list[str] = []
    try:
        parse_config(data, path)
    except ConfigError as exc:
        found.extend(exc.problems)
    return found + file_problems(data, path)


def report(path: Path | str, found: list[str], out: TextIO) -> int:
    """Print *found* for *path* (or that it is valid); return the exit status."""
    if not found:
        print(f"{path}: valid", file=out)
        return EXIT_VALID
    for problem in found:
        print(f"{path}: {problem}", file=out)
    print(f"{path}: {len(found)} problem{'s' if len(found) > 1 else ''}", file=out)
    return EXIT_INVALID


def run(args: argparse.Namespace) -> int:
    found = problems(args.file)
    return report(args.file, found, sys.stdout)
