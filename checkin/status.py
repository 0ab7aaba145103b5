"""``checkin status``: what a door device is doing, from its store.

Reads the shared store only (never the network), so it answers the same with
the server down, and tells a live link from the stale flag of a daemon that
died: the daemon refreshes its state every ``status_seconds``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from datetime import datetime
from typing import TextIO

from core.clock import boot_id, monotonic_ns, wall_now
from core.database import StoreError
from core.timesource import TimeSource, door_time, synchronized
from device.config import DeviceConfig
from sync.device_store import STORE_FILE
from sync.store import DeviceStatus, SyncStore


async def show_status(config: DeviceConfig, out: TextIO, *, as_json: bool = False) -> int:
    """Print the device's status; return the exit status (1 if there is no store)."""
    path = config.data_dir / STORE_FILE
    if not path.exists():
        print(f"checkin status: no store at {path}: neither the door nor the sync daemon has "
              "run with this config yet", file=sys.stderr)
        return 1
    try:
        store = await SyncStore.open(config.data_dir)
    except StoreError as exc:
        print(f"checkin status: {exc}", file=sys.stderr)
        return 1
    try:
        status = await store.status()
    finally:
        await store.close()
    stale_after = 3 * (config.server.status_seconds if config.server else 15.0)
    link = link_state(status, wall_now(), stale_after)
    source = time_source(status)
    if as_json:
        out.write(json.dumps({"device_id": config.device_id, **asdict(status), "link": link,
                              "time_source": source.value}) + "\n")
    else:
        out.write(render(config.device_id, status, link, wall_now(), source))
    return 0


def link_state(status: DeviceStatus, now: datetime, stale_after: float) -> str:
    """``connected``, ``disconnected`` or ``unknown`` (the daemon's flag is stale)."""
    if not status.connected:
        return "disconnected"
    heard = _age(status.updated_at, now)
    return "connected" if heard is not None and heard <= stale_after else "unknown"


def time_source(status: DeviceStatus) -> TimeSource:
    """Where the door would take its time from now (the same reading as the door's)."""
    source, _now = door_time(synchronized(), status.clock_anchor, wall_now(), monotonic_ns(),
                             boot_id())
    return source


def time_text(source: TimeSource, offset_s: float | None) -> str:
    """The time source the door would use now, and how far this device's clock was off
    the server's at the daemon's last welcome."""
    what = {TimeSource.SYSTEM: "the system clock, synchronised",
            TimeSource.SERVER: "the server's, carried since the last sync (the system clock "
                               "is not synchronised)",
            TimeSource.UNKNOWN: "the system clock is not synchronised and the server not "
                                "reached since boot: session windows follow [door] "
                                "unknown_time"}[source]
    if offset_s is None:
        offset = "offset from the server: not measured yet"
    else:
        direction = "ahead of" if offset_s > 0 else "behind"
        offset = (f"this clock {_duration(abs(offset_s))} {direction} the server's at the "
                  "last welcome" if abs(offset_s) >= 0.05 else
                  "this clock on the server's at the last welcome")
    return f"{source.value} ({what}; {offset})"


def revoked_text(s: DeviceStatus) -> str:
    """What a revocation left on this device (the scans a technician can still recover)."""
    return (f"{s.scans_waiting} scan(s) kept for recovery (revoked at {s.revoked_at}: "
            "checkin recover uploads them under a new unit's token)")


def render(device_id: str, s: DeviceStatus, link: str, now: datetime,
           source: TimeSource = TimeSource.SYSTEM) -> str:
    """The human-readable status, one fact per line."""
    if s.session_id is None:
        session = "none (no registrant list synced yet: the door answers not_ready)"
    else:
        rule = "on" if s.validate_registrants else "off"
        session = f"{s.session_id} {json.dumps(s.session_name)} (Validate Registrants {rule})"
    if link == "connected":
        link_text = "connected"
    elif link == "unknown":
        link_text = f"unknown (sync daemon not heard from since {_when(s.updated_at, now)})"
    else:
        link_text = "disconnected" + (f": {s.last_error}" if s.last_error else "")
    lines = [
        ("device", device_id),
        ("session", session),
        ("inside", inside(s)),
        ("registrants cached", f"{s.registrants} (attendees {s.attendees})"),
        ("cursor", f"{s.cursor} (server epoch {s.epoch or 'none yet'})"),
        ("link", link_text),
        ("server", server_text(s, link)),
        ("last sync", _when(s.last_sync_at, now)),
        ("scans waiting", str(s.scans_waiting)),
        ("scans quarantined", str(s.scans_quarantined)),
        ("scans stored", str(s.scans_stored)),
        ("last frame", _when(s.last_frame_at, now)),
        ("time", time_text(source, s.clock_offset_s)),
    ]
    if s.revoked_at is not None:
        lines.insert(1, ("revoked", revoked_text(s)))
    return "".join(f"{key + ':':<20}{value}\n" for key, value in lines)


def server_text(s: DeviceStatus, link: str) -> str:
    """The server the daemon is connected to, or tried last (``[server] url`` may list
    several: the daemon moves to the next when one fails)."""
    if s.server_url is None:
        return "none tried yet"
    return s.server_url if link == "connected" else f"{s.server_url} (last tried)"


def inside(s: DeviceStatus) -> str:
    """How many people the door counts inside its session, against the capacity."""
    if s.session_id is None:
        return "-"
    if s.capacity is None:
        return f"{s.inside} (no capacity set)"
    full = " (full: newcomers are refused)" if s.inside >= s.capacity else ""
    return f"{s.inside} of capacity {s.capacity}{full}"


def _age(stamp: str | None, now: datetime) -> float | None:
    if not stamp:
        return None
    try:
        return (now - datetime.fromisoformat(stamp)).total_seconds()
    except (ValueError, TypeError):
        return None


def _when(stamp: str | None, now: datetime) -> str:
    age = _age(stamp, now)
    if stamp is None or age is None:
        return "never"
    return f"{stamp} ({_ago(age)})"


def _duration(seconds: float) -> str:
    """*seconds* (at least 0) said in the largest unit that fits, e.g. ``3.0 d``."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit} ({seconds:.1f} s)"
    return f"{seconds:.1f} s"


def _ago(seconds: float) -> str:
    if seconds < 0:
        return "in the future: check the clock"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"
