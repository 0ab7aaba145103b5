"""One declaration each: config sections and protocol messages are dataclasses whose
fields carry their checks; the tables the readers apply are derived from them."""

from __future__ import annotations

import dataclasses
import enum
import inspect
import json
from dataclasses import dataclass, field
from datetime import datetime

import pytest

import sync.device_end
import sync.server_end
from core.shapes import check_fields, checked, choice, fields_of, integer, member
from device.config import SCHEMA, SECTIONS, parse_config
from sync.config import ServerConfig
from sync.device_end import CacheState, DeviceAction, DeviceEnd
from sync.end import ProtocolEnd
from sync.messages import (
    DEVICE_MESSAGES,
    SERVER_MESSAGES,
    Hello,
    ScanOutcome,
    ScanResult,
    ScanResults,
    Welcome,
    encode,
    parse_server_message,
)
from sync.server_end import ServerAction, ServerEnd, ServerView


@dataclass(frozen=True, slots=True)
class Sample:
    name: str = field(metadata=checked(choice("a", "b")))
    count: int = field(default=1, metadata=checked(integer(0, 9)))
    items: list[int] = field(default_factory=list, metadata=checked(list, required=True))
    version: int = field(default=1, metadata=checked(integer(1, 5), required=True, first=True))


def test_a_table_is_derived_from_the_dataclass() -> None:
    table = fields_of(Sample)
    assert list(table) == ["version", "name", "count", "items"]  # first, then declared
    assert {key: required for key, (_check, required) in table.items()} == {
        "version": True,  # a default, but required=True
        "name": True,  # no default
        "count": False,  # a default
        "items": True,  # a default factory, but required=True
    }
    assert table["count"][0](3) == 3
    with pytest.raises(ValueError, match="an integer from 0 to 9"):
        table["count"][0](10)
    assert fields_of(Sample) is table  # derived once per class


def test_the_derived_table_checks_input_as_a_written_one_would() -> None:
    values, problems = check_fields({"name": "c", "extra": 1}, fields_of(Sample), "[s] ")
    assert values == {}
    assert problems == [
        '[s] name = "c": expected one of "a", "b"',
        "[s] extra = 1: unknown key (expected one of: version, name, count, items)",
        "[s] version is missing",
        "[s] items is missing",
    ]


def test_a_field_without_a_check_is_a_declaration_error() -> None:
    @dataclass
    class Unchecked:
        name: str

    with pytest.raises(TypeError, match=r"Unchecked\.name has no checked"):
        fields_of(Unchecked)


def test_member_returns_the_enum_member_and_names_the_values_expected() -> None:
    class Colour(enum.StrEnum):
        RED = "red"
        BLUE = "blue"

    check = member(Colour)
    assert check("blue") is Colour.BLUE
    with pytest.raises(ValueError, match=r'^one of "red", "blue"$'):
        check("green")


# -- the config file -------------------------------------------------------------


@pytest.mark.parametrize("name", list(SECTIONS))
def test_each_config_section_is_its_dataclass(name: str) -> None:
    assert list(SCHEMA[name]) == [f.name for f in dataclasses.fields(SECTIONS[name])]


def test_the_server_section_is_the_daemons_own() -> None:
    assert SECTIONS["server"] is ServerConfig


def test_defaults_come_from_the_dataclasses() -> None:
    config = parse_config({
        "device": {"id": "door-1", "data_dir": "data"},
        "camera": {"source": "picamera2"},
        "gpio": {"pin_factory": "mock", "green": 1, "red": 2, "buzzer": 3},
        "server": {"url": "wss://h/sync", "token_file": "token"},
    }, "/etc/checkin/door.toml")
    for section in (config.camera, config.scanner, config.door, config.gpio, config.server):
        for f in dataclasses.fields(section):
            if f.default is not dataclasses.MISSING:
                assert getattr(section, f.name) == f.default, f.name


# -- the protocol's messages ---------------------------------------------------


@pytest.mark.parametrize("cls", [*DEVICE_MESSAGES.values(), *SERVER_MESSAGES.values()],
                         ids=lambda cls: cls.type)
def test_each_message_checks_exactly_its_dataclass_fields(cls: type) -> None:
    assert set(fields_of(cls)) == {f.name for f in dataclasses.fields(cls)}


def test_the_version_is_checked_first_but_stays_last_among_the_required_arguments() -> None:
    assert next(iter(fields_of(Hello))) == next(iter(fields_of(Welcome))) == "v"
    assert list(inspect.signature(Hello).parameters) == [
        "device_id", "software", "session_id", "epoch", "cursor", "v", "boot_id",
        "monotonic_ns", "admissions", "allow_reentry", "hashes", "key_id"]
    # the frame keeps its order: v after the cursor, as before the fields were derived
    assert list(json.loads(encode(Hello("d", "s", None, None, 0)))) == [
        "type", "device_id", "software", "session_id", "epoch", "cursor", "v"]


def test_scan_results_carry_the_outcome_enum_and_its_word_on_the_wire() -> None:
    text = encode(ScanResults(1, [ScanResult("a", ScanOutcome.DUPLICATE)]))
    assert json.loads(text)["results"] == [  # an optional field without a value: left out
        {"scan_id": "a", "result": "duplicate"}]
    parsed = parse_server_message(text)
    assert isinstance(parsed, ScanResults)
    assert parsed.results[0].result is ScanOutcome.DUPLICATE
    assert [str(o) for o in ScanOutcome] == ["accepted", "duplicate", "refused"]


# -- the two ends --------------------------------------------------------------


def test_both_ends_share_one_queue_and_name_their_actions_apart() -> None:
    device = DeviceEnd("door-1", "t", CacheState(None, None, 0))
    server = ServerEnd(ServerView("door-1", None, "E1", 0))
    assert isinstance(device, ProtocolEnd) and isinstance(server, ProtocolEnd)
    assert not hasattr(sync.device_end, "Action") and not hasattr(sync.server_end, "Action")
    assert DeviceAction is not ServerAction
    [hello] = device.data_to_send()
    assert device.data_to_send() == []  # each frame is returned once
    now = datetime.fromisoformat("2026-11-28T10:00:00+01:00")
    server.receive(hello, now)
    [welcome] = server.data_to_send()
    assert json.loads(welcome)["server_time"] == now.isoformat()
    assert all(isinstance(a, ServerAction) for a in server.actions())
    assert server.actions() == []  # each action is returned once
