"""Reconnect backoff: equal jitter, doubling to a ceiling, a slower series for auth refusals."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync.backoff import Backoff


def make(seed: int = 1, **kwargs: float) -> Backoff:
    return Backoff(rng=random.Random(seed), **kwargs)


def ceilings(low: float, high: float, count: int) -> list[float]:
    return [min(high, low * 2**n) for n in range(count)]


def within(delay: float, ceiling: float) -> bool:
    return ceiling / 2 <= delay <= ceiling


def test_ordinary_failures_double_up_to_the_maximum() -> None:
    backoff = make()
    delays = [backoff.failure() for _ in range(12)]
    expected = ceilings(0.5, 30.0, 12)
    assert expected[:8] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    for delay, ceiling in zip(delays, expected, strict=True):
        assert within(delay, ceiling), (delay, ceiling)
    assert max(delays) <= 30.0
    assert all(within(d, 30.0) for d in delays[6:])  # stays at the maximum


def test_auth_failures_start_at_auth_minimum_and_double_to_auth_maximum() -> None:
    backoff = make()
    delays = [backoff.failure(auth=True) for _ in range(8)]
    expected = ceilings(30.0, 300.0, 8)
    assert expected == [30, 60, 120, 240, 300, 300, 300, 300]
    for delay, ceiling in zip(delays, expected, strict=True):
        assert within(delay, ceiling), (delay, ceiling)
    assert min(delays) >= 15.0  # a refused token really does slow down


def test_switching_kinds_restarts_the_series() -> None:
    backoff = make()
    for _ in range(5):
        backoff.failure()
    assert within(backoff.failure(auth=True), 30.0)  # first of the auth series
    assert within(backoff.failure(auth=True), 60.0)
    assert within(backoff.failure(), 0.5)  # back to ordinary trouble: from the start
    assert within(backoff.failure(), 1.0)
    assert within(backoff.failure(auth=True), 30.0)


def test_success_resets_the_series() -> None:
    backoff = make()
    for _ in range(6):
        backoff.failure()
    backoff.success()
    assert within(backoff.failure(), 0.5)
    assert within(backoff.failure(), 1.0)
    for _ in range(3):
        backoff.failure(auth=True)
    backoff.success()
    assert within(backoff.failure(auth=True), 30.0)


def test_the_same_seed_gives_the_same_delays_and_other_seeds_differ() -> None:
    def run(seed: int) -> list[float]:
        backoff = make(seed)
        return [backoff.failure(auth=i % 5 == 4) for i in range(10)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_jitter_spreads_doors_across_the_whole_upper_half() -> None:
    delays = [make(seed).failure() for seed in range(200)]
    assert all(within(d, 0.5) for d in delays)
    assert min(delays) < 0.3
    assert max(delays) > 0.45
    assert len(set(delays)) == len(delays)


def test_custom_limits_are_respected() -> None:
    backoff = make(minimum=1.0, maximum=5.0, auth_minimum=10.0, auth_maximum=15.0)
    assert [within(backoff.failure(), c) for c in (1, 2, 4, 5, 5)] == [True] * 5
    assert [within(backoff.failure(auth=True), c) for c in (10, 15, 15)] == [True] * 3


def test_the_delay_never_overflows_after_very_many_failures() -> None:
    backoff = make()
    for _ in range(2000):
        delay = backoff.failure()
    assert within(delay, 30.0)


@pytest.mark.parametrize("auth", [False, True])
@given(seed=st.integers(0, 2**32), kinds=st.lists(st.booleans(), max_size=30))
def test_every_delay_lies_in_the_upper_half_of_its_ceiling(
    auth: bool, seed: int, kinds: list[bool]
) -> None:
    backoff = make(seed)
    run = 0
    previous: bool | None = None
    for kind in [auth, *kinds]:
        run = run + 1 if kind == previous else 1
        previous = kind
        low, high = (30.0, 300.0) if kind else (0.5, 30.0)
        assert within(backoff.failure(auth=kind), min(high, low * 2 ** (run - 1)))
