"""Hostile QR payloads through the real decoder, the real decision and the real store.

Every payload here is rendered as a real QR code, read back by the pipeline
decoder (which must hand back the raw bytes) and scanned by a door: in-process
(one :class:`Door` on a real SQLite store and gpiozero mock pins) and as a
``checkin door`` subprocess. Whatever the bytes, the door must not raise, must
reject anything that is not a code as ``invalid_code``, must record every scan
before it signals, and must print exactly one safe JSON line per scan.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import segno
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from checkin.badges import render_badge
from core.codes import MAX_CODE_LENGTH, MAX_RECORDED_CODE, printable
from core.rules import Reason, SessionRules
from device.config import DECODERS, parse_config
from device.door import Door
from device.indicators.signals import Indicators
from device.scanner.decoders import make_decoder
from device.scanner.payload import CODE_QUERY_KEYS, MAX_PAYLOAD_BYTES, parse_payload
from sync.device_store import STORE_FILE
from tests.conftest import CHECKIN, fill_store, read_scans

SESSION = SessionRules("hall-a", validate_registrants=True)
ATTENDEES = ("A1", "B2")
REGISTRANTS = ("A1",)
#: What a QR code can hold at most is 2,953 bytes (version 40, level L).
QR_MAX_BYTES = 2900
#: (green, red, buzzer) the moment a rejection for an unknown or invalid code is shown.
RED_AND_BUZZER = (False, True, True)

# -- QR frames ---------------------------------------------------------------


def qr_frame(data: bytes) -> np.ndarray:
    """A 640x480 grey camera frame of *data* as a byte-mode QR code, as large as fits.

    ``render_badge`` lets segno pick the mode (a ``str`` may become Latin-1 or
    Shift-JIS) at level M with 6-pixel modules, which cannot show a 2,900-byte
    code in 640x480; this always encodes the exact bytes, at level L, with
    modules down to 2 pixels.
    """
    qr = segno.make(data, mode="byte", error="l", micro=False)
    modules = np.pad(np.array(qr.matrix, dtype=np.uint8), 4)  # with the quiet zone
    px = max(2, min(6, 470 // modules.shape[0]))
    code = np.kron(1 - modules, np.ones((px, px), dtype=np.uint8)) * 255
    frame = np.full((480, 640), 90, dtype=np.uint8)
    top, left = (480 - code.shape[0]) // 2, (640 - code.shape[1]) // 2
    frame[top : top + code.shape[0], left : left + code.shape[1]] = code
    return frame


# -- hostile payloads --------------------------------------------------------

CODES = st.sampled_from([*ATTENDEES, "ZZ-404"]) | st.from_regex(
    r"[A-Za-z0-9._~:@+=/-]{1,130}", fullmatch=True)
CONTROLS = st.text(st.characters(categories=["Cc", "Cf", "Zl", "Zp", "Co"]), min_size=1,
                   max_size=4)
ANSI = st.sampled_from([
    "\x1b[2J\x1b[H", "\x1bc", "\x1b[31m", "\x1b]0;pwned\x07", "\x1b[?1049h", "\x9b2J",
    "\x1b[1A\x1b[2K", "\x1bP+q\x1b\\",
])
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=80)  # lone surrogates too


def _splice(code: str, bad: str, at: int) -> str:
    at %= len(code) + 1
    return code[:at] + bad + code[at:]


def _fill(size: int, pattern: bytes) -> bytes:
    return (pattern * (size // len(pattern) + 1))[:size]


def _url(scheme: str, host: str, path: str, query: list[tuple[str, str]], frag: str) -> str:
    return f"{scheme}://{host}/{path}?" + "&".join(f"{k}={v}" for k, v in query) + frag


URLS = st.builds(
    _url,
    st.sampled_from(["http", "https", "HTTPS", "hTtP"]),
    st.sampled_from(["tickets.example", "[::1", "x.example:99999", "ü.example", "\uff03.x"]),
    st.text(max_size=30) | CODES,
    st.lists(st.tuples(st.sampled_from([*CODE_QUERY_KEYS, "", "x", "code[]", "%63ode"]),
                       st.text(max_size=20) | CODES | ANSI), max_size=4),
    st.sampled_from(["", "#", "#code=A1", "%", "%zz"]),
)
#: Boundary and hand-picked payloads, as bytes.
EDGES = st.sampled_from([
    b"a" * (MAX_CODE_LENGTH + 1),
    b"x" * (MAX_PAYLOAD_BYTES + 1),
    b"A1" + b" " * (MAX_PAYLOAD_BYTES - 1),  # a good code, padded one byte too long
    ("https://tickets.example/t/" + "a" * (MAX_CODE_LENGTH + 1)).encode(),
    ("https://tickets.example/?code=" + "b" * (MAX_CODE_LENGTH + 1)).encode(),
    b"\xef\xbb\xbfA1",  # a byte-order mark before a registrant's code
    b"A1\x00", b"\x00A1", b"\x00" * 40,
    b"A1\xed\xa0\x80",  # a UTF-8-encoded lone surrogate
    b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\xff\xfe" + "A1".encode("utf-16-le"),
    "A1\u202e".encode(), "\u2066A1\u2069".encode(), "A\u200d1".encode(),
    b'{"decision":"admitted"}', b"A1\n{\"reason\": \"registered\"}",
    b"https://tickets.example/t/..%2F..%2Fetc%2Fpasswd",
    b"https://tickets.example/t/A1%00", b"https://tickets.example/?code=A1%0d%0a",
])
HOSTILE_TEXT = st.one_of(
    ANY_TEXT,
    st.builds(_splice, CODES, CONTROLS | ANSI, st.integers(0, 200)),
    URLS,
    st.builds(lambda a, b: a + b, ANSI, CODES),
)
#: Hostile payloads of every kind, as the raw bytes a QR code could hold.
HOSTILE = st.one_of(
    st.binary(min_size=1, max_size=600),
    HOSTILE_TEXT.map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.builds(_fill, st.integers(MAX_PAYLOAD_BYTES - 4, QR_MAX_BYTES),
              st.binary(min_size=1, max_size=12)),
    EDGES,
).filter(bool)


# -- an in-process door ------------------------------------------------------


@dataclass
class Scan:
    line: str
    record: dict
    levels: tuple[bool, bool, bool]
    reason: Reason
    #: The code was admitted by an earlier scan of this door (then it is a re-entry).
    admitted_before: bool = False


class DoorRig:
    """One door, kept across Hypothesis examples: a real store, mock pins, the pipeline decoder.

    Each frame arrives an hour (simulated) after the last, so the debouncer never
    hides a repeated payload.
    """

    def __init__(self, root: Path) -> None:
        data_dir = root / "data"
        fill_store(data_dir, SESSION, ATTENDEES, REGISTRANTS)
        config = parse_config({
            "device": {"id": "hostile", "data_dir": str(data_dir)},
            "camera": {"source": "picamera2"},
            "gpio": {"pin_factory": "mock", "green": 17, "red": 27, "buzzer": 22},
        }, root / "door.toml")
        self.decoder = make_decoder("pipeline")
        self.out = io.StringIO()
        self.indicators = Indicators.from_config(config.gpio)
        self.door = Door(config, self.decoder, self.indicators, self.out)
        self.runner = asyncio.Runner()
        self.db = sqlite3.connect(f"{(data_dir / STORE_FILE).as_uri()}?mode=ro", uri=True)
        self.db.row_factory = sqlite3.Row
        self.clock = 0

    def levels(self) -> tuple[bool, bool, bool]:
        ind = self.indicators
        return (ind.green.is_lit, ind.red.is_lit, ind.buzzer.is_active)

    def frame(self, payloads: list[bytes]) -> tuple[bool, str]:
        """Hand the door one decoded frame; return whether it decided and what it printed."""
        self.clock += 3600 * 10**9
        start = len(self.out.getvalue())
        decided = self.runner.run(self.door._handle_frame(self.clock, payloads))
        return decided, self.out.getvalue()[start:]

    def scan(self, raw: bytes) -> Scan:
        """One frame with one payload: the line printed, the row stored, the pins at once."""
        self.clock += 3600 * 10**9
        start = len(self.out.getvalue())

        async def scan() -> tuple[bool, tuple[bool, bool, bool]]:
            decided = await self.door._handle_frame(self.clock, [raw])
            return decided, self.levels()  # no await in between: the first step of the pattern

        code = parse_payload(raw).code
        admitted_before = code is not None and bool(self.db.execute(
            "SELECT 1 FROM scans WHERE code = ? AND decision = 'admitted'", (code,)).fetchall())
        decided, levels = self.runner.run(scan())
        assert decided
        line = self.out.getvalue()[start:]
        scan_id = json.loads(line)["scan_id"]
        rows = self.db.execute("SELECT * FROM scans WHERE scan_id = ?", (scan_id,)).fetchall()
        assert len(rows) == 1, f"scan {scan_id} is not in the store exactly once"
        return Scan(line, dict(rows[0]), levels, Reason(json.loads(line)["reason"]),
                    admitted_before)

    def close(self) -> None:
        self.db.close()
        self.runner.run(self._shut())
        self.runner.close()

    async def _shut(self) -> None:
        await self.indicators.idle()
        self.indicators.close()
        if self.door.store is not None:
            await self.door.store.close()


@pytest.fixture(scope="module")
def rig(tmp_path_factory) -> DoorRig:
    door = DoorRig(tmp_path_factory.mktemp("hostile-door"))
    yield door
    door.close()


def expected_reason(raw: bytes) -> Reason:
    payload = parse_payload(raw)
    if not payload.valid:
        return Reason.INVALID_CODE
    if payload.code not in ATTENDEES:
        return Reason.UNKNOWN_CODE
    return Reason.NOT_REGISTERED if payload.code not in REGISTRANTS else Reason.REGISTERED


def check_scan(raw: bytes, scan: Scan) -> None:
    """The door's contract for one scan of *raw*."""
    line = scan.line
    assert line.endswith("\n") and line.count("\n") == 1, repr(line)
    assert line[:-1].isprintable(), f"raw control or format characters in {line!r}"
    assert len(line.splitlines()) == 1
    out = json.loads(line)
    record = scan.record
    assert out["recorded"] is True
    assert (out["seq"], out["code"], out["decision"], out["reason"], out["session_id"]) == (
        record["seq"], record["code"], record["decision"], record["reason"], record["session_id"])
    assert out["session_id"] == SESSION.session_id
    payload = parse_payload(raw)
    want = expected_reason(raw)
    if want is Reason.REGISTERED and scan.admitted_before:  # the same registrant again
        want = Reason.REENTRY
    assert scan.reason is want, (raw, out)
    assert (out["decision"] == "admitted") == (payload.code in REGISTRANTS)
    if payload.valid:
        assert out["code"] == payload.code and "detail" not in out
    else:
        assert out["code"] == printable(raw)
        assert out["detail"] == payload.error
        assert len(out["code"]) <= MAX_RECORDED_CODE  # bounded, whatever the payload's size
    if scan.reason in (Reason.INVALID_CODE, Reason.UNKNOWN_CODE):
        assert scan.levels == RED_AND_BUZZER


