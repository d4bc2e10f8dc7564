"""The loop's timers, with a fake clock."""

from __future__ import annotations

import threading
from typing import List

from simple_gpu_scheduler.engine.timers import Timers


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_no_timer_means_block_without_timeout() -> None:
    assert Timers(Clock()).timeout() is None


def test_timers_fire_in_deadline_order_once_due() -> None:
    clock = Clock()
    timers = Timers(clock)
    fired: List[str] = []
    timers.at(105.0, lambda: fired.append("b"))
    timers.at(102.0, lambda: fired.append("a"))
    assert timers.timeout() == 2.0
    timers.fire()
    assert fired == []
    clock.now = 105.0
    timers.fire()
    assert fired == ["a", "b"]
    assert timers.timeout() is None


def test_a_cancelled_timer_never_fires_and_stops_counting() -> None:
    clock = Clock()
    timers = Timers(clock)
    fired: List[str] = []
    timer = timers.at(101.0, lambda: fired.append("x"))
    timers.at(110.0, lambda: fired.append("y"))
    timer.cancel()
    assert timers.timeout() == 10.0  # the cancelled one no longer wakes the loop
    clock.now = 200.0
    timers.fire()
    assert fired == ["y"]


def test_a_far_deadline_is_capped_to_what_a_lock_wait_accepts() -> None:
    timers = Timers(Clock())
    timers.at(1e300, lambda: None)
    timeout = timers.timeout()
    assert timeout is not None and timeout <= threading.TIMEOUT_MAX
