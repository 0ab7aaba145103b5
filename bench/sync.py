"""Sync: how fresh the doors' lists are, initial sync, draining a backlog, load, memory.

Every figure is taken against a real ``checkin server`` subprocess on 127.0.0.1, each in
a module of its own:

* :mod:`bench.freshness`: an organizer's change until it is in one real door's cache, and
  in the last of many simulated doors', against the peers' polling;
* :mod:`bench.initial_sync`: a real ``checkin sync`` from process start until its store
  holds the session and every registrant;
* :mod:`bench.drain`: a real ``checkin sync`` from process start until a backlog of waiting
  scans is at the server;
* :mod:`bench.load`: hundreds of simulated doors each pushing one scan a second;
* memory, here: peak RSS (VmHWM) of the sync daemon in the initial sync and the drain, and
  of the server under the load.

What they stand on (the server's and the door's stores filled through their own methods,
the daemon supervised as systemd would) is :mod:`bench.fixtures`.
"""

from __future__ import annotations

from bench import drain, freshness, initial_sync, load
from bench.report import Row


def run(quick: bool) -> list[Row]:
    rows, fresh_daemon = freshness.measure(quick)
    synced, sync_daemon = initial_sync.measure(quick)
    drained, drain_daemon = drain.measure(quick)
    loaded, server_peak = load.measure(quick)
    rows += synced + drained + loaded
    n_sync, n_drain, n_doors = (5000, 2000, 20) if quick else (100_000, 50_000, 500)
    sync_peak, drain_peak = sync_daemon.peak_rss_mb(), drain_daemon.peak_rss_mb()
    crashes = sum(len(d.crashes) for d in (fresh_daemon, sync_daemon, drain_daemon))
    rows += [
        Row(f"sync daemon peak RSS, initial sync of {n_sync:,}", sync_peak, None, "", "MB",
            "< 80 MB", sync_peak < 80),
        Row(f"sync daemon peak RSS, draining {n_drain:,} scans", drain_peak, None, "", "MB",
            "< 80 MB", drain_peak < 80),
        Row(f"server peak RSS, {n_doors} doors pushing scans", server_peak, None, "", "MB", "",
            None),
        Row("sync daemon crashes (each restarted after 2 s)",
            crashes, None, "", "crashes", "none", crashes == 0),
    ]
    return rows