# -- through real QR images ----------------------------------------------------

IMAGE_SETTINGS = settings(max_examples=80, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])


@IMAGE_SETTINGS
@given(HOSTILE)
def test_hostile_bytes_round_trip_through_a_qr_code_and_are_rejected(rig, raw: bytes) -> None:
    decoded = rig.decoder.decode(qr_frame(raw))
    assert decoded == [raw]  # the decoder hands back the raw bytes, not a guessed text
    check_scan(raw, rig.scan(decoded[0]))


@IMAGE_SETTINGS
@given(HOSTILE.filter(lambda raw: len(raw) <= 160))
def test_hostile_bytes_on_a_phone_screen_round_trip(rig, raw: bytes) -> None:
    # segno picks kanji mode for bytes that look like Shift-JIS and may then change them:
    # see test_render_badge_keeps_bytes_that_only_look_like_shift_jis.
    assume(segno.make(raw, error="m", micro=False).mode != "kanji")
    frame = np.asarray(render_badge(raw, seed=len(raw)))
    decoded = rig.decoder.decode(frame)
    assert decoded == [raw]
    check_scan(raw, rig.scan(decoded[0]))


@settings(max_examples=60, deadline=None)
@given(st.text(st.characters(codec="utf-8"), min_size=1, max_size=40))
def test_text_shown_by_render_badge_decodes_to_bytes_segno_chose(rig, text: str) -> None:
    # segno encodes a str as Latin-1 when it can, else UTF-8, without an ECI marker: the
    # door sees those bytes, not the text. (Kanji mode: see the two tests after this one.)
    assume(segno.make(text, error="m", micro=False).mode != "kanji")
    decoded = rig.decoder.decode(np.asarray(render_badge(text)))
    candidates = set()
    for encoding in ("latin-1", "shift_jis", "utf-8"):
        with contextlib.suppress(UnicodeEncodeError):
            candidates.add(text.encode(encoding))
    assert len(decoded) == 1 and decoded[0] in candidates, (text, decoded)
    check_scan(decoded[0], rig.scan(decoded[0]))


