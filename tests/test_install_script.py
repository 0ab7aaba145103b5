"""scripts/install-pi.sh: its dry run (a normal process: the steps it prints, and that it
changes nothing) and shellcheck on every shell script of the repository.

shellcheck comes from the Debian package ``shellcheck`` (scripts/system-packages.sh installs
it). Where it is missing the test skips, saying so, unless ``CHECKIN_REQUIRE_TOOLS=1``
(set by .ci/run) turns the skip into a failure: CI never skips it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = Path("scripts") / "install-pi.sh"
UNITS = ("checkin-door.service", "checkin-sync.service")


def shell_scripts() -> list[Path]:
    return sorted([*REPO.glob("scripts/*.sh"), REPO / ".ci" / "run"])


def test_shellcheck_is_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        message = ("shellcheck is not installed (Debian package shellcheck; "
                   "scripts/system-packages.sh installs it)")
        if os.environ.get("CHECKIN_REQUIRE_TOOLS") == "1":
            pytest.fail(message + ", and CHECKIN_REQUIRE_TOOLS=1 says it must be")
        pytest.skip("SKIPPED LOUDLY: " + message)
    result = subprocess.run([shellcheck, "--severity=style", *map(str, shell_scripts())],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """A checkout without a venv: the script and what it installs, in a folder of its own."""
    app = tmp_path / "app"
    for relative in (SCRIPT, Path("config/door.example.toml"),
                     *(Path("systemd") / unit for unit in UNITS)):
        (app / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, app / relative)
    return app


@pytest.fixture
def device_dir(tmp_path: Path) -> Path:
    """A door's folder as ``checkin provision`` writes it."""
    folder = tmp_path / "out" / "door-1"
    folder.mkdir(parents=True)
    (folder / "door.toml").write_text(
        (REPO / "config" / "door.example.toml").read_text().replace('"door-hall-a"', '"door-1"'))
    (folder / "device.token").write_text("secret\n")
    folder.joinpath("device.token").chmod(0o600)
    return folder


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every file under *folders* (and whether each folder exists) with its size and mode."""
    found: dict[str, tuple[int, int]] = {}
    for folder in folders:
        found[str(folder)] = (folder.exists(), 0)
        if folder.exists():
            for path in folder.rglob("*"):
                stat = path.lstat()
                found[str(path)] = (stat.st_size, stat.st_mode)
    return found


def dry_run(app: Path, *extra: str) -> list[str]:
    result = subprocess.run(["bash", str(app / SCRIPT), "--dry-run", *extra],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert all(line.startswith(("+ ", "# ")) for line in lines), lines
    return [line.removeprefix("+ ") for line in lines if line.startswith("+ ")]


def test_dry_run_prints_every_step_of_the_install_and_changes_nothing(
        app: Path, device_dir: Path) -> None:
    watched = (app, device_dir, Path("/etc/checkin"), Path("/etc/systemd/system"))
    before = snapshot(*watched)
    steps = dry_run(app, "--device-dir", str(device_dir))
    assert snapshot(*watched) == before

    venv = app / ".venv"
    expected = [
        "apt-get update",
        "env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
        "python3-venv python3-picamera2 python3-lgpio libzbar0 git",
        f"python3 -m venv --system-site-packages {venv}",
        f"{venv}/bin/pip install --quiet --upgrade {app}",
        "install -d -m 0755 -o root -g root /etc/checkin",
        f"install -m 0644 -o root -g root {device_dir}/door.toml /etc/checkin/door.toml",
        f"install -m 0600 -o checkin -g checkin {device_dir}/device.token "
        "/etc/checkin/device.token",
        *(step for unit in UNITS for step in (
            f"install -m 0644 {app}/systemd/{unit} /etc/systemd/system/{unit}",
            f"sed -i s\\|/opt/checkin\\|{app}\\|g /etc/systemd/system/{unit}")),
        "systemctl daemon-reload",
        "systemctl enable checkin-door.service checkin-sync.service",
        f"{venv}/bin/checkin config check /etc/checkin/door.toml",
        "systemctl restart checkin-door.service checkin-sync.service",
    ]
    assert [step for step in steps if step in expected] == expected
    # The user: made, or (on a machine that has it) put in the groups.
    user = [s for s in steps if s.startswith(("useradd", "usermod"))]
    assert user in (
        ["useradd --system --user-group --home-dir /var/lib/checkin --no-create-home "
         "--shell /usr/sbin/nologin --groups gpio,video checkin"],
        ["usermod --append --groups gpio,video checkin"])
    assert steps.index(user[0]) < steps.index(expected[2])


def test_without_a_device_dir_the_example_config_is_installed_or_an_existing_one_kept(
        app: Path) -> None:
    steps = dry_run(app)
    example = (f"install -m 0644 -o root -g root {app}/config/door.example.toml "
               "/etc/checkin/door.toml")
    assert (example in steps) is not Path("/etc/checkin/door.toml").exists()
    assert not any("device.token" in step for step in steps)


def test_a_venv_without_the_system_site_packages_is_made_to_see_them(app: Path) -> None:
    venv = app / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(shutil.which("python3") or "/usr/bin/python3")
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\ninclude-system-site-packages = false\n")
    steps = dry_run(app)
    assert not any(step.startswith("python3 -m venv") for step in steps)
    assert any(step.startswith("sed -i") and step.endswith(f"{venv}/pyvenv.cfg")
               for step in steps)


@pytest.mark.parametrize(("args", "message"), [
    (["--dry-run", "--bogus"], "unknown option: --bogus"),
    (["--dry-run", "--device-dir", "/nonexistent"], "no door.toml there"),
])
def test_bad_arguments_exit_2_naming_them(app: Path, args: list[str], message: str) -> None:
    result = subprocess.run(["bash", str(app / SCRIPT), *args], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert message in result.stderr


def test_the_units_name_the_paths_the_script_rewrites() -> None:
    for unit in UNITS:
        assert "ExecStart=/opt/checkin/.venv/bin/checkin " in (REPO / "systemd" / unit).read_text()
