"""The keeper: one process per job attempt on a cluster node, between the Ray
worker that runs the attempt's task and the job's shell.

It exists because neither Ray nor the worker can promise that a job leaves
nothing behind. Ray kills a dying worker's direct children (a force-cancel,
the driver's exit, a node stop), but a job's background and ``setsid``
grandchildren live on under init, holding GPU memory. So the worker starts
this program (``python -I -S -c SOURCE``: it needs no file on the node, the
job's ``PYTHON*`` variables cannot change it, and without `site` it starts in
a sixth of the time: the node's ``.pth`` files are not its business), and it:

1. opens a pidfd on the worker, its parent, then forks and lets the parent
   exit: it is nobody's direct child any more, so the kill of the worker's
   children misses it;
2. becomes a child subreaper: every process the job leaves behind, however
   it detached itself (``&``, ``setsid``, a double fork), is re-parented to
   the keeper, so the job's whole tree is always the keeper's descendants;
3. starts the job as ``SHELL -c COMMAND`` in a session of its own, stdin
   ``/dev/null``, stdout and stderr the worker's pipes (its own copies go to
   ``/dev/null``, so the pipes end when the job's last process has gone);
4. reports on the status pipe, a line each: ``started KEEPER_PID JOB_PID``,
   ``exit CODE LINGERING`` (CODE as `os.waitstatus_to_exitcode`, negative
   for a signal; LINGERING 1 when processes of the job are still there),
   ``cleared`` once nothing of it is left (then it exits), or ``error TEXT``;
5. on SIGUSR1 sends SIGTERM to the whole tree and on SIGUSR2 SIGKILL: the
   scheduler's stop ladder, relayed by the node's agent actor;
6. when the worker dies, or stops reading the status pipe (the task ended:
   nobody watches the job any more), or on its own SIGTERM, SIGINT or SIGHUP,
   runs the ladder itself: SIGTERM, the grace, SIGKILL, then exits.

Only what the keeper itself is killed with (SIGKILL, the OOM killer) leaves
the job to init; nothing short of a cgroup closes that.

Standard library only, and nothing of our package: this source is sent to
the node as text.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, List, Optional, Set

PR_SET_CHILD_SUBREAPER = 36
#: Signals the job gets at their defaults, whatever the keeper did with them.
JOB_DEFAULTS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD, signal.SIGUSR1,
                signal.SIGUSR2, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: Seconds the keeper waits, after SIGKILL, for the tree to be reaped.
AFTER_KILL = 5.0


def descendants(root: int) -> List[int]:
    """Every live process below `root`, from ``/proc`` (parents before children)."""
    children: Dict[int, List[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if fields[0] == b"Z":
            continue  # a zombie is dead; reaping it is its parent's business
        children.setdefault(int(fields[1]), []).append(int(name))
    found: List[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


class Keeper:
    def __init__(self, status_fd: int, grace: float) -> None:
        self.status_fd = status_fd
        self.grace = grace
        self.job = -1
        self.code: Optional[int] = None
        self.reported = False
        #: when the keeper's own ladder sends SIGKILL, and when it gives up
        self.kill_at: Optional[float] = None
        self.give_up_at: Optional[float] = None

    def say(self, line: str) -> None:
        try:
            os.write(self.status_fd, line.encode("utf-8", "backslashreplace") + b"\n")
        except OSError:
            pass  # the worker is gone: nobody to tell, the ladder goes on

    def signal_tree(self, signum: int) -> None:
        """`signum` to the job's group (while its shell is unreaped, the group
        id is still the job's) and to every process below the keeper."""
        if self.code is None:
            try:
                os.killpg(self.job, signum)
            except OSError:
                pass
        for pid in descendants(os.getpid()):
            try:
                os.kill(pid, signum)
            except OSError:
                pass

    def stop(self) -> None:
        """The keeper's own ladder: the worker is gone, or we were told to go."""
        if self.kill_at is None and self.give_up_at is None:
            self.signal_tree(signal.SIGTERM)
            self.kill_at = time.monotonic() + self.grace

    def reap(self) -> bool:
        """Reap what has exited; True while some child (the job's tree) is left."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            if pid == self.job:
                self.code = os.waitstatus_to_exitcode(status)

    def run(self, shell: str, command: bytes, worker: int) -> int:
        # Started from whatever thread runs the task: block nothing, or the
        # agent's signals would wait forever (the job gets this mask too).
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        os.set_inheritable(self.status_fd, False)  # the job's processes never hold it
        wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_write)
        for signum in (signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM,
                       signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda s, f: None)  # recorded by the wake-up fd
        try:
            watch = os.pidfd_open(worker)
        except (AttributeError, OSError) as exc:
            self.say(f"error the node cannot watch a process (pidfd_open, Linux 5.3): {exc}")
            return 1
        if os.getppid() != worker:
            self.say("error its Ray worker went away before the job started")
            return 1
        if os.fork():
            os._exit(0)  # the worker reaps this one; the keeper is an orphan from here on
        os.setsid()
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            self.say("error the node cannot keep a job's processes (prctl failed)")
            return 1
        spawn = os.posix_spawn if "/" in shell else os.posix_spawnp
        try:
            self.job = spawn(shell, [os.fsencode(shell), b"-c", command], dict(os.environ),
                             setsid=True, setsigdef=JOB_DEFAULTS)
        except (OSError, ValueError, NotImplementedError) as exc:
            self.say(f"error cannot run the shell {shell}: {getattr(exc, 'strerror', exc)}")
            return 1
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.close(null)
        self.say(f"started {os.getpid()} {self.job}")
        poller = select.poll()
        poller.register(wake_read, select.POLLIN)
        poller.register(watch, select.POLLIN)
        # Events only (POLLERR): the worker's end of the status pipe is closed.
        poller.register(self.status_fd, 0)
        while True:
            left = self.reap()
            if self.code is not None and not self.reported:
                self.reported = True
                self.say(f"exit {self.code} {1 if left else 0}")
            if not left:
                self.say("cleared")
                return 0
            now = time.monotonic()
            if self.kill_at is not None and now >= self.kill_at:
                self.kill_at = None
                self.give_up_at = now + AFTER_KILL
                self.signal_tree(signal.SIGKILL)
            if self.give_up_at is not None:
                if now >= self.give_up_at:
                    return 1  # unkillable (uninterruptible sleep): nothing more to do
                # Again at every look: a process forked since the last one.
                self.signal_tree(signal.SIGKILL)
            deadline = self.kill_at if self.kill_at is not None else self.give_up_at
            # Zombies of grandchildren wake nobody: poll while something of
            # the tree is being ended.
            timeout = None if deadline is None else max(0, min(deadline - now, 0.2)) * 1000
            for fd, _ in poller.poll(timeout):
                if fd == wake_read:
                    self.signals(wake_read)
                else:  # the worker is gone, or no longer reads what we say
                    poller.unregister(fd)
                    self.stop()

    def signals(self, wake_read: int) -> None:
        seen: Set[int] = set()
        try:
            seen.update(os.read(wake_read, 4096))
        except BlockingIOError:
            pass
        if signal.SIGUSR2 in seen:
            self.signal_tree(signal.SIGKILL)
        elif signal.SIGUSR1 in seen:
            self.signal_tree(signal.SIGTERM)
        if seen & {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}:
            self.stop()


def main(argv: List[str]) -> int:
    """``WORKER_PID STATUS_FD GRACE SHELL TOKEN COMMAND`` (TOKEN names the
    attempt in our command line, for the agent's check before a signal)."""
    worker, status_fd, grace, shell, _token, command = argv
    keeper = Keeper(int(status_fd), float(grace))
    try:
        return keeper.run(shell, os.fsencode(command), int(worker))
    except Exception as exc:  # one line for the scheduler, not a traceback nobody reads
        keeper.say(f"error the job's keeper failed: {type(exc).__name__}: {exc}")
        keeper.signal_tree(signal.SIGKILL)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
