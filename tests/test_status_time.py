"""``checkin status`` on time and revocation (issue 17): the time source the door would use
now and the offset from the server at the last welcome; a revoked device's scans kept."""

from __future__ import annotations

import asyncio
import io
import json
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from checkin.status import render, revoked_text, show_status, time_text
from core.clock import boot_id
from core.timesource import ClockAnchor, TimeSource
from device.config import load_config
from sync.store import SyncStore


def status_of(tmp_path: Path, make_config, monkeypatch: pytest.MonkeyPatch, *,
              synced: bool, anchor_boot: str | None, offset: float | None = None,
              as_json: bool = False) -> str:
    marker = tmp_path / "timesync" / "synchronized"
    marker.parent.mkdir(exist_ok=True)
    if synced:
        marker.touch()
    monkeypatch.setenv("CHECKIN_TIMESYNC_FILE", str(marker))
    config = load_config(make_config())

    async def go() -> str:
        store = await SyncStore.open(config.data_dir)
        try:
            if anchor_boot is not None:
                await store.note_clock(ClockAnchor(datetime.now(UTC), time.monotonic_ns(),
                                                   anchor_boot), clock_offset_s=offset)
        finally:
            await store.close()
        out = io.StringIO()
        assert await show_status(config, out, as_json=as_json) == 0
        return out.getvalue()

    return asyncio.run(go())


@pytest.mark.parametrize(("synced", "anchor_boot", "source"), [
    (True, None, "system"), (True, "this", "system"), (False, "this", "server"),
    (False, "another", "unknown"), (False, None, "unknown")])
def test_the_time_source_is_the_doors(tmp_path, make_config, monkeypatch, synced: bool,
                                      anchor_boot: str | None, source: str) -> None:
    boot = boot_id() if anchor_boot == "this" else anchor_boot
    text = status_of(tmp_path, make_config, monkeypatch, synced=synced, anchor_boot=boot,
                     offset=-259_200.5 if boot else None)
    line = next(x for x in text.splitlines() if x.startswith("time:"))
    assert line.split()[1] == source, text
    if boot:
        assert "this clock 3.0 d (259200.5 s) behind the server's at the last welcome" in line
    else:
        assert "offset from the server: not measured yet" in line
    assert "revoked" not in text
    as_json = json.loads(status_of(tmp_path, make_config, monkeypatch, synced=synced,
                                   anchor_boot=None, as_json=True))
    assert as_json["time_source"] == source
    assert as_json["clock_offset_s"] == (-259_200.5 if boot else None)


def test_time_text() -> None:
    assert time_text(TimeSource.SYSTEM, 0.01) == (
        "system (the system clock, synchronised; this clock on the server's at the last "
        "welcome)")
    assert time_text(TimeSource.SERVER, 2.25).endswith(
        "this clock 2.2 s ahead of the server's at the last welcome)")
    assert "[door] unknown_time" in time_text(TimeSource.UNKNOWN, None)


def test_a_revoked_device_says_how_many_scans_it_kept(tmp_path, make_config,
                                                      monkeypatch) -> None:
    text = status_of(tmp_path, make_config, monkeypatch, synced=True, anchor_boot=None)
    assert "revoked" not in text
    config = load_config(make_config())

    async def status():
        store = await SyncStore.open(config.data_dir)
        try:
            return await store.status()
        finally:
            await store.close()

    s = replace(asyncio.run(status()), revoked_at="2026-11-28T10:00:00+00:00",
                scans_waiting=2)
    assert revoked_text(s).startswith("2 scan(s) kept for recovery")
    lines = render("door-test", s, "disconnected", datetime.now(UTC)).splitlines()
    assert lines[1].startswith("revoked:") and "2 scan(s) kept for recovery" in lines[1]
