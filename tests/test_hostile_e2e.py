"""Hostile badges end to end: real ``checkin server``, ``checkin sync`` and ``checkin door``.

A door is shown printed badges that are not attendee codes — control bytes, all
256 byte values, invalid UTF-8, bidi overrides and NUL, very long text, a
near-maximum binary payload — between badges of valid registrants. Whatever the
bytes, every scan the door printed must reach the server exactly once (the
hostile ones too: the door records them as a safe, bounded rendering that fits
the protocol), no scan may stay waiting or be quarantined, the registrants
behind the hostile badges are admitted and counted, and the server keeps taking
writes afterwards. Issue 10: one such badge used to block a door's uploads for
good (the server closed every push of the batch holding it with 1002) and a
link ending at the wrong moment could leave the server unable to write.

Timeouts here are limits on waiting, never assertions on speed.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import segno

from checkin.badges import Look
from tests.system import Device, Server, read_only_query, wait_for

#: Frames are 640x480 and a badge's QR code must fit on them with its quiet zone.
FRAME_ROOM = 440
#: Waiting for uploads: generous, for a loaded machine; a limit, not a speed requirement.
UPLOADED = 90.0

_RNG = random.Random(20261010)
_PRINTABLE = [chr(c) for c in range(0x20, 0x7F)] + ["é", "ß", "€", "日", "😀"]

#: (what it is, the payload the badge carries). The badge writer encodes bytes in byte
#: mode as they are and non-ASCII text as UTF-8, at error correction level M.
HOSTILE: list[tuple[str, str | bytes]] = [
    ("150 bytes of 0x01", b"\x01" * 150),
    ("all 256 byte values", bytes(range(256))),
    ("invalid UTF-8", b"\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x28\x8c\xbc\xff\xfe\xc0\xaf" * 8),
    ("a lone surrogate as CESU-8", "A1\ud800B2".encode("utf-8", "surrogatepass")),
    ("bidi overrides and NUL", "REG-01\u202egnp.exe\u202c\x00\u2066x\u2069\x00"),
    # Printable text (str.isprintable() holds for every character), some of it outside
    # ASCII: 1,500 characters, about 1,550 bytes of UTF-8, a version-33 QR code.
    ("1,500 printable characters", "".join(_RNG.choice(_PRINTABLE) for _ in range(1500))),
    ("1 KiB of arbitrary bytes", _RNG.randbytes(1024)),
    # The most a QR code holds is 2,953 bytes (version 40, level L), but the badge writer
    # uses level M, whose version 40 holds 2,331 bytes: the maximum that it can print. It
    # decodes from a rendered frame with 2-pixel modules (see fitting_look).
    ("a maximum binary payload (2,331 bytes)", _RNG.randbytes(2331)),
]


def fitting_look(payload: str | bytes) -> Look:
    """A look whose QR code fits the frame: large codes get smaller modules.

    ``Device.door`` renders every badge with 6-pixel modules, which puts anything
    above about version 12 (a few hundred bytes) partly outside the 640x480 frame,
    where no decoder can read it. Checked by hand: versions up to 40 decode from a
    rendered frame with 2- or 3-pixel modules.
    """
    data = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) \
        and not payload.isascii() else payload
    qr = segno.make(data, error="m", micro=False,
                    mode="byte" if isinstance(data, bytes) else None)
    side = qr.symbol_size(border=4)[0]
    return Look(module_px=max(1, min(6, FRAME_ROOM // side)))


REGISTRANTS = [f"REG-{i:02d}" for i in range(1, len(HOSTILE) + 2)]
LATE = ["LATE-1", "LATE-2"]


def event(server: Server) -> None:
    server.api("PUT", "/api/sessions/s1", {"name": "Keynote", "validate_registrants": True},
               expect=201)
    server.api("POST", "/api/attendees", [{"code": c, "name": f"Attendee {c}"}
                                          for c in [*REGISTRANTS, *LATE]],
               expect=200)
    for code in [*REGISTRANTS, *LATE]:
        server.api("PUT", f"/api/sessions/s1/registrants/{code}", expect=201)


class BadgeDevice(Device):
    """A :class:`Device` whose badges all fit the frame (see :func:`fitting_look`)."""

    def door(self, *payloads: str | bytes | None, **_: Any) -> list[dict[str, Any]]:
        return super().door(*payloads, look=lambda p: Look() if p is None else fitting_look(p),
                            timeout=300)


def badge_device(tmp_path: Path, server: Server, devices: list) -> BadgeDevice:
    # Every badge shown is a different payload: a long debounce window makes each one
    # scan exactly once, however long a loaded machine takes to decode its two frames.
    device = BadgeDevice(tmp_path / "door-1", "door-1", server.sync_url, debounce_seconds=600)
    device.token_file.write_text(server.provision("door-1", "s1") + "\n")
    devices.append(device)
    device.start_sync()
    wait_for(lambda: len(device.registrants()) == len(REGISTRANTS) + 2, timeout=UPLOADED,
             what="the first snapshot")
    return device


def interleaved() -> list[str | bytes]:
    """A valid registrant, a hostile badge, a registrant, ... and a registrant last."""
    shown: list[str | bytes] = []
    for registrant, (_, hostile) in zip(REGISTRANTS, HOSTILE, strict=False):
        shown += [registrant, hostile]
    return [*shown, REGISTRANTS[-1]]


def check_decisions(decisions: list[dict[str, Any]]) -> None:
    """Every registrant admitted in order; between two of them, the hostile badge's one
    scan, rejected as ``invalid_code`` and recorded."""
    assert all(d["recorded"] for d in decisions), decisions
    valid = [d for d in decisions if d["code"] in REGISTRANTS]
    assert [d["code"] for d in valid] == REGISTRANTS, [d["code"] for d in decisions]
    assert {(d["decision"], d["reason"]) for d in valid} == {("admitted", "registered")}
    segments: list[list[dict[str, Any]]] = [[]]
    for decision in decisions:
        if decision["code"] in REGISTRANTS:
            segments.append([])
        else:
            segments[-1].append(decision)
    between = segments[1:-1]
    assert segments[0] == [] and segments[-1] == []
    for (what, _), scans in zip(HOSTILE, between, strict=True):
        assert len(scans) == 1, f"the door read the badge of {what} {len(scans)} times"
        assert {(s["decision"], s["reason"]) for s in scans} == {("rejected", "invalid_code")}, (
            what, scans)


def server_scans(server: Server) -> list[tuple]:
    return read_only_query(server.store_location,
                           "SELECT scan_id, device_id, code, decision, reason, scanned_at "
                           "FROM scans")


def assert_every_scan_at_the_server_once(server: Server, device: Device,
                                         decisions: list[dict[str, Any]]) -> None:
    printed = [d["scan_id"] for d in decisions]
    assert len(printed) == len(set(printed))
    # A timeout here is a wedged queue (the defect of issue 10), not slowness.
    try:
        wait_for(lambda: device.waiting() == 0, timeout=UPLOADED, what="every scan uploaded")
    except AssertionError as timeout:
        raise AssertionError(
            f"{timeout}: upload states {Counter(device.upload_states().values())}\n"
            f"sync log tail:\n{_tail(device.log())}\n"
            f"server log tail:\n{_tail(server.log.read_text())}") from None
    states = device.upload_states()
    assert {states[s] for s in printed} == {"stored"}, {
        s: states[s] for s in printed if states[s] != "stored"}
    rows = server_scans(server)
    stored = Counter(row[0] for row in rows)
    assert sorted(stored.elements()) == sorted(printed)  # each once, and nothing else
    by_id = {row[0]: row for row in rows}
    for decision in decisions:
        assert by_id[decision["scan_id"]][1:] == (
            "door-1", decision["code"], decision["decision"], decision["reason"],
            decision["at"]), decision


def _tail(log: str, lines: int = 25) -> str:
    kept = [line for line in log.splitlines() if "DEBUG websockets" not in line]
    return "\n".join(line[:300] for line in kept[-lines:])


def assert_the_server_still_writes(server: Server, device: BadgeDevice,
                                   decisions: list[dict[str, Any]]) -> None:
    """API writes succeed, and a later scan at the door still reaches the server."""
    server.api("POST", "/api/attendees", [{"code": "LATE-3", "name": "Late"}], expect=200)
    server.api("PUT", "/api/sessions/s1/registrants/LATE-3", expect=201)
    server.api("PUT", "/api/sessions/s2", {"name": "Afterwards", "validate_registrants": False},
               expect=201)
    server.api("PUT", "/api/sessions/s1", {"name": "Keynote (renamed)",
                                           "validate_registrants": True}, expect=200)
    wait_for(lambda: "LATE-3" in device.registrants(), timeout=UPLOADED,
             what="a registrant added after the hostile badges")
    later = device.door("LATE-3")
    assert [(d["code"], d["reason"]) for d in later] == [("LATE-3", "registered")]
    assert_every_scan_at_the_server_once(server, device, decisions + later)
    everything = decisions + later
    attendance = server.attendance("s1")
    assert attendance["admitted"] == len({d["code"] for d in everything
                                          if d["decision"] == "admitted"})
    assert attendance["rejected"] == sum(d["decision"] == "rejected" for d in everything)
    log = server.log.read_text()
    assert "within a transaction" not in log, _tail(log, 60)
    assert "Traceback" not in log, _tail(log, 60)  # e.g. a reconnect crashing the endpoint
    assert server.process is not None and server.process.poll() is None


def test_hostile_badges_scanned_offline_all_reach_the_server_once(tmp_path, server,
                                                                  devices) -> None:
    event(server)
    device = badge_device(tmp_path, server, devices)
    assert device.stop_sync() == 0  # the door scans while its daemon is down

    decisions = device.door(*interleaved())
    check_decisions(decisions)
    assert device.waiting() == len(decisions)

    device.start_sync()  # the whole backlog, hostile scans among the admissions
    assert_every_scan_at_the_server_once(server, device, decisions)
    assert_the_server_still_writes(server, device, decisions)


def test_hostile_badges_scanned_while_the_daemon_pushes_all_reach_the_server_once(
        tmp_path, server, devices) -> None:
    event(server)
    device = badge_device(tmp_path, server, devices)  # its daemon runs throughout

    first = device.door(*interleaved())
    check_decisions(first)
    # Again, with the daemon still pushing (or stuck behind) the first run's scans.
    again = device.door(REGISTRANTS[0], HOSTILE[0][1], LATE[0], HOSTILE[-1][1], LATE[1])
    known = {*REGISTRANTS, *LATE}
    assert [d["reason"] for d in again if d["code"] in known] == [
        "reentry", "registered", "registered"]
    assert {d["reason"] for d in again if d["code"] not in known} == {"invalid_code"}
    decisions = first + again
    assert_every_scan_at_the_server_once(server, device, decisions)
    assert device.sync is not None and device.sync.poll() is None
    assert_the_server_still_writes(server, device, decisions)
