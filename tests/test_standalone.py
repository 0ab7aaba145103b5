"""A clone works anywhere: nothing the project runs, tests or benchmarks reads beside it."""

from __future__ import annotations

import re
import subprocess

from tests.conftest import CORPUS, REPO

#: How a path outside the repository would be spelled (split so this file does not match).
OUTSIDE = re.compile("|".join([r"\.\./" + "shared", "shared/" + "corpora",
                               r"parent\.parent\.parent"]))


def tracked_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, text=True, check=True)
    return listed.stdout.splitlines()


def test_no_source_reads_outside_the_repository() -> None:
    offenders = []
    for name in tracked_files():
        if not name.endswith((".py", ".sh", ".toml", ".cfg", ".ini", ".service")) and \
                name not in ("Makefile", ".ci/run"):
            continue
        text = (REPO / name).read_text(encoding="utf-8", errors="replace")
        offenders += [f"{name}: {m.group(0)}" for m in OUTSIDE.finditer(text)]
    assert offenders == []


def test_the_qr_corpus_is_in_the_repository_with_its_licence() -> None:
    assert CORPUS.is_relative_to(REPO)
    notice = (CORPUS / "README.txt").read_text()
    assert "Apache License 2.0" in notice and "zxing-cpp" in notice
    rows = (CORPUS / "manifest.tsv").read_text().splitlines()[1:]
    assert len(rows) >= 130
    for row in rows:
        image, expected, *_ = row.split("\t")
        assert (CORPUS / image).is_file() and (CORPUS / expected).is_file(), row
