"""Which GPUs may take a job now, beyond our own bookkeeping.

Three things outside this scheduler can keep a free slot from being used:
another user's work (busy by ``--max-gpu-memory``, ``--max-gpu-util``,
``--only-idle``), another scheduler holding the GPU's lock, and a GPU that
NVML reports lost. The `GpuGate` finds out and tells the `GpuPool`
(`set_available`, `observe`, `mark_lost`); the pool stays pure.

When it looks is the scheduler's decision, made for it here: `refresh` does
nothing until `poll` seconds have passed since the last look, and the loop
only calls it while a job is waiting, so an idle scheduler never touches the
hardware.

"Processes this scheduler did not start" are told apart by process group and
session: every job runs in a session of its own whose id is the job's first
pid, so any process on a GPU whose group or session is one of our jobs' is
ours, grandchildren included. (A process that made itself a new session, or
one in another PID namespace, counts as somebody else's: the safe side.)
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    # A run that watches no hardware (``--gpus 0``, locks only) never loads
    # the device and busy modules: they are here for the hints alone.
    from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

    from ..model.devices import Backend, Device, GpuProcess, Usage
    from ..model.jobs import Job
    from ..placement.pool import GpuPool
    from .busy import Limits
    from .locks import GpuLocks

    #: Our process groups: job leader pid -> its job (also while what an
    #: ended job left behind is being ended: still ours).
    Leaders = Mapping[int, Job]


def owner(pid: int, leaders: Leaders) -> Tuple[bool, Optional[int]]:
    """(counts, our leader pid or None) for a process seen on a GPU.

    A pid we cannot see in our ``/proc`` belongs to another container or pid
    namespace, the common case in Docker: it is somebody else's, never ours,
    and never taken for ended (the driver has just listed it). So every
    process the driver lists counts; only its owner is in question.
    """
    try:
        group = os.getpgid(pid)
        session = os.getsid(pid)
    except (ProcessLookupError, PermissionError):
        return True, None
    for leader in (group, session):
        if leader in leaders:
            return True, leader
    return True, None


def split_processes(
    processes: Optional[Sequence[GpuProcess]], leaders: Leaders,
    owner_of: Callable[[int, Leaders], Tuple[bool, Optional[int]]] = owner,
) -> Tuple[Optional[List[GpuProcess]], Dict[int, int]]:
    """The others' processes, and the bytes each of our leaders' groups holds."""
    if processes is None:
        return None, {}
    others: List[GpuProcess] = []
    ours: Dict[int, int] = {}
    for process in processes:
        exists, leader = owner_of(process.pid, leaders)
        if not exists:
            continue
        if leader is None:
            others.append(process)
        else:
            ours[leader] = ours.get(leader, 0) + (process.used or 0)
    return others, ours


class GpuGate:
    """Busy checks, locks and lost GPUs for the GPUs of one pool."""

    def __init__(
        self, *, devices: Mapping[str, Device], backend: Optional[Backend],
        limits: Optional[Limits], locks: Optional[GpuLocks], lock_keys: Mapping[str, str],
        poll: float, say: Callable[[str, int], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        #: pool id -> the hardware behind it, where known
        self.devices = dict(devices)
        self.backend = backend
        self.limits = limits
        self.locks = locks
        self.lock_keys = dict(lock_keys)
        self.poll = poll
        #: how the gate tells the user something: (text, level), see `model.events.Notice`
        self.say = say
        #: a look has begun and its sample is not judged yet: the watched GPUs
        #: take no new job until it is (it may find one busy or lost)
        self.looking = False
        self._clock = clock
        self._last: Optional[float] = None
        self._busy: Dict[str, str] = {}
        self._locked: Dict[str, str] = {}
        #: what was said already, so that each news is said once
        self._said: Set[Tuple[str, ...]] = set()

    @property
    def watches_hardware(self) -> bool:
        return self.backend is not None and bool(self.devices)

    def next_check(self) -> float:
        """When a look at the GPUs could next tell something new."""
        return (self._last if self._last is not None else self._clock()) + self.poll

    def expire(self) -> None:
        """Let the next `refresh` look again (the poll interval has passed)."""
        self._last = None

    def due(self) -> bool:
        """Whether a look at the GPUs is due (`poll` seconds since the last)."""
        return self._last is None or self._clock() - self._last >= self.poll

    def begin_look(self, pool: GpuPool) -> Optional[List[Device]]:
        """Start a look: locks are tried again when a job is placed, and the
        devices to sample are returned (None when no hardware is watched).
        The sample itself is taken off the engine's thread (`gpus.sampler`)
        and handed to `sampled`."""
        self._last = self._clock()
        self._locked.clear()
        devices = None
        if self.watches_hardware:
            devices = [self.devices[gpu_id] for gpu_id in pool.ids
                       if gpu_id in self.devices and pool.gpu(gpu_id).lost is None]
        # Only a look that will be answered holds starts back (all lost: none).
        self.looking = bool(devices)
        for gpu_id in pool.ids:
            self._apply(pool, gpu_id)
        return devices

    def sampled(self, pool: GpuPool, samples: Mapping[str, Usage], leaders: Leaders) -> None:
        """Judge a sample of the GPUs (taken by `begin_look`'s devices)."""
        from ..model.devices import Usage

        self.looking = False
        for gpu_id in pool.ids:
            device = self.devices.get(gpu_id)
            if device is None or pool.gpu(gpu_id).lost is not None:
                continue
            usage = samples.get(device.id, Usage())
            if usage.lost is not None:
                pool.mark_lost(gpu_id, usage.lost)
                self._busy.pop(gpu_id, None)
                self.say(f"gpu {gpu_id} is lost ({usage.lost}); no more jobs go there", 1)
                continue
            self._judge(pool, gpu_id, usage, leaders)
        for gpu_id in pool.ids:
            self._apply(pool, gpu_id)

    def refresh(self, pool: GpuPool, leaders: Leaders) -> None:
        """A look at the GPUs now, on this thread, if one is due (for tests
        and for ``--list-gpus``; the engine samples off its thread)."""
        if not self.due():
            return
        devices = self.begin_look(pool)
        if devices is not None:
            assert self.backend is not None
            self.sampled(pool, self.backend.sample(devices), leaders)

    def job_ended(self, pool: GpuPool) -> None:
        """One of our jobs ended: a GPU another scheduler held may be ours to try."""
        if self._locked:
            self._locked.clear()
            for gpu_id in pool.ids:
                self._apply(pool, gpu_id)

    # --- locks ----------------------------------------------------------------

    def lock(self, pool: GpuPool, gpus: Iterable[str]) -> Optional[str]:
        """Take the locks of `gpus`; None when all are ours, else the GPU that
        another scheduler holds (now marked unavailable). On failure the locks
        taken by this call are given back: a job starts with all its GPUs or
        holds none of them."""
        if self.locks is None:
            return None
        taken: List[str] = []
        for gpu_id in gpus:
            key = self.lock_keys.get(gpu_id, gpu_id)
            if self.locks.held(key):
                continue
            problem = self.locks.acquire(key)
            if problem is None:
                taken.append(key)
                self._said.discard(("locked", gpu_id))  # say it again if it is taken again
                continue
            for key_taken in taken:
                self.locks.release(key_taken)
            self._locked[gpu_id] = f"in use by another scheduler ({problem})"
            if ("locked", gpu_id) not in self._said:
                self._said.add(("locked", gpu_id))
                self._info(f"gpu {gpu_id}: {problem}; waiting for it")
            self._apply(pool, gpu_id)
            return gpu_id
        return None

    def unlock_unused(self, pool: GpuPool, gpus: Iterable[str]) -> None:
        """Give back the locks of those `gpus` where no job of ours runs any more."""
        if self.locks is None:
            return
        for gpu_id in gpus:
            key = self.lock_keys.get(gpu_id, gpu_id)
            # Two ids may name one GPU (its index and its UUID): same lock.
            if all(pool.running_on(i) == 0 for i in pool.ids if self.lock_keys.get(i, i) == key):
                self.locks.release(key)

    def close(self) -> None:
        if self.locks is not None:
            self.locks.close()

    # --- the hardware -----------------------------------------------------------

    def _judge(self, pool: GpuPool, gpu_id: str, usage: Usage, leaders: Leaders) -> None:
        from .busy import excess_memory, judge, others_memory

        others, ours = split_processes(usage.processes, leaders)
        slots = pool.gpu(gpu_id)
        # Our jobs' overruns: what each uses beyond the memory booked for it.
        held: List[Tuple[int, int]] = []
        for leader, used in ours.items():
            job = leaders.get(leader)
            booked = job.mem if job is not None and job.mem is not None and slots.memory else 0
            held.append((used, booked or 0))
        outside = others_memory(usage, others, sum(ours.values())) or 0
        pool.observe(gpu_id, usage.mem_total, outside + excess_memory(held))
        if self.limits is None or not self.limits.active:
            return
        verdict = judge(usage, others, sum(ours.values()), slots.running, self.limits)
        for check in verdict.unmeasured:
            if ("unmeasured", gpu_id, check) not in self._said:
                self._said.add(("unmeasured", gpu_id, check))
                self._info(f"gpu {gpu_id}: its {check} cannot be measured here; "
                                  "that busy check is not made on it")
        was = self._busy.get(gpu_id)
        if verdict.busy is not None:
            self._busy[gpu_id] = verdict.busy
            if was is None:
                self._info(f"gpu {gpu_id} is busy: {verdict.busy}; waiting for it")
        elif was is not None:
            del self._busy[gpu_id]
            self._info(f"gpu {gpu_id} is no longer busy")

    def _info(self, text: str) -> None:
        self.say(text, 0)

    def _apply(self, pool: GpuPool, gpu_id: str) -> None:
        reason = self._busy.get(gpu_id) or self._locked.get(gpu_id)
        if reason is None and self.looking and gpu_id in self.devices:
            reason = "being looked at"
        pool.set_available(gpu_id, reason)
