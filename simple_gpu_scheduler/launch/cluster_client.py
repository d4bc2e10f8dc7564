"""What runs on a Ray cluster for a driver that joined through Ray Client
(``ray://``): the run's mailbox actor, and the task of one job attempt that
posts to it.

Ray Client runs no streaming tasks (ray-project/ray#43357), and a plain
task's result comes back only when it ends. So the task runs the same
attempt as on a streaming driver (`cluster_node.run_job`, the same items in
the same order) and posts each item to the mailbox, one `Mailbox.put` at a
time, each waited for: the items of one task arrive in order, and once the
task has ended, all it said is there. The driver's pump takes what has
arrived every few milliseconds (`cluster_feed.MailboxFeed`).

Back-pressure: a `put` waits while the mailbox holds `hold` items of its
task that the driver has not taken (a slow reader downstream of the
scheduler), so the task waits, and the job with it on its full pipe, as on
one machine.

Nobody watching: when the driver goes (the scheduler killed, its machine
gone), Ray Client ends its session after a grace period (30 s by default),
and the mailbox goes with it. A task notices at its next post, or, if its
job is silent, at its next look every `cluster_feed.TICK` seconds (the
``("tick",)`` items `run_job` gives for it); either fails, and then the
attempt's generator is closed, which ends the job's tree through its keeper
(`cluster_node.run_job`).

Standard library and Ray only, and nothing else of our package but
`cluster_node`: this module, too, goes to the nodes by value.
"""

from __future__ import annotations

import asyncio

from .cluster_node import run_job

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Tuple

#: Seconds a task's look at the mailbox may take before it counts as gone.
ALIVE_WAIT = 60.0


class Mailbox:
    """The run's mailbox: items posted by tasks, by token, until the driver
    takes them. An async actor: a waiting `put` or `take` holds no thread."""

    def __init__(self, hold: int) -> None:
        self.hold = hold
        self.items: Dict[str, List[Tuple[Any, ...]]] = {}
        # Made in the actor's event loop (on Python 3.9 an Event binds the loop
        # that is current when it is made).
        self._arrived: Optional[asyncio.Event] = None
        self._room: Optional[asyncio.Event] = None

    def _events(self) -> Tuple[asyncio.Event, asyncio.Event]:
        if self._arrived is None or self._room is None:
            self._arrived, self._room = asyncio.Event(), asyncio.Event()
        return self._arrived, self._room

    async def put(self, token: str, item: Tuple[Any, ...]) -> None:
        """One item of the task `token`, once fewer than `hold` of its items
        wait for the driver. (One event loop: nothing runs between a check
        and what follows it, up to the next ``await``.)"""
        arrived, room = self._events()
        while len(self.items.get(token, ())) >= self.hold:
            room.clear()
            await room.wait()
        self.items.setdefault(token, []).append(item)
        arrived.set()

    async def take(self, timeout: float) -> Dict[str, List[Tuple[Any, ...]]]:
        """Everything posted and not taken yet, by token; if nothing is,
        what arrives within `timeout` seconds."""
        arrived, room = self._events()
        if not self.items and timeout > 0:
            arrived.clear()
            try:
                await asyncio.wait_for(arrived.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        items, self.items = self.items, {}
        room.set()
        return items

    async def ready(self) -> bool:
        return True


def post_job(spec: Dict[str, Any], keeper_source: str, mailbox: Any) -> None:
    """One attempt of one job (`cluster_node.run_job`), its items posted to
    `mailbox` under the attempt's token."""
    import ray

    token = spec["token"]
    items = run_job(spec, keeper_source)
    try:
        for item in items:
            if item[0] == "tick":
                ray.get(mailbox.ready.remote(), timeout=ALIVE_WAIT)
            else:
                ray.get(mailbox.put.remote(token, item))
    finally:
        # On any error here (the mailbox gone, a cancel that interrupted a
        # post): the attempt's generator ends its job through its keeper.
        items.close()