@pytest.mark.parametrize("payload", [b"\x82\x00", b"\xe1\x00\x82\x00", b"\x90 ", "\x820\x81@"])
def test_render_badge_keeps_bytes_that_only_look_like_shift_jis(payload: bytes | str) -> None:
    # text that is not ASCII is shown as its UTF-8 bytes
    raw = payload.encode("utf-8") if isinstance(payload, str) else payload
    assert make_decoder("pipeline").decode(np.asarray(render_badge(payload))) == [raw]


def test_render_badge_keeps_real_shift_jis_and_plain_bytes() -> None:
    decode = make_decoder("pipeline").decode
    for raw in ("日本".encode("shift_jis"), b"\xe0\x00", b"\x00\xffgarbage\x1b"):
        assert decode(np.asarray(render_badge(raw))) == [raw]
    assert decode(np.asarray(render_badge("日本"))) == ["日本".encode()]  # text goes as UTF-8
    assert decode(np.asarray(render_badge("café"))) == ["café".encode()]
    assert decode(np.asarray(render_badge("ĉu"))) == ["ĉu".encode()]


def test_the_largest_payloads_a_qr_code_holds_round_trip(rig) -> None:
    for size in (MAX_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES + 1, 2331, QR_MAX_BYTES, 2953):
        raw = _fill(size, bytes(range(256)))
        assert rig.decoder.decode(qr_frame(raw)) == [raw], size
        scan = rig.scan(raw)
        check_scan(raw, scan)
        assert scan.reason is Reason.INVALID_CODE
    with pytest.raises(segno.DataOverflowError):  # the next byte does not fit any QR code
        qr_frame(b"x" * 2954)


