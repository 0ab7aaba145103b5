"""Every command in the README is real: make targets exist, and every ``checkin``
command line parses exactly as written.

What runs them: CI runs ``make demo ARGS=--once`` and ``make test`` (``.ci/run``)
and ``make bench-quick``; the suite runs each ``checkin`` subcommand for real in
test_door (door), test_sync_e2e (sync, status), test_server_api (server),
test_cli_decode (decode) and test_demo (demo).
"""

from __future__ import annotations

import re
import shlex

import pytest

from checkin.cli import _parser
from tests.conftest import REPO

README = (REPO / "README.md").read_text()
PLACEHOLDERS = {"FILE": "config/door.example.toml", "PATH...": "README.md", "DIR": "data",
                "H": "127.0.0.1", "P": "8765", "PEM": "x.pem"}


def shell_lines() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", README, re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def inline_commands(prefix: str) -> list[str]:
    """Commands given as list items: "- `command ...`: what it does"."""
    return [c for c in re.findall(r"^- `([^`\n]+)`", README, re.M) if c.startswith(prefix)]


def test_the_quick_start_is_exactly_two_commands() -> None:
    assert shell_lines() == ["make demo", "make test"]


MAKE_COMMANDS = sorted(set(shell_lines() + inline_commands("make ")
                           + re.findall(r"`(make [^`]+)`", README)))


@pytest.mark.parametrize("command", MAKE_COMMANDS)
def test_every_make_command_has_a_target(command: str) -> None:
    makefile = (REPO / "Makefile").read_text()
    words = shlex.split(command)
    assert re.search(rf"^{re.escape(words[1])}:", makefile, re.M), command
    for assignment in words[2:]:
        variable = assignment.split("=", 1)[0]
        assert f"$({variable})" in makefile, command
    ci = (REPO / ".ci" / "run").read_text()
    if command in ("make demo", "make test"):
        assert re.search(rf"^{re.escape(command)}\b", ci, re.M), f"CI does not run {command}"


def expand(command: str) -> list[str]:
    words = shlex.split(command.replace("[", " ").replace("]", " "))[1:]
    return [PLACEHOLDERS.get(w, w) for w in words if w != "|"]


@pytest.mark.parametrize("command", sorted(set(inline_commands("checkin "))))
def test_every_checkin_command_parses_as_written(command: str) -> None:
    args = _parser().parse_args(expand(command))
    assert callable(args.handler)


def test_the_readme_names_every_subcommand() -> None:
    documented = {expand(c)[0] for c in inline_commands("checkin ")}
    assert documented >= {"door", "sync", "status", "server", "decode", "demo"}
