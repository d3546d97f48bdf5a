"""The per-key token bucket behind ``http.rate_limit_per_second``, on a clock the test moves."""

from __future__ import annotations

import pytest

from flow8_streams.http.common import RateLimit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_of_the_rate_then_one_per_period_and_keys_apart() -> None:
    clock = Clock()
    limit = RateLimit(4, clock)
    assert [limit.take("a") for _ in range(4)] == [None] * 4  # a burst as large as the rate
    assert limit.take("a") == pytest.approx(0.25)  # the wait until the next token
    assert limit.take("b") is None  # another key's bucket is full
    clock.now += 0.25
    assert limit.take("a") is None
    assert limit.take("a") == pytest.approx(0.25)
    clock.now += 60
    assert [limit.take("a") for _ in range(5)] == [None] * 4 + [pytest.approx(0.25)]  # capped at the burst


def test_a_rate_below_one_per_second_still_allows_one_request() -> None:
    clock = Clock()
    limit = RateLimit(0.2, clock)
    assert limit.take("a") is None
    assert limit.take("a") == pytest.approx(5.0)
    clock.now += 5
    assert limit.take("a") is None
