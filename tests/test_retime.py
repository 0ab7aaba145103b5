"""server/retime.py: how the server re-times the scans of a door that did not know the time,
against its rule over every case (and Hypothesis over arbitrary clocks)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.retime import (
    Corrected,
    StoredScan,
    Timing,
    anchor_from_row,
    anchor_row,
    reckon,
    retime,
    retime_stored,
)
from sync.messages import TIME_SOURCES
from sync.server_end import ClockAnchor

#: The server's time at the hello, in a zone that is not UTC (the output is UTC).
HELLO_AT = datetime(2026, 11, 28, 10, 0, 0, 250_000, tzinfo=timezone(timedelta(hours=1)))
ANCHOR = ClockAnchor("boot-a", 500 * 10**9, HELLO_AT)  # 500 s after boot
#: What a door three days behind wrote.
DOOR_TIME = "2026-11-25T08:59:00+00:00"


@pytest.mark.parametrize("source", [None, "system", "server"])
@pytest.mark.parametrize("anchor", [None, ANCHOR], ids=["no anchor", "anchor"])
def test_a_scan_whose_door_knew_the_time_is_never_retimed(source, anchor) -> None:
    assert retime(DOOR_TIME, source, 440 * 10**9, "boot-a", anchor) == Timing(DOOR_TIME)


def test_an_unknown_time_with_no_anchor_is_flagged_and_kept() -> None:
    assert retime(DOOR_TIME, "unknown", 1, "boot-a", None) == Timing(
        DOOR_TIME, None, Corrected.UNKNOWN)


def test_an_anchor_of_another_boot_is_no_use() -> None:
    assert retime(DOOR_TIME, "unknown", 440 * 10**9, "boot-b", ANCHOR) == Timing(
        DOOR_TIME, None, Corrected.UNKNOWN)


@pytest.mark.parametrize(("monotonic_ns", "expected"), [
    (440 * 10**9, "2026-11-28T08:59:00.250+00:00"),  # a minute before the hello
    (500 * 10**9, "2026-11-28T09:00:00.250+00:00"),  # at the hello
    (500 * 10**9 + 1_500_000, "2026-11-28T09:00:00.251+00:00"),  # after it (1.5 ms)
    (3600 * 10**9 + 500 * 10**9, "2026-11-28T10:00:00.250+00:00"),  # an hour after
    (0, "2026-11-28T08:51:40.250+00:00"),  # at boot
])
def test_an_unknown_time_is_reckoned_from_an_anchor_of_its_boot(monotonic_ns,
                                                                 expected) -> None:
    assert retime(DOOR_TIME, "unknown", monotonic_ns, "boot-a", ANCHOR) == Timing(
        expected, DOOR_TIME, Corrected.RECONSTRUCTED)


def test_a_time_outside_the_calendar_stays_unknown() -> None:
    early = ClockAnchor("boot-a", 2**63 - 1, datetime(200, 1, 1, tzinfo=UTC))
    assert reckon(0, early) is None  # 292 years before the year 200: no date
    assert retime(DOOR_TIME, "unknown", 0, "boot-a", early).time_corrected is Corrected.UNKNOWN
    late = ClockAnchor("boot-a", 0, datetime(9999, 12, 31, 23, 0, tzinfo=UTC))
    assert reckon(2**62, late) is None


def test_retime_stored_re_times_only_the_scans_of_the_anchors_boot() -> None:
    scans = [StoredScan("s1", DOOR_TIME, 440 * 10**9, "boot-a"),
             StoredScan("s2", DOOR_TIME, 440 * 10**9, "boot-b"),
             StoredScan("s3", "2026-11-25T09:00:00+00:00", 560 * 10**9, "boot-a")]
    assert retime_stored(scans, ANCHOR) == {
        "s1": Timing("2026-11-28T08:59:00.250+00:00", DOOR_TIME, Corrected.RECONSTRUCTED),
        "s3": Timing("2026-11-28T09:01:00.250+00:00", "2026-11-25T09:00:00+00:00",
                     Corrected.RECONSTRUCTED)}
    assert retime_stored([], ANCHOR) == {}


def test_an_anchor_is_stored_to_the_microsecond_in_utc() -> None:
    assert anchor_row(ANCHOR) == ("boot-a", 500 * 10**9, "2026-11-28T09:00:00.250000+00:00")
    assert anchor_from_row(*anchor_row(ANCHOR)) == ANCHOR


def test_the_time_sources_are_the_protocols() -> None:
    assert set(TIME_SOURCES) == {"system", "server", "unknown"}
    assert {c.value for c in Corrected} == {"reconstructed", "unknown"}


_MONO = st.integers(0, 10**9 * 86400 * 400)  # boots of up to 400 days
_TIMES = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                      timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7)),
                                                 timezone(timedelta(hours=5, minutes=30))]))


@given(_TIMES, _MONO, _MONO, st.sampled_from([None, *TIME_SOURCES]),
       st.sampled_from(["boot-a", "boot-b"]), st.booleans())
def test_retime_against_its_rule(server_time, anchor_mono, scan_mono, source, boot,
                                 anchored) -> None:
    anchor = ClockAnchor("boot-a", anchor_mono, server_time) if anchored else None
    timing = retime(DOOR_TIME, source, scan_mono, boot, anchor)
    if source != "unknown":
        assert timing == Timing(DOOR_TIME)
    elif anchor is None or boot != "boot-a":
        assert timing == Timing(DOOR_TIME, None, Corrected.UNKNOWN)
    else:
        assert timing.time_corrected is Corrected.RECONSTRUCTED
        assert timing.device_scanned_at == DOOR_TIME
        made = datetime.fromisoformat(timing.scanned_at)
        assert made.utcoffset() == timedelta(0) and timing.scanned_at.endswith("+00:00")
        exact = server_time - timedelta(microseconds=(anchor_mono - scan_mono) / 1000)
        assert timedelta(0) <= exact - made < timedelta(milliseconds=1)  # cut to the ms
        # The order of monotonic times is the order of the times reckoned.
        later = retime(DOOR_TIME, source, scan_mono + 10**6, boot, anchor)
        assert datetime.fromisoformat(later.scanned_at) > made


@given(_TIMES, _MONO, st.lists(st.tuples(_MONO, st.sampled_from(["boot-a", "boot-b"])),
                               max_size=6))
def test_a_stored_anchor_re_times_as_the_live_one_does(server_time, anchor_mono,
                                                       scans) -> None:
    live = ClockAnchor("boot-a", anchor_mono, server_time)
    stored = anchor_from_row(*anchor_row(live))
    rows = [StoredScan(f"s{i}", DOOR_TIME, mono, boot) for i, (mono, boot) in enumerate(scans)]
    at_once = {r.scan_id: retime(r.scanned_at, "unknown", r.monotonic_ns, r.boot_id, live)
               for r in rows}
    later = retime_stored(rows, stored)
    assert later == {i: t for i, t in at_once.items()
                     if t.time_corrected is Corrected.RECONSTRUCTED}
    assert set(later) == {r.scan_id for r in rows if r.boot_id == "boot-a"}
