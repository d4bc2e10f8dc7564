"""The queue of jobs waiting to start, in the order they will start.

Jobs go by priority (lower first), and within one priority in the order they
were queued; ``add --front``, ``move`` and a retry change that order. Every
change costs the same with 100,000 jobs queued as with none: each priority
has a doubly linked list whose nodes are the jobs' records (`prev`/`next`),
and the priorities in use are kept sorted (there are few). Nothing here
sorts or walks the whole queue, except iterating it, which the dispatcher
stops as soon as a job is placed.
"""

from __future__ import annotations

from bisect import insort

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Dict, Iterator, List, Optional

    from .state import JobRecord


class _Level:
    """The jobs of one priority, as a doubly linked list of records."""

    __slots__ = ("head", "tail", "size")

    def __init__(self) -> None:
        self.head: Optional[JobRecord] = None
        self.tail: Optional[JobRecord] = None
        self.size = 0


class JobQueue:
    def __init__(self) -> None:
        self._levels: Dict[int, _Level] = {}
        #: the priorities that have a level, ascending
        self._priorities: List[int] = []
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __contains__(self, record: JobRecord) -> bool:
        return record.level is not None

    def __iter__(self) -> Iterator[JobRecord]:
        """The queued records in start order. The queue may change while this
        runs only at the record last yielded (it may be removed)."""
        for priority in list(self._priorities):
            level = self._levels.get(priority)
            node = level.head if level is not None else None
            while node is not None:
                following = node.next
                yield node
                node = following

    def first(self) -> Optional[JobRecord]:
        for priority in self._priorities:
            return self._levels[priority].head
        return None

    # --- changes ------------------------------------------------------------------

    def push(self, record: JobRecord, front: bool = False) -> None:
        """Queue `record` last (or first, with `front`) among its priority."""
        level = self._level(record.job.priority)
        if front:
            self._link(level, record, None, level.head)
        else:
            self._link(level, record, level.tail, None)

    def insert_before(self, record: JobRecord, other: JobRecord) -> None:
        """Queue `record` just before the queued `other` (taking its priority)."""
        assert other.level is not None and record is not other
        record.job.priority = other.job.priority
        self._link(other.level, record, other.prev, other)

    def remove(self, record: JobRecord) -> None:
        level = record.level
        if level is None:
            return
        if record.prev is None:
            level.head = record.next
        else:
            record.prev.next = record.next
        if record.next is None:
            level.tail = record.prev
        else:
            record.next.prev = record.prev
        record.prev = record.next = record.level = None
        level.size -= 1
        self._size -= 1
        if not level.size:
            priority = record.job.priority
            del self._levels[priority]
            self._priorities.remove(priority)  # a handful of priorities: cheap

    # --- the list -----------------------------------------------------------------

    def _level(self, priority: int) -> _Level:
        level = self._levels.get(priority)
        if level is None:
            level = self._levels[priority] = _Level()
            insort(self._priorities, priority)
        return level

    def _link(self, level: _Level, record: JobRecord, prev: Optional[JobRecord],
              next: Optional[JobRecord]) -> None:
        assert record.level is None, "queued twice"
        record.level = level
        record.prev = prev
        record.next = next
        if prev is None:
            level.head = record
        else:
            prev.next = record
        if next is None:
            level.tail = record
        else:
            next.prev = record
        level.size += 1
        self._size += 1
