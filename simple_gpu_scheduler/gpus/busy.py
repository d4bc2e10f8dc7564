"""Is a GPU busy with somebody else's work? The rule, as pure functions.

A usage sample (`devices.Usage`) is judged against the user's limits
(``--max-gpu-memory``, ``--max-gpu-util``, ``--only-idle``) after the caller
has split the GPU's processes into ours (started by this scheduler) and the
others'. Only the others' usage counts: our own jobs never make a GPU busy
for us.

What cannot be measured is not held against a GPU: a MIG instance has no
utilization counter, and some drivers hide the process list. The verdict
names such checks so the scheduler can say once that they are not made.
"""

from __future__ import annotations

from ..model.record import Record
from ..model.units import format_size, parse_size

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Iterable, List, Optional, Sequence, Tuple

    from ..model.devices import GpuProcess, Usage


class MemoryLimit(Record):
    """``--max-gpu-memory``: a fraction of the GPU's memory or a size in bytes."""

    __slots__ = ("fraction", "size")

    def __init__(self, fraction: Optional[float] = None, size: Optional[int] = None) -> None:
        self.fraction = fraction
        self.size = size

    def bytes_for(self, total: Optional[int]) -> Optional[int]:
        if self.size is not None:
            return self.size
        if total is None or self.fraction is None:
            return None
        return int(self.fraction * total)

    def describe(self) -> str:
        if self.size is not None:
            return format_size(self.size)
        return f"{(self.fraction or 0) * 100:g}%"


def parse_memory_limit(text: str) -> MemoryLimit:
    """``0.25`` or ``25%`` (a fraction of each GPU), or ``8GiB`` (a size).

    A bare number up to 1 is a fraction; anything with a unit, or larger, is a
    size as `units.parse_size` reads it.
    """
    stripped = text.strip()
    try:
        if stripped.endswith("%"):
            fraction = float(stripped[:-1]) / 100
        else:
            fraction = float(stripped)
            if fraction > 1:
                return MemoryLimit(size=parse_size(stripped))
    except ValueError:
        return MemoryLimit(size=parse_size(stripped))
    if not 0 <= fraction <= 1:
        raise ValueError(f"invalid memory limit {text!r}: a fraction must be between 0 and 1")
    return MemoryLimit(fraction=fraction)


class Limits(Record):
    """When another user's work makes a GPU busy."""

    __slots__ = ("memory", "util", "only_idle")

    def __init__(
        self, memory: Optional[MemoryLimit] = None, util: Optional[float] = None,
        only_idle: bool = False,
    ) -> None:
        self.memory = memory
        #: Percent of utilization above which a GPU is busy.
        self.util = util
        self.only_idle = only_idle

    @property
    def active(self) -> bool:
        return self.memory is not None or self.util is not None or self.only_idle


class Verdict(Record):
    """Whether one GPU may take a job, by the user's limits."""

    __slots__ = ("busy", "unmeasured")

    def __init__(self, busy: Optional[str] = None, unmeasured: Tuple[str, ...] = ()) -> None:
        #: Why the GPU is busy, or None when it may take a job.
        self.busy = busy
        #: Checks that could not be made on this GPU ("utilization", ...).
        self.unmeasured = unmeasured


def others_memory(usage: Usage, others: Optional[Sequence[GpuProcess]], ours: int) -> Optional[int]:
    """Bytes held by processes that are not ours.

    The device's used memory minus ours is preferred to the sum of the others'
    processes: it also counts what the process list does not show (a display
    server, a process in another container), and driver overhead with it.
    """
    if usage.mem_used is not None:
        return max(0, usage.mem_used - ours)
    if others is not None:
        return sum(p.used or 0 for p in others)
    return None


def judge(
    usage: Usage, others: Optional[Sequence[GpuProcess]], ours: int, ours_running: int,
    limits: Limits,
) -> Verdict:
    """Whether a GPU is busy by `limits`.

    `others` are the processes on it that this scheduler did not start (None
    when the list cannot be read), `ours` the bytes our processes hold, and
    `ours_running` how many of our jobs run there. Utilization is one number
    for the whole GPU, so it is only judged while none of our jobs runs there:
    with one of ours running it is at least partly ours.
    """
    unmeasured: List[str] = []
    if limits.memory is not None:
        limit = limits.memory.bytes_for(usage.mem_total)
        held = others_memory(usage, others, ours)
        if limit is None or held is None:
            unmeasured.append("memory")
        elif held > limit:
            return Verdict(
                f"{format_size(held)} of its memory is used by other processes "
                f"(--max-gpu-memory {limits.memory.describe()})")
    if limits.util is not None and ours_running == 0:
        if usage.util is None:
            unmeasured.append("utilization")
        elif usage.util > limits.util:
            return Verdict(f"{usage.util}% utilization (--max-gpu-util {limits.util:g})")
    if limits.only_idle:
        if others is None:
            unmeasured.append("processes")
        elif others:
            return Verdict(f"other processes are on it (pid {_pids(others)}; --only-idle)")
    return Verdict(None, tuple(unmeasured))


def _pids(processes: Iterable[GpuProcess], limit: int = 5) -> str:
    pids = sorted({p.pid for p in processes})
    shown = ", ".join(str(p) for p in pids[:limit])
    return shown + (f" and {len(pids) - limit} more" if len(pids) > limit else "")


def excess_memory(held: Iterable[Tuple[int, int]]) -> int:
    """How far our jobs on a GPU exceed what they declared: sum of (used - declared)
    over (used, declared) pairs, counting only overruns. A job that has not
    allocated yet still has its whole declaration reserved by the pool."""
    return sum(max(0, used - declared) for used, declared in held)
