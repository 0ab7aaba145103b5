"""The process harness's own pieces: the config writer, waiting, and the throwaway
PostgreSQL cluster."""

from __future__ import annotations

import tomllib
from pathlib import Path

import psycopg
import pytest

from checkin.harness import Postgres, Process, WaitFailed, door_config, run, toml, wait_for
from device.config import load_config
from tests.conftest import require_postgres


def test_the_toml_writer_round_trips_every_value_a_config_holds() -> None:
    sections = {"strings": {"plain": "door-1", "quotes": 'say "hi"', "backslash": "C:\\x\\y",
                            "controls": "a\x00b\tc\nd\x1be\x7f", "unicode": "日本 😀"},
                "numbers": {"int": 17, "negative": -1, "float": 0.05, "big": 1e20},
                "flags": {"yes": True, "no": False}, "paths": {"path": Path("/srv/data")},
                "lists": {"urls": ["ws://a/sync", 'wss://"b"/sync'], "none": []}}
    parsed = tomllib.loads(toml(sections, comment="two\nlines"))
    assert parsed == {**sections, "paths": {"path": "/srv/data"}}


def test_the_toml_writer_refuses_what_it_cannot_write() -> None:
    with pytest.raises(ValueError, match="bare TOML key"):
        toml({"a section": {}})
    with pytest.raises(TypeError):
        toml({"s": {"k": [1, 2]}})  # type: ignore[dict-item]


def test_a_door_config_is_valid_and_takes_the_callers_keys(tmp_path: Path) -> None:
    sections = door_config("door-9", camera={"fps": 30}, gpio={"mirror_file": "pins"},
                           server={"url": "ws://127.0.0.1:9/sync", "token_file": "t"})
    assert sections["camera"] == {"source": "images:frames", "fps": 30}
    path = tmp_path / "door.toml"
    path.write_text(toml(sections))
    config = load_config(path)
    assert (config.device_id, config.data_dir, config.camera.fps) == ("door-9", tmp_path / "data",
                                                                    30)
    assert config.server is not None and config.server.url == ("ws://127.0.0.1:9/sync",)


def test_waiting_fails_in_time_or_when_the_process_exits(tmp_path: Path) -> None:
    with pytest.raises(WaitFailed, match=r"timed out waiting for nothing \(0.1 s\)"):
        wait_for(lambda: False, 0.1, "nothing", interval=0.01)
    process = Process(["no-such-command"], tmp_path / "cli.log")
    with pytest.raises(WaitFailed, match="exited 2") as failed:
        wait_for(lambda: False, 30, "a command that does not exist", process=process)
    assert "invalid choice" in str(failed.value)  # the log's tail says why


def _processes_in(folder: Path) -> list[str]:
    """The command lines of the running processes that name *folder* (a cluster's)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # ended meanwhile
            continue
        if str(folder) in command:
            found.append(command)
    return found


def test_a_postgres_cluster_holds_databases_of_its_own_and_stops_without_leftovers() -> None:
    require_postgres()
    with Postgres() as cluster:
        root = cluster.root
        assert _processes_in(root), "no postgres process runs in its folder"
        first, second = cluster.create_database("first"), cluster.create_database("second")
        assert first == f"postgresql://postgres@127.0.0.1:{cluster.port}/first"
        with psycopg.connect(first) as connection:
            connection.execute("CREATE TABLE only_here (x int)")
        with psycopg.connect(second) as connection:
            assert connection.execute("SELECT current_database(), count(*) FROM "
                                      "pg_tables WHERE tablename = 'only_here'").fetchone() \
                == ("second", 0)
        cluster.drop_database("second")
        held = psycopg.connect(first)  # a session still open: stopping ends it
    try:
        wait_for(lambda: not _processes_in(root), what="the cluster's processes to end")
        assert not root.exists()
        with pytest.raises(psycopg.OperationalError):
            held.execute("SELECT 1")
    finally:
        held.close()


def test_postgres_says_why_it_cannot_run_and_stopping_a_cluster_never_started_is_harmless(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHECKIN_PG_BIN", str(tmp_path))
    why = Postgres.available()
    assert why is not None and "`postgresql` package" in why and str(tmp_path) in why
    with pytest.raises(RuntimeError, match="initdb and pg_ctl not found"):
        Postgres(tmp_path / "cluster").start()
    Postgres(tmp_path / "cluster").stop()


def test_without_postgresql_its_tests_skip_saying_why_but_fail_where_it_is_required(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHECKIN_PG_BIN", str(tmp_path))
    monkeypatch.delenv("CHECKIN_REQUIRE_TOOLS", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"PostgreSQL storage NOT TESTED.*`postgresql`"):
        require_postgres()
    monkeypatch.setenv("CHECKIN_REQUIRE_TOOLS", "1")
    with pytest.raises(pytest.fail.Exception, match="CHECKIN_REQUIRE_TOOLS=1 says it must be"):
        require_postgres()


def test_a_command_prefix_runs_the_process_through_another_command(tmp_path: Path) -> None:
    """faketime (tests/test_field_time.py) and env wrap a checkin process this way."""
    process = Process(["--version"], tmp_path / "log", prefix=("env", "CHECKIN_PREFIXED=1"),
                      pipe=True)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0 and out.startswith(b"checkin ")
    assert repr(process).startswith("checkin --version (pid")
    assert run("--version", prefix=("env", "A=1")).stdout.startswith("checkin ")
