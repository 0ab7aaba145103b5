"""The staff's override button: the pure rule, the door's answer to a press, and a real
``checkin door`` pressed through its mock pin from another process (``[gpio] press_file``)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from pathlib import Path

import pytest

from checkin.harness import Device
from core.rules import Reason, SessionRules
from device.config import parse_config
from device.door import Door
from device.indicators.signals import Indicators
from device.override import PRESS_FILE_INTERVAL, Overrides, PressFile, Rejection
from device.scanner.decoders import make_decoder
from sync.device_store import Store
from tests.conftest import fill_store

SECOND = 1_000_000_000
SESSION = SessionRules("s1", validate_registrants=True)


def rejection(scan_id: str = "r-1", at_s: float = 100) -> Rejection:
    return Rejection(scan_id, "B2", "s1", Reason.NOT_REGISTERED, int(at_s * SECOND))


# -- the rule ---------------------------------------------------------------------------


def test_a_press_within_the_window_overrules_the_latest_rejection_once() -> None:
    overrides = Overrides(10 * SECOND)
    overrides.rejected(rejection())
    assert overrides.press(109 * SECOND) == rejection()
    assert overrides.press(109 * SECOND) is None  # each rejection once
    assert overrides.already_overridden(109 * SECOND)


def test_a_press_with_nothing_recent_does_nothing() -> None:
    overrides = Overrides(10 * SECOND)
    assert overrides.press(5 * SECOND) is None  # no rejection at all
    overrides.rejected(rejection())
    assert overrides.press(110 * SECOND + 1) is None  # too late
    assert not overrides.already_overridden(110 * SECOND + 1)


def test_only_the_latest_rejection_counts_and_a_failed_override_may_be_retried() -> None:
    overrides = Overrides(10 * SECOND)
    overrides.rejected(rejection("r-1", 100))
    overrides.rejected(rejection("r-2", 101))
    found = overrides.press(102 * SECOND)
    assert found is not None and found.scan_id == "r-2"
    overrides.undo(found)  # its scan could not be recorded
    assert overrides.press(103 * SECOND) == found


@pytest.mark.parametrize(("reason", "recorded", "session", "expected"), [
    (Reason.NOT_REGISTERED, True, "s1", True),
    (Reason.ALREADY_ADMITTED, True, "s1", True),
    (Reason.FULL, True, "s1", True),
    (Reason.UNKNOWN_CODE, True, "s1", True),
    (Reason.OUTSIDE_WINDOW, True, "s1", True),
    (Reason.INVALID_CODE, True, "s1", False),   # no code to admit
    (Reason.NOT_READY, True, None, False),      # nothing to count them in
    (Reason.NOT_REGISTERED, False, "s1", False),  # not recorded
    (Reason.REGISTERED, True, "s1", False),     # an admission
])
def test_which_rejections_may_be_overridden(reason, recorded, session, expected) -> None:
    assert Overrides.may_override(reason, recorded, session) is expected


# -- the door ---------------------------------------------------------------------------


async def make_door(tmp_path: Path, **door: object) -> tuple[Door, io.StringIO]:
    config = parse_config({
        "device": {"id": "door-o", "data_dir": str(tmp_path / "data")},
        "camera": {"source": "picamera2"},
        "door": door,
        "gpio": {"pin_factory": "mock", "green": 17, "red": 27, "buzzer": 22,
                 "override_button": 5},
    }, tmp_path / "door.toml")
    store = await Store.open(config.data_dir)
    await store.replace_cache(SESSION, ["A1", "B2"], ["A1"])
    await store.close()
    out = io.StringIO()
    return Door(config, make_decoder("zxing-cpp"), Indicators.from_config(config.gpio), out), out


def lines(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


async def test_an_override_admits_the_rejected_person_as_a_new_linked_scan(tmp_path) -> None:
    door, out = await make_door(tmp_path)
    try:
        assert await door.handle_payload(b"B2") is Reason.NOT_REGISTERED
        rejected = lines(out)[-1]
        assert await door.override(door.overrides._latest.at_ns + SECOND) is Reason.OVERRIDE
        line = lines(out)[-1]
        assert door.indicators.green.is_lit and not door.indicators.buzzer.is_active
        facts = await door.desk.facts("B2")
        scans = await door.store.scans()
    finally:
        await door._close_store()
        door.indicators.close()
    assert line["scan_id"] != rejected["scan_id"]
    assert (line["code"], line["session_id"], line["decision"], line["reason"],
            line["direction"], line["override_of"], line["recorded"]) == (
        "B2", "s1", "admitted", "override", "in", rejected["scan_id"], True)
    assert facts.inside and facts.admitted_before and facts.occupancy == 1
    assert [(s["reason"], s["override_of"]) for s in scans] == [
        ("not_registered", None), ("override", rejected["scan_id"])]
    assert door.stats.overrides == 1


async def test_a_press_with_nothing_to_override_says_so(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    door, out = await make_door(tmp_path, override_seconds=3)
    try:
        assert await door.override(10 * SECOND) is None
        assert "override button pressed with no rejection in the last 3 s: nothing to " \
               "override" in caplog.text
        await door.handle_payload(b"A1")  # an admission is nothing to override either
        assert await door.override(door.overrides.window_ns) is None
        await door.handle_payload(b"B2")
        at = door.overrides._latest.at_ns
        assert await door.override(at + 1) is Reason.OVERRIDE
        assert await door.override(at + 2) is None  # the second press on one rejection
        assert "the latest was overridden already" in caplog.text
    finally:
        await door._close_store()
        door.indicators.close()
    assert [line["reason"] for line in lines(out)] == ["registered", "not_registered",
                                                       "override"]


async def test_an_exit_door_records_exits_never_refused(tmp_path) -> None:
    config = parse_config({
        "device": {"id": "door-x", "data_dir": str(tmp_path / "data")},
        "camera": {"source": "picamera2"},
        "door": {"direction": "out", "allow_reentry": False},
        "gpio": {"pin_factory": "mock", "green": 17, "red": 27, "buzzer": 22},
    }, tmp_path / "door.toml")
    store = await Store.open(config.data_dir)
    await store.replace_cache(SessionRules("s1", True, capacity=0), ["A1", "B2"], ["A1"],
                              admissions=["A1"], exits=[])
    door = Door(config, make_decoder("zxing-cpp"), Indicators.from_config(config.gpio),
                out := io.StringIO())
    try:
        reasons = [await door.handle_payload(code) for code in (b"A1", b"A1", b"B2", b"Z9")]
        facts = await store.facts("A1")
    finally:
        await door._close_store()
        await store.close()
        door.indicators.close()
    assert reasons == [Reason.REGISTERED, Reason.REGISTERED, Reason.NOT_REGISTERED,
                       Reason.UNKNOWN_CODE]
    assert [(d["decision"], d["direction"]) for d in lines(out)] == [
        ("admitted", "out"), ("admitted", "out"), ("rejected", "out"), ("rejected", "out")]
    assert not facts.inside and facts.admitted_before and facts.occupancy == 0


async def test_a_full_session_refuses_newcomers_but_not_those_inside(tmp_path) -> None:
    door, out = await make_door(tmp_path)
    try:
        store = await Store.open(door.config.data_dir)
        await store.replace_cache(SessionRules("s1", False, capacity=1), ["A1", "B2"], [])
        await store.close()
        reasons = [await door.handle_payload(code) for code in (b"A1", b"B2", b"A1")]
    finally:
        await door._close_store()
        door.indicators.close()
    assert reasons == [Reason.REGISTERED, Reason.FULL, Reason.REENTRY]
    assert lines(out)[1]["decision"] == "rejected"


# -- a real door, pressed from another process ------------------------------------------


def test_a_door_subprocess_is_pressed_through_its_press_file(tmp_path) -> None:
    device = Device(tmp_path, "door-p", gpio={"override_button": 5, "press_file": "presses"},
                    door={"override_seconds": 30}, scanner={"debounce_seconds": 0.2})
    fill_store(device.data_dir, SESSION, ["A1", "B2"], ["A1"])
    door = device.start_door()
    press_file = tmp_path / "presses"
    try:
        assert door.stdout is not None
        device.show("B2")
        rejected = json.loads(door.stdout.readline())
        assert rejected["reason"] == "not_registered"
        with press_file.open("ab") as f:
            f.write(b"p")
        overridden = json.loads(door.stdout.readline())
        with press_file.open("ab") as f:
            f.write(b"p")  # a second press on the same rejection: nothing
        device.show("A1")
        admitted = json.loads(door.stdout.readline())
    finally:
        door.stop()
    assert (overridden["reason"], overridden["override_of"], overridden["code"]) == (
        "override", rejected["scan_id"], "B2")
    assert admitted["code"] == "A1"  # the next line: the second press printed nothing
    assert "nothing to override (the latest was overridden already)" in \
        device.door_log.read_text()


async def test_the_press_file_presses_once_per_byte_appended_after_the_start(tmp_path) -> None:
    path = tmp_path / "presses"
    path.write_bytes(b"old")  # there before the door started: not presses
    presses: list[int] = []
    press_file = PressFile(path, lambda: presses.append(1))
    press_file.start()
    try:
        with path.open("ab") as f:
            f.write(b"ppp")
        while len(presses) < 3:
            await asyncio.sleep(0.01)
        (tmp_path / "new").write_bytes(b"p")
        (tmp_path / "new").replace(path)  # replaced by a shorter file: counting starts again
        await asyncio.sleep(PRESS_FILE_INTERVAL * 3)
        with path.open("ab") as f:
            f.write(b"p")
        while len(presses) < 4:
            await asyncio.sleep(0.01)
    finally:
        await press_file.stop()
    assert len(presses) == 4