def test_an_empty_qr_code_is_not_a_scan(rig) -> None:
    # zxing-cpp (first in the pipeline) reports nothing for an empty code: not a scan.
    assert rig.decoder.decode(qr_frame(b"")) == []
    # ZBar reports it as an empty payload: a scan, rejected as invalid.
    decided, printed = rig.frame([b""])
    assert decided
    assert [json.loads(line)["reason"] for line in printed.splitlines()] == ["invalid_code"]


def test_two_hostile_codes_in_one_frame_are_two_recorded_rejections(rig) -> None:
    left, right = qr_frame(b"\x1b[2J\x00"), qr_frame("\u202eA1".encode())
    frame = np.full((480, 640), 90, dtype=np.uint8)
    frame[:, :320] = left[:, 160:480]
    frame[:, 320:] = right[:, 160:480]
    decoded = rig.decoder.decode(frame)
    assert sorted(decoded) == sorted([b"\x1b[2J\x00", "\u202eA1".encode()])
    decided, printed = rig.frame(decoded)
    assert decided
    lines = [json.loads(line) for line in printed.splitlines()]
    assert [line["reason"] for line in lines] == ["invalid_code", "invalid_code"]
    ids = [line["scan_id"] for line in lines]
    stored = rig.db.execute(
        f"SELECT scan_id FROM scans WHERE scan_id IN ({', '.join('?' * len(ids))})", ids)
    assert sorted(row[0] for row in stored) == sorted(ids)


# -- straight to the door, without images: many more examples ----------------------


@settings(max_examples=400, deadline=None)
@given(HOSTILE | st.binary(max_size=64))
def test_any_payload_is_decided_recorded_and_printed_safely(rig, raw: bytes) -> None:
    if not raw:  # a decoder never reports an empty payload, but the door must cope
        assert rig.runner.run(rig.door.handle_payload(raw)) is Reason.INVALID_CODE
        return
    check_scan(raw, rig.scan(raw))


@settings(max_examples=300, deadline=None)
@given(HOSTILE_TEXT)
def test_hostile_text_is_decided_recorded_and_printed_safely(rig, text: str) -> None:
    raw = text.encode("utf-8", "surrogatepass")
    if raw:
        check_scan(raw, rig.scan(raw))


