"""A short chaos run in the suite: every kind of fault once, against the real system, with
two sessions of two doors each (one with a capacity, one with an exit door), checking the
cross-door invariants after every trial.

The full run (``make chaos``: 60 randomised trials) is in tests/chaos.py.
"""

from __future__ import annotations

import asyncio
import io

from tests.chaos import FAULTS, run


def test_nothing_is_lost_or_duplicated_under_every_kind_of_fault(tmp_path) -> None:
    log = io.StringIO()
    figures = asyncio.run(run(tmp_path, trials=len(FAULTS) + 2, doors=4, seed=20261128,
                              log=log, every_fault=True))
    for fault in FAULTS:
        assert f": {fault}" in log.getvalue()
    assert figures["trials"] == len(FAULTS) + 2 and figures["kills"] >= 3
    assert figures["scans"] > 20  # the doors kept scanning through it all
    assert figures["lost"] == 0
    assert figures["duplicated"] == 0
    assert figures["not stored or quarantined"] == 0
    assert figures["caches differing from the server"] == 0
    # The doors of each session agreed with the server and each other after every trial.
    assert figures["cross-door checks"] == figures["trials"]
    assert figures["cross-door invariant violations"] == 0, log.getvalue()
    assert figures["exits"] > 0
    assert figures["registrant changes"] > 0
    assert figures["flap resets"] > 0
    # No transaction left open by a link cut at the wrong moment: the server writes after
    # every trial (checked there, before a later kill-server trial could heal it) and at
    # the end.
    assert figures["API write failures after trials"] == 0, log.getvalue()
    assert figures["api writes after"] == "ok"
