"""A local job's processes: its process group, and what escaped it.

Every job runs in a session and process group of its own whose id is the
job shell's pid, so one ``killpg`` reaches its children and grandchildren.
Two things escape a group: a process that calls ``setsid`` (a daemonizing
tool, ``setsid cmd &``), and, after the shell exits, the zombies of its
children, which nobody reaps where init does not (containers, some VMs).

So the scheduler makes itself a child subreaper (``PR_SET_CHILD_SUBREAPER``):
orphans of our jobs are re-parented to us instead of to init. `Orphans`
finds them among our children, tells which job each came from (its process
group or session, else the ``SGS_JOB_ID`` in its environment), signals them
with their job and reaps them when they exit.

``kill(pgid, 0)`` answering EPERM means the group exists but changed uid (a
setuid program): it is alive, not gone.
"""

from __future__ import annotations

import os
import signal

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Dict, List, Optional, Set

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make orphaned descendants our children; False where the kernel says no.

    ``prctl`` through `_ctypes`, the C half of `ctypes`: the full `ctypes`
    costs 2 ms of start-up, more than anything else of ours, and one call
    with int arguments needs none of it. Should `_ctypes` ever differ, the
    documented `ctypes` is the fallback.
    """
    try:
        import _ctypes

        class _Int(_ctypes._SimpleCData):
            _type_ = "i"

        class _Prctl(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL
            _restype_ = _Int

        handle = _ctypes.dlopen(None)  # type: ignore[arg-type]  # None: this program's
        prctl = _Prctl(_ctypes.dlsym(handle, "prctl"))
        return bool(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except Exception:
        pass
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError, ImportError):
        return False


def group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` is still there (EPERM: it is)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def send_group(pgid: int, signum: int) -> None:
    """Signal a process group that may already be gone."""
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _proc(pid: int, name: str) -> Optional[bytes]:
    """``/proc/PID/NAME``, or None if the process is gone (or hidden from us)."""
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return None


def _stat_ids(pid: int) -> Optional[tuple]:
    """(pgid, sid) of `pid` from /proc, or None if it is gone."""
    data = _proc(pid, "stat")
    if data is None:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(b")") + 2:].split()
    return int(fields[2]), int(fields[3])


#: In the environment of what is no job's (an ``--on-finish`` command and
#: what it starts, which also carry SGS_JOB_ID): never adopted as a job's.
HELPER_MARK = b"SGS_ON_FINISH=1"


#: What `_job_id_from_environ` says of a helper's process.
HELPER = -1


def _job_id_from_environ(pid: int) -> Optional[int]:
    """The SGS_JOB_ID in `pid`'s environment, `HELPER` for a helper's, or None."""
    data = _proc(pid, "environ")
    if data is None:
        return None
    items = data.split(b"\0")
    if HELPER_MARK in items:
        return HELPER
    for item in items:
        if item.startswith(b"SGS_JOB_ID="):
            try:
                return int(item[11:])
            except ValueError:
                return None
    return None


class Orphans:
    """Our children that are not job leaders: what our jobs left behind.

    `scan` looks at ``/proc/self/task/<pid>/children`` (one small read: the
    main thread starts every job, and orphans are re-parented to it), so the
    check costs microseconds per job end. Children we already had when the
    run began (the background jobs of a shell that ``exec``-ed us, a
    ``2> >(tee log)`` logger) are not ours to adopt: they are never signalled
    or reaped here.
    """

    def __init__(self) -> None:
        self._children_path = f"/proc/self/task/{os.getpid()}/children"
        #: orphan pid -> the job id (leader pid) it belongs to, or None: unknown
        self._owner: Dict[int, Optional[int]] = {}
        #: children we had before any job: somebody else's
        self._before: Set[int] = set()
        #: sessions and groups of ours and of those children: not our jobs'
        self._foreign_ids: Set[int] = set()
        self.enabled = False

    def enable(self) -> None:
        self.enabled = become_subreaper() and os.path.exists(self._children_path)
        if self.enabled:
            self._before = set(self._children())
            # Their descendants may be re-parented to us too, and are not ours
            # either: they are known by session or group, which no job shares
            # (every job starts a session of its own).
            self._foreign_ids = {os.getsid(0)}
            for pid in self._before:
                ids = _stat_ids(pid)
                if ids is not None:
                    self._foreign_ids.update(ids)

    def exempt(self, pid: int) -> None:
        """A child of ours that is no job's (an ``--on-finish`` command, in a
        session of its own): it and what it starts are never adopted."""
        self._before.add(pid)
        self._foreign_ids.add(pid)

    def job_started(self, leader: int) -> None:
        """`leader` leads a new job: if that pid was once a helper's (reused),
        it is no longer foreign. (A pid in use as a group or session id is
        never given to a new process, so no live foreign id is dropped.)"""
        self._before.discard(leader)
        self._foreign_ids.discard(leader)

    def _children(self) -> List[int]:
        data = _proc(os.getpid(), f"task/{os.getpid()}/children")
        return [int(p) for p in data.split()] if data else []

    def scan(self, leaders: Dict[int, int], job_of_pid: Dict[int, int],
             ending: Optional[int] = None) -> List[int]:
        """Reap the orphans that exited, then find new ones.

        `leaders` maps job leader pids to job ids (their pids are never
        waited for here: the launcher reaps them); `job_of_pid` is the same
        map by pgid/sid (a leader's pid is its group's and session's id).
        `ending` is the job whose leader has just exited, given only when no
        other job runs: an orphan that nothing else ties to a job was then
        re-parented by that exit, so it is that job's. Returns the pids
        adopted now. Reaping first matters: an orphan's children are re-parented to
        us before it becomes a zombie, so once it is reaped they are listed.
        """
        if not self.enabled:
            return []
        self.reap()
        adopted = []
        for pid in self._children():
            if pid in leaders or pid in self._owner or pid in self._before:
                continue
            ids = _stat_ids(pid)
            job = None
            if ids is not None:
                if ids[0] in self._foreign_ids or ids[1] in self._foreign_ids:
                    self._before.add(pid)  # a descendant of what we had before
                    continue
                job = job_of_pid.get(ids[0], job_of_pid.get(ids[1]))
            if job is None:
                job = _job_id_from_environ(pid)
                if job == HELPER:
                    self._before.add(pid)  # an --on-finish command's: not ours to end
                    continue
            self._owner[pid] = job if job is not None else ending
            adopted.append(pid)
        return adopted

    def reap(self) -> None:
        for pid in list(self._owner):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                del self._owner[pid]

    def owner_of(self, pid: int) -> Optional[int]:
        return self._owner.get(pid)

    def of(self, job_id: int) -> Set[int]:
        return {pid for pid, owner in self._owner.items() if owner == job_id}

    def signal(self, job_id: int, signum: int) -> None:
        """Signal what job `job_id` left outside its group."""
        for pid in self.of(job_id):
            self.signal_one(pid, signum)

    def signal_one(self, pid: int, signum: int) -> None:
        """The orphan's own group when it leads one (``setsid`` makes it so),
        else the orphan."""
        ids = _stat_ids(pid)
        if ids is not None and ids[0] == pid:
            send_group(pid, signum)
        else:
            send(pid, signum)

    def kill_all(self) -> None:
        """At exit: every orphan of ours is killed, whatever job it came from
        (all of them descend from our jobs; what we had before is not here)."""
        for pid in list(self._owner):
            self.signal_one(pid, signal.SIGKILL)  # its group too: what it started