def test_an_invalid_code_plays_the_whole_red_and_buzzer_pattern(tmp_path) -> None:
    fill_store(tmp_path / "data", SESSION, ATTENDEES, REGISTRANTS)
    config = parse_config({
        "device": {"id": "hostile", "data_dir": str(tmp_path / "data")},
        "camera": {"source": "picamera2"},
        "gpio": {"pin_factory": "mock", "green": 17, "red": 27, "buzzer": 22},
    }, tmp_path / "door.toml")
    indicators = Indicators.from_config(config.gpio)
    door = Door(config, make_decoder("pipeline"), indicators, io.StringIO())
    decoded = door.decoder.decode(qr_frame(b"\x1b[2J\x1b[H\x00"))
    assert decoded == [b"\x1b[2J\x1b[H\x00"]

    def played(device) -> list[bool]:
        """The levels a pin went through, repeats dropped (it starts low)."""
        levels: list[bool] = []
        for state in device.pin.states:
            if not levels or levels[-1] != bool(state.state):
                levels.append(bool(state.state))
        return levels

    async def scan() -> tuple[Reason, list[list[bool]]]:
        try:
            reason = await door.handle_payload(decoded[0])
            await indicators.idle()  # the whole pattern, about 0.7 s
            return reason, [played(d) for d in (indicators.green, indicators.red,
                                                 indicators.buzzer)]
        finally:
            indicators.close()
            await door.store.close()

    reason, (green, red, buzzer) = asyncio.run(scan())
    assert reason is Reason.INVALID_CODE
    assert red == [False, True, False, True, False, True, False, True, False]  # 4 fast blinks
    assert buzzer == [False, True, False, True, False, True, False]  # three short beeps
    assert green == [False]
    assert len(read_scans(tmp_path / "data")) == 1


@pytest.mark.parametrize("decoder", DECODERS)
def test_every_decoder_hands_back_the_raw_bytes(decoder: str) -> None:
    read = make_decoder(decoder).decode
    for raw in NASTY.values():
        if decoder == "pyzbar" and len(raw) > 2000:
            continue  # ZBar does not read version-40 codes at two pixels a module
        assert read(qr_frame(raw)) == [raw], (decoder, raw[:40])


# -- a real door process -------------------------------------------------------

#: A dozen nasty badges, by file name (the door reads them in name order).
NASTY: dict[str, bytes] = {
    "00-ansi-clear-screen": b"\x1b[2J\x1b[H\x1b]0;door hacked\x07A1",
    "01-nul-bytes": b"A1\x00\x00\x00",
    "02-2900-bytes": _fill(QR_MAX_BYTES, b"A1-overflow-"),
    "03-invalid-utf8": b"A1\xff\xfe\xc0\xaf\xed\xa0\x80",
    "04-rtl-override": "\u202e1A\u202c".encode(),
    "05-path-traversal": b"https://tickets.example/t/..%2F..%2Fetc%2Fpasswd",
    "06-json-injection": b'{"decision":"admitted"}',
    "07-fake-json-line": b'A1\n{"scan_id": "fake", "decision": "admitted", '
                         b'"reason": "registered", "code": "A1"}\n',
    "08-bell-and-backspaces": b"A1\x07\x08\x08\x08\x08B2",
    "09-zero-width-joiner": "A\u200d1".encode(),
    "10-c1-controls": "A1\u0085\u009b2J".encode(),
    "11-line-separator": "A1\u2028B2".encode(),
}


def test_a_door_process_rejects_and_records_every_hostile_badge(tmp_path, make_config,
                                                                subprocess_env) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for name, raw in NASTY.items():
        Image.fromarray(qr_frame(raw), "L").save(folder / f"{name}.png")
    config = make_config(f"images:{folder}")
    fill_store(tmp_path / "data", SESSION, ATTENDEES, REGISTRANTS)

    done = subprocess.run([*CHECKIN, "door", "--config", str(config), "--exit-when-done"],
                          capture_output=True, text=True, env=subprocess_env, timeout=120)

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "\x1b" not in done.stderr and "\x00" not in done.stderr  # no log injection
    assert done.stdout.endswith("\n")
    raw_lines = done.stdout[:-1].split("\n")
    assert len(raw_lines) == len(NASTY), done.stdout
    lines = []
    for text, (name, raw) in zip(raw_lines, NASTY.items(), strict=True):
        assert text.isprintable(), (name, text)
        line = json.loads(text)
        lines.append(line)
        payload = parse_payload(raw)
        assert line["decision"] == "rejected", (name, line)
        assert line["recorded"] is True
        assert line["session_id"] == SESSION.session_id
        if name == "05-path-traversal":  # well-formed, just nobody's code
            assert (line["code"], line["reason"]) == ("../../etc/passwd", "unknown_code")
        else:
            assert (line["code"], line["reason"]) == (printable(raw), "invalid_code"), name
            assert line["detail"] == payload.error
    scans = read_scans(tmp_path / "data")
    assert [s["scan_id"] for s in scans] == [line["scan_id"] for line in lines]
    assert [(s["seq"], s["code"], s["decision"], s["reason"]) for s in scans] == [
        (line["seq"], line["code"], line["decision"], line["reason"]) for line in lines]
    assert {s["upload_state"] for s in scans} == {"waiting"}
