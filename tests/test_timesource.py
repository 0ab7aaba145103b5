"""Where the door's time comes from (core/timesource.py): the pure rules, exhaustively,
and the "synchronized" adapter against marker files in a tmp dir."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core import timesource
from core.timesource import (
    MAX_KERNEL_ERROR_US,
    STA_UNSYNC,
    TIME_ERROR,
    ClockAnchor,
    TimeSource,
    door_time,
    kernel_synchronized,
    synchronized,
    synchronized_from,
)

PARIS = timezone(timedelta(hours=1))
#: The device's wall clock: three days behind the real time.
WALL = datetime(2026, 11, 25, 10, 0, tzinfo=PARIS)
REAL = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
BOOT = "boot-a"
ANCHOR = ClockAnchor(server_time=REAL, monotonic_ns=5_000_000_000, boot_id=BOOT)
ANCHORS = {"none": None, "this boot": ANCHOR,
           "another boot": ClockAnchor(REAL, 5_000_000_000, "boot-b")}


@pytest.mark.parametrize(("synced", "anchor"), list(itertools.product([False, True], ANCHORS)))
def test_every_case_follows_the_order_system_server_unknown(synced: bool, anchor: str) -> None:
    source, when = door_time(synced, ANCHORS[anchor], WALL, 7_500_000_000, BOOT)
    if synced:
        assert (source, when) == (TimeSource.SYSTEM, WALL)
    elif anchor == "this boot":
        assert source is TimeSource.SERVER
        assert when == REAL + timedelta(seconds=2.5)
    else:
        assert (source, when) == (TimeSource.UNKNOWN, WALL)


def test_the_server_time_is_shown_in_the_wall_clocks_zone() -> None:
    _source, when = door_time(False, ANCHOR, WALL, ANCHOR.monotonic_ns, BOOT)
    assert when.utcoffset() == timedelta(hours=1)
    assert when == REAL and when.isoformat() == "2026-11-28T10:00:00+01:00"


@given(wall_shift=st.integers(-10**7, 10**7), elapsed=st.integers(0, 10**15))
def test_the_server_time_moves_with_the_monotonic_clock_not_the_wall(
        wall_shift: int, elapsed: int) -> None:
    """A wall clock stepped anywhere changes nothing; the monotonic clock carries it."""
    wall = WALL + timedelta(seconds=wall_shift)
    source, when = door_time(False, ANCHOR, wall, ANCHOR.monotonic_ns + elapsed, BOOT)
    assert source is TimeSource.SERVER
    assert abs((when - REAL) - timedelta(microseconds=elapsed / 1000)) <= timedelta(
        microseconds=1)


def test_a_monotonic_time_before_the_anchor_counts_back() -> None:
    """The door may read its clock just before the daemon writes a newer anchor."""
    _source, when = door_time(False, ANCHOR, WALL, ANCHOR.monotonic_ns - 1_000_000, BOOT)
    assert when == REAL - timedelta(milliseconds=1)


@pytest.mark.parametrize(("marker", "directory", "kernel"),
                         list(itertools.product([False, True], [False, True],
                                                        [None, False, True])))
def test_synchronized_rule(marker: bool, directory: bool, kernel: bool | None) -> None:
    expected = marker or (not directory and kernel is True)
    assert synchronized_from(marker, directory, kernel) is expected


@pytest.mark.parametrize(("state", "status", "maxerror", "expected"), [
    (0, 0, 0, True),
    (0, 0, MAX_KERNEL_ERROR_US - 1, True),
    (0, 0, MAX_KERNEL_ERROR_US, False),
    (0, 0, -1, False),
    (0, STA_UNSYNC, 0, False),
    (0, STA_UNSYNC | 0x2001, 100, False),
    (0, 0x2001, 100, True),  # other bits (PLL, NANO) say nothing of synchronisation
    (TIME_ERROR, 0, 0, False),
    (1, 0, 0, True),  # TIME_INS: a leap second pending, still synchronised
])
def test_kernel_rule(state: int, status: int, maxerror: int, expected: bool) -> None:
    assert kernel_synchronized(state, status, maxerror) is expected


def test_the_marker_file_says_synchronized(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "timesync" / "synchronized"
    monkeypatch.setenv("CHECKIN_TIMESYNC_FILE", str(marker))
    monkeypatch.setattr(timesource, "_kernel_says", lambda: True)
    marker.parent.mkdir()
    assert synchronized() is False  # timesyncd runs, not synchronised yet: the kernel unasked
    marker.touch()
    assert synchronized() is True


@pytest.mark.parametrize("kernel", [None, False, True])
def test_without_timesyncd_the_kernel_decides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              kernel: bool | None) -> None:
    monkeypatch.setenv("CHECKIN_TIMESYNC_FILE", str(tmp_path / "absent" / "synchronized"))
    monkeypatch.setattr(timesource, "_kernel_says", lambda: kernel)
    assert synchronized() is (kernel is True)


def test_the_default_marker_is_timesyncds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHECKIN_TIMESYNC_FILE", raising=False)
    assert str(timesource.marker_path()) == "/run/systemd/timesync/synchronized"


def test_the_kernel_answers_here() -> None:
    """adjtimex through ctypes reads (never sets) this machine's clock state."""
    assert timesource._kernel_says() in (None, False, True)
    timex = timesource._Timex()
    function = timesource._adjtimex()
    if function is None:
        pytest.skip("no adjtimex in this C library")
    assert function(timex) >= 0
    assert timex.modes == 0 and timex.tick > 0  # a sane layout: the tick is ~10000 us
