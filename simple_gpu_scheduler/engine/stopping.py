"""Stopping: the run's stop levels, and the one ladder that ends an attempt.

The run has three stop levels, each reached once and in order: `DRAIN` (start
nothing new, let running jobs finish), `TERMINATE` (end the running jobs),
`KILL` (SIGKILL now). The first Ctrl-C, SIGTERM or SIGHUP drains, the next
two climb; ``--halt-on-failure`` jumps to drain (soon) or terminate (now).

Ending one attempt is always the same ladder, whoever asks (the terminate
level, ``--timeout``, ``--halt-on-failure now``, what a finished job left
behind, and later a ``kill`` request): ``terminate()`` now, ``kill()`` after
the grace, and if something of it is still there `GIVE_UP` seconds after
SIGKILL (a zombie nobody reaps stays "alive" for ever), the engine is told so
it can give the GPUs back anyway. A rung is cancelled as soon as the attempt
is cleared.
"""

from __future__ import annotations

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

    from ..launch.base import Execution

DRAIN, TERMINATE, KILL = 1, 2, 3
#: After SIGKILL, how long to wait before giving the GPUs back anyway.
GIVE_UP = 1.0


class Rung:
    """One attempt on its way down the ladder."""

    __slots__ = ("execution", "timer", "killed")

    def __init__(self, execution: Execution) -> None:
        self.execution = execution
        self.timer: Any = None
        self.killed = False

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class StopLadder:
    """TERM, `grace` seconds, KILL, `GIVE_UP` seconds, then `give_up(execution)`."""

    def __init__(
        self, call_at: Callable[[float, Callable[[], None]], Any], clock: Callable[[], float],
        grace: float, give_up: Callable[[Execution], None],
    ) -> None:
        self._call_at = call_at
        self._clock = clock
        self.grace = grace
        self._give_up = give_up

    def stop(self, execution: Execution, rung: Optional[Rung] = None, now: bool = False) -> Rung:
        """Start ending `execution` (or hurry a `rung` already under way): SIGTERM
        and SIGKILL after the grace, or SIGKILL at once with `now`."""
        if rung is None:
            rung = Rung(execution)
            if not now:
                execution.terminate()
                rung.timer = self._call_at(self._clock() + self.grace, lambda: self._kill(rung))
                return rung
        if now and not rung.killed:
            rung.cancel()
            self._kill(rung)
        return rung

    def _kill(self, rung: Rung) -> None:
        rung.killed = True
        rung.execution.kill()
        rung.timer = self._call_at(
            self._clock() + GIVE_UP, lambda: self._give_up(rung.execution))
