"""The layers hold: the import-linter contract in pyproject.toml passes, and breaks when
a lower layer imports a higher one (so the check in `make test` can fail)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("core", "sync", "device", "server", "checkin")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True,
                          text=True, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
                          timeout=120)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_layers_are_kept(tree: Path) -> None:
    done = lint(tree)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(("lower", "higher"), [
    ("core/shapes.py", "sync.messages"),       # foundations importing the protocol
    ("sync/messages.py", "device.scanner.payload"),  # the protocol importing the camera's code
    ("core/clock.py", "checkin.cli"),          # anything importing the command
    ("device/door.py", "server.store"),        # the door and the server are independent
])
def test_an_import_against_the_layers_breaks_the_contract(tree: Path, lower: str,
                                                          higher: str) -> None:
    with (tree / lower).open("a") as module:
        module.write(f"\nimport {higher}  # noqa: E402, F401\n")
    done = lint(tree)
    assert done.returncode != 0
    assert "BROKEN" in done.stdout or "broken" in done.stdout
    assert higher in done.stdout, done.stdout
