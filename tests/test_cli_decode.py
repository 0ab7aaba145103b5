"""``checkin decode PATH...`` as technicians run it, in a subprocess."""

from __future__ import annotations

import subprocess

import pytest

from checkin.badges import write_badge
from device.config import DECODERS
from tests.conftest import CHECKIN, CORPUS


def decode(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([*CHECKIN, "decode", *args], capture_output=True, text=True, env=env,
                          timeout=60)


@pytest.mark.parametrize("decoder", DECODERS)
def test_each_path_gets_its_payloads_or_an_empty_line(tmp_path, subprocess_env, decoder) -> None:
    badge = write_badge(tmp_path / "badge.png", "https://tickets.example/t/ATT-9")
    blank = write_badge(tmp_path / "blank.png", None)
    photo = CORPUS / "qrcode-2" / "#128.png"
    done = decode("--decoder", decoder, str(badge), str(blank), str(photo), env=subprocess_env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"{badge}\thttps://tickets.example/t/ATT-9",
        f"{blank}\t",
        f"{photo}\t{(CORPUS / 'qrcode-2' / '#128.txt').read_text()}",
    ]


def test_unreadable_files_go_to_stderr_and_the_rest_is_decoded(tmp_path, subprocess_env) -> None:
    badge = write_badge(tmp_path / "badge.png", "ATT-1")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    done = decode(str(tmp_path / "missing.png"), str(broken), str(badge), env=subprocess_env)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [f"{badge}\tATT-1"]
    assert "missing.png: no such file" in done.stderr
    assert "broken.jpg" in done.stderr
    assert "Traceback" not in done.stderr


def test_control_characters_in_a_payload_cannot_break_the_output(tmp_path, subprocess_env) -> None:
    badge = write_badge(tmp_path / "evil.png", b"A\tB\nC\x1b[2J")
    done = decode(str(badge), env=subprocess_env)
    assert done.stdout == f"{badge}\tA\\tB\\nC\\x1b[2J\n"


def test_a_folder_is_decoded_image_by_image(tmp_path, subprocess_env) -> None:
    write_badge(tmp_path / "b.png", "B")
    write_badge(tmp_path / "a.png", "A")
    (tmp_path / "notes.txt").write_text("not an image")
    done = decode(str(tmp_path), env=subprocess_env)
    assert done.stdout.splitlines() == [f"{tmp_path / 'a.png'}\tA", f"{tmp_path / 'b.png'}\tB"]
