"""Deadlines for the scheduling loop: timeouts, kill escalation, polls.

The loop blocks on its event queue for `Timers.timeout` seconds, then calls
`Timers.fire`; with no timer set it blocks without a timeout, so an idle
scheduler uses no CPU. Cancelled timers are dropped lazily.
"""

from __future__ import annotations

import _thread
import heapq
import itertools
import time

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Callable, List, Optional, Tuple


class Timer:
    """A pending action; `cancel` makes it a no-op and lets the loop forget it."""

    __slots__ = ("deadline", "action", "cancelled")

    def __init__(self, deadline: float, action: Callable[[], None]) -> None:
        self.deadline = deadline
        self.action = action
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Timers:
    """Deadlines on the monotonic clock; the loop sleeps until the earliest."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._heap: List[Tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._clock = clock

    def at(self, deadline: float, action: Callable[[], None]) -> Timer:
        timer = Timer(deadline, action)
        heapq.heappush(self._heap, (deadline, next(self._seq), timer))
        return timer

    def timeout(self) -> Optional[float]:
        """Seconds until the next live deadline, or None (block) when there is none."""
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        if not self._heap:
            return None
        # A --timeout of 1000 years is a valid "never": the wait is capped
        # at what the lock primitive accepts, and the loop simply waits again.
        return min(_thread.TIMEOUT_MAX, max(0.0, self._heap[0][0] - self._clock()))

    def fire(self) -> None:
        """Run the actions whose deadline has passed, earliest first."""
        now = self._clock()
        while self._heap and self._heap[0][0] <= now:
            _, _, timer = heapq.heappop(self._heap)
            if not timer.cancelled:
                timer.action()
