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
