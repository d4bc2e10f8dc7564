"""The engine's reactor: one ``poll`` for everything the engine waits for, its
timers, the callbacks other threads post, and the signals a handler records.

What collaborators of the engine see of it (`launch.base.Reactor`): readers
and writers on file descriptors, timers, ``call_soon_threadsafe``, and the
clock. What the engine (`loop.Loop`, a Reactor) does with each wake-up is
its own; this module knows nothing of jobs.

One wake-up pipe (`threads.WakePipe`) is in the poll: signal handlers
(`signal.set_wakeup_fd`) and helper threads write to it. The poll's timeout
is the next timer's deadline, so an idle engine sleeps in one system call.
"""

from __future__ import annotations

import select
import signal
from collections import deque

from .. import threads
from .timers import Timers

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Callable, Deque, Dict, Tuple

    from .timers import Timer

#: The longest poll, in seconds: a --timeout of 1000 years is a valid "never".
LONGEST_WAIT = 86400.0


class Reactor:
    """The waiting, for the engine's one thread (see the module docstring).
    A subclass runs its turns: `_open` once, then `_wait` and, after each
    wake-up, `_run_posted`, the recorded `_signals` and ``timers.fire()``."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.timers = Timers(clock)
        self._poll = select.poll()
        self._readers: Dict[int, Callable[[], None]] = {}
        self._writers: Dict[int, Callable[[], None]] = {}
        self._waker = threads.WakePipe()
        #: callables posted by other threads; `deque.append` is thread-safe
        self._soon: Deque[Callable[[], None]] = deque()
        #: stop and status signals recorded by the handler, acted on by the engine
        self._signals: Deque[int] = deque()

    # --- what collaborators see ---------------------------------------------------

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self._readers[fd] = callback
        self._register(fd)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._register(fd)

    def add_writer(self, fd: int, callback: Callable[[], None]) -> None:
        """Call `callback` when `fd` can be written (a control client's socket)."""
        self._writers[fd] = callback
        self._register(fd)

    def remove_writer(self, fd: int) -> None:
        if self._writers.pop(fd, None) is not None:
            self._register(fd)

    def _register(self, fd: int) -> None:
        mask = (select.POLLIN if fd in self._readers else 0) | \
            (select.POLLOUT if fd in self._writers else 0)
        if mask:
            self._poll.register(fd, mask)  # registering again modifies
        else:
            self._poll.unregister(fd)

    def call_at(self, deadline: float, callback: Callable[[], None]) -> Timer:
        return self.timers.at(deadline, callback)

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        self._soon.append(callback)
        self._waker.wake()

    def time(self) -> float:
        return self.clock()

    # --- for the engine -----------------------------------------------------------

    def _open(self) -> None:
        """The wake-up pipe into the poll (once, before the first wait)."""
        self._poll.register(self._waker.read_fd, select.POLLIN)

    def _run_posted(self, everything: bool = False) -> None:
        """The callbacks other threads posted. Only those posted before this
        turn: a callback that posts itself again (a long `ls` made a batch a
        turn) waits for the next turn, so that what else is ready (a job's
        end) is seen to in between; `everything` at the end of a run."""
        if everything:
            while self._soon:
                self._soon.popleft()()
            return
        for _ in range(len(self._soon)):
            self._soon.popleft()()

    def _install_handlers(self) -> Tuple[Dict[int, object], int]:
        handlers: Dict[int, object] = {}
        # SIGINT, SIGTERM, SIGHUP stop the run; SIGUSR1 asks for the status
        # table. Helper threads block exactly these (`threads`).
        for signum in sorted(threads.MAIN_THREAD_ONLY):
            # A signal ignored when we started (nohup, a background job of a
            # non-interactive shell) stays ignored: the Unix convention.
            if signal.getsignal(signum) != signal.SIG_IGN:
                handlers[signum] = signal.signal(signum, self._record_signal)
        wakeup = signal.set_wakeup_fd(self._waker.write_fd, warn_on_full_buffer=False)
        return handlers, wakeup

    def _restore_handlers(self, previous: Tuple[Dict[int, object], int]) -> None:
        handlers, wakeup = previous
        signal.set_wakeup_fd(wakeup)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]

    def _record_signal(self, signum: int, frame: object) -> None:
        # A handler only records; the loop acts (handlers run between bytecodes
        # of the main thread, in the middle of anything).
        self._signals.append(signum)

    def _wait(self) -> None:
        """Block until a file descriptor is ready or the next timer is due."""
        timeout = self.timers.timeout()
        if timeout is None:
            ms = -1
        else:
            ms = int(min(timeout, LONGEST_WAIT) * 1000 + 0.999)  # never spin before a deadline
        for fd, events in self._poll.poll(ms):
            if fd == self._waker.read_fd:
                self._waker.drain()
                continue
            # A hang-up or error is reported to the reader (its read says what).
            if events & ~select.POLLOUT:
                callback = self._readers.get(fd)
                if callback is not None:
                    callback()
            if events & (select.POLLOUT | select.POLLERR | select.POLLHUP):
                callback = self._writers.get(fd)
                if callback is not None:
                    callback()
