"""Starting helper threads that never receive the scheduler's signals.

A signal sent to the process is delivered to any one thread that does not
block it. Python runs the handler in the main thread, but only wakes the main
thread if the signal was delivered to it: a SIGINT that lands on a helper
thread while the main thread sleeps in a lock would wait there until some
other event woke the loop. So every helper thread starts with the stop and
status signals blocked (a new thread inherits the mask of the thread that
starts it), and they always reach the main thread.

Bare `_thread` threads, not `threading.Thread`: its ``start`` waits until the
new thread runs, a context switch per job that a busy machine notices.
"""

from __future__ import annotations

import _thread
import os
import signal

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Any, Callable

#: The signals the engine's loop handles (`engine.loop.Loop.run` installs their handlers).
MAIN_THREAD_ONLY = frozenset(
    {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1}
)


def start(function: Callable[..., Any], *args: Any) -> None:
    """Run ``function(*args)`` in a new thread with `MAIN_THREAD_ONLY` blocked."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, MAIN_THREAD_ONLY)
    try:
        _thread.start_new_thread(function, args)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class WakePipe:
    """A self-pipe: another thread (or a signal, through
    `signal.set_wakeup_fd`) wakes a thread that waits in ``poll`` on `read_fd`.
    Both ends are non-blocking: a full pipe means the waiter is awake anyway."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def wake(self) -> None:
        try:
            os.write(self.write_fd, b"\0")
        except BlockingIOError:
            pass  # full: the waiter is awake anyway
        except OSError:
            pass  # closed (a test that runs many loops): nobody left to wake

    def drain(self) -> None:
        """Empty the pipe (the waiter is awake: that was all it said)."""
        try:
            while os.read(self.read_fd, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)

