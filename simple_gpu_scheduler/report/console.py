"""Every write to our stdout and stderr: the scheduler's lines, tagged job
output, the status line.

The scheduler's lines go to stderr; job output is the pipeline's data (see
`launch.streams` for how it is routed). Every write here is one
``os.write`` loop under one lock, so lines of concurrent jobs and the
scheduler's lines are never mixed inside a line, and a closed downstream or a
hung-up terminal (EPIPE, EIO) silences that stream instead of raising.
"""

from __future__ import annotations

import _thread  # not `threading`: a lock is all we need, and threading costs start-up
import os

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Dict, FrozenSet, Optional, Tuple

#: One lock per stream, so that lines never interleave inside a line; one
#: lock per stream, not one for both, so that a slow reader of stdout (a job's
#: output tagged into a paused pager) never holds up the scheduler's stderr.
_locks: Dict[int, _thread.LockType] = {1: _thread.allocate_lock(), 2: _thread.allocate_lock()}
_broken: Dict[int, bool] = {}
#: The ``--progress`` line on a terminal: (fd, text), taken away before every
#: write to that terminal and drawn again after it.
_status: Optional[Tuple[int, bytes]] = None
#: The fds that show the status line's terminal (stderr, and stdout if the same).
_status_fds: FrozenSet[int] = frozenset()

_ERASE = b"\r\x1b[K"


def _write_all(fd: int, data: bytes) -> bool:
    if _broken.get(fd):
        return False
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            # A non-blocking stream (a terminal another program made so) that
            # is full for now: wait until it takes more, never drop it.
            _wait_writable(fd)
        except OSError:
            # EPIPE (`| head` has exited), EIO (terminal hung up), EBADF:
            # nobody reads this stream any more, which must not stop the run.
            _broken[fd] = True
            return False
    return True


def _wait_writable(fd: int) -> None:
    import select  # only here: a blocking stream never needs it

    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    poller.poll(1000)


def _lock(fd: int) -> _thread.LockType:
    if fd in _status_fds and _status is not None:
        return _locks[_status[0]]  # both streams draw on one terminal line
    return _locks.setdefault(fd, _thread.allocate_lock())


def write_fd(fd: int, data: bytes) -> bool:
    """Write all of `data` to `fd`; False (and quiet from then on) if it is gone."""
    with _lock(fd):
        status = _status
        if status is None or fd not in _status_fds:
            return _write_all(fd, data)
        status_fd, text = status
        _write_all(status_fd, _ERASE)
        done = _write_all(fd, data)
        _write_all(status_fd, text)
        return done


def set_status_line(fd: int, text: Optional[bytes]) -> None:
    """Draw `text` as the status line on terminal `fd`, or remove it (None)."""
    global _status, _status_fds
    with _locks.setdefault(fd, _thread.allocate_lock()):
        _write_all(fd, _ERASE + (text or b""))
        if text is None:
            _status, _status_fds = None, frozenset()
            return
        if _status is None:
            _status_fds = frozenset({fd} | ({1} if _same_terminal(1, fd) else set()))
        _status = (fd, text)


def _same_terminal(a: int, b: int) -> bool:
    try:
        return os.isatty(a) and os.path.samestat(os.fstat(a), os.fstat(b))
    except OSError:
        return False


class Console:
    """The scheduler's own messages, one line each, on stderr."""

    PREFIX = "[sgs] "

    def __init__(self, verbosity: int = 0, fd: int = 2) -> None:
        self.verbosity = verbosity  # -1 quiet, 0 normal, 1 verbose
        self._fd = fd

    def line(self, text: str) -> None:
        """Always shown: failures, warnings, drain notices, the status table."""
        write_fd(self._fd, (self.PREFIX + text + "\n").encode("utf-8", "backslashreplace"))

    def info(self, text: str) -> None:
        """Per-job progress, hidden by ``--quiet``."""
        if self.verbosity >= 0:
            self.line(text)

    def debug(self, text: str) -> None:
        """Details for ``--verbose``."""
        if self.verbosity >= 1:
            self.line(text)

    def say(self, text: str, level: int = 0) -> None:
        """`line` (level 1), `info` (0) or `debug` (-1)."""
        if self.verbosity >= -level:
            self.line(text)
