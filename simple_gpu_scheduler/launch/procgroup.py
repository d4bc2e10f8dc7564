"""What ended jobs left behind, until it is gone.

A job ends when its shell exits; anything it started and did not wait for
(``cmd &``, a DataLoader worker) is still in its process group and may still
hold GPU memory. Those processes get SIGTERM at once, SIGKILL after the
grace, and the job's GPUs go back only once the group is empty. They are not
our children, so no exit event comes for them: `check` looks, and the loop
calls it every `POLL` seconds while there are any, never otherwise.
"""

from __future__ import annotations

import signal

from .local import group_alive, send_group

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Dict, Iterator, List, Optional, Tuple

    from ..model.jobs import Job

#: Seconds between looks while some group has processes left.
POLL = 0.05
#: After SIGKILL, how long to wait before giving the GPUs back anyway (a
#: zombie that nobody reaps stays "alive" for ever).
GIVE_UP = 1.0


class Leftover:
    """One ended job's process group, still on the job's GPUs."""

    __slots__ = ("pgid", "job", "gpus", "kill_at", "killed_at")

    def __init__(self, pgid: int, job: Job, gpus: Tuple[str, ...], kill_at: float) -> None:
        self.pgid = pgid
        self.job = job
        self.gpus = gpus
        self.kill_at = kill_at
        self.killed_at: Optional[float] = None


class Leftovers:
    """The process groups of ended jobs that are not empty yet."""

    def __init__(self) -> None:
        self._groups: Dict[int, Leftover] = {}

    def __bool__(self) -> bool:
        return bool(self._groups)

    def __iter__(self) -> Iterator[Leftover]:
        return iter(list(self._groups.values()))

    def add(self, pgid: int, job: Job, gpus: Tuple[str, ...], now: float, grace: float,
            kill_now: bool = False) -> None:
        """Terminate what is left of `job` (SIGKILL at once if `kill_now`)."""
        left = Leftover(pgid, job, gpus, now + grace)
        self._groups[pgid] = left
        if kill_now:
            self._kill(left, now)
        else:
            send_group(pgid, signal.SIGTERM)

    def check(self, now: float) -> Tuple[List[Leftover], List[Leftover]]:
        """Escalate what is due; returns the groups now gone, and those given
        up on (still there a while after SIGKILL). Both are forgotten."""
        gone: List[Leftover] = []
        given_up: List[Leftover] = []
        for left in list(self._groups.values()):
            if not group_alive(left.pgid):
                gone.append(self._groups.pop(left.pgid))
            elif left.killed_at is None and now >= left.kill_at:
                self._kill(left, now)
            elif left.killed_at is not None and now - left.killed_at >= GIVE_UP:
                given_up.append(self._groups.pop(left.pgid))
        return gone, given_up

    def kill_all(self, now: float) -> None:
        for left in self._groups.values():
            self._kill(left, now)

    def _kill(self, left: Leftover, now: float) -> None:
        send_group(left.pgid, signal.SIGKILL)
        if left.killed_at is None:
            left.killed_at = now
