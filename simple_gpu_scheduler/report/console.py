"""Where bytes go: the scheduler's own lines and the jobs' output.

The scheduler's lines go to stderr; job output is the pipeline's data and goes
to stdout/stderr untouched (passthrough), line by line with a prefix (tag), or
to one file per job and stream (log dir). Every write here is one
``os.write`` loop under one lock, so lines of concurrent jobs and the
scheduler's lines are never mixed inside a line, and a closed downstream or a
hung-up terminal (EPIPE, EIO) silences that stream instead of raising.
"""

from __future__ import annotations

import os
import threading
from .. import threads

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import IO, Dict, FrozenSet, List, Optional, Tuple

#: One lock per stream, so that lines never interleave inside a line; one
#: lock per stream, not one for both, so that a slow reader of stdout (a job's
#: output tagged into a paused pager) never holds up the scheduler's stderr.
_locks: Dict[int, threading.Lock] = {1: threading.Lock(), 2: threading.Lock()}
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
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        # EPIPE (`| head` has exited), EIO (terminal hung up), EBADF:
        # nobody reads this stream any more, which must not stop the run.
        _broken[fd] = True
        return False
    return True


def _lock(fd: int) -> threading.Lock:
    if fd in _status_fds and _status is not None:
        return _locks[_status[0]]  # both streams draw on one terminal line
    return _locks.setdefault(fd, threading.Lock())


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
    with _locks.setdefault(fd, threading.Lock()):
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


class TagPump:
    """Copy one job stream to `fd` line by line, each line with a prefix, in a
    helper thread; `join` and `finish` wait for the stream's end."""

    def __init__(self, source: IO[bytes], fd: int, prefix: bytes) -> None:
        self._source = source
        self._fd = fd
        self._prefix = prefix
        self._done = threading.Lock()
        self._done.acquire()
        self.lines = 0
        threads.start(self._run)

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds; True when the stream has ended."""
        if self._done.acquire(timeout=timeout):
            self._done.release()
            return True
        return False

    def finish(self, patience: float = 1.0) -> None:
        """Wait while the copy makes progress (a slow reader downstream loses
        nothing); give up once `patience` seconds pass without a line, when
        something that escaped the job's process group holds the pipe open."""
        seen = -1
        while not self.join(patience) and self.lines != seen:
            seen = self.lines

    def _run(self) -> None:
        try:
            with self._source:
                for line in self._source:
                    if not line.endswith(b"\n"):
                        line += b"\n"
                    # Once the downstream is gone we keep reading, so the job
                    # never blocks on a full pipe; what it prints is dropped.
                    write_fd(self._fd, self._prefix + line)
                    self.lines += 1
        except (OSError, ValueError):
            pass  # the pipe went away under us: nothing left to copy
        finally:
            self._done.release()




class JobStreams:
    """A job's stdout and stderr as the child gets them (fds; None: ours), and
    what the parent does once the child has its copies."""

    def __init__(
        self, out: Optional[int] = None, err: Optional[int] = None,
        copies: Tuple[Tuple[int, int, bytes], ...] = (),
    ) -> None:
        self.out = out
        self.err = err
        #: (read end, our fd, prefix) of every pipe to copy line by line
        self._copies = copies

    def started(self) -> List[TagPump]:
        """The child has its copies: close ours, start the line copies."""
        self._close_child_ends()
        return [TagPump(open(read, "rb"), fd, prefix) for read, fd, prefix in self._copies]

    def close(self) -> None:
        """The child never started: close everything."""
        self._close_child_ends()
        for read, _, _ in self._copies:
            os.close(read)

    def _close_child_ends(self) -> None:
        for fd in (self.out, self.err):
            if fd is not None:
                os.close(fd)


class OutputMode:
    """How job output is routed; one instance per run."""

    def streams(self, job_id: int, gpus: Tuple[str, ...], attempt: int) -> JobStreams:
        """The stdout and stderr for one attempt's process (OSError if they
        cannot be opened)."""
        return JobStreams()


class Passthrough(OutputMode):
    """Jobs write straight to our stdout and stderr: no copy, no cost."""


class Tagged(OutputMode):
    """Job output copied line by line; each line gets ``[<job id>|gpu <ids>] `` in
    front when `prefix` is set (``--tag``), or nothing (``--progress`` alone)."""

    def __init__(self, prefix: bool = True) -> None:
        self.prefix = prefix

    def streams(self, job_id: int, gpus: Tuple[str, ...], attempt: int) -> JobStreams:
        prefix = tag_prefix(job_id, gpus) if self.prefix else b""
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        return JobStreams(out_write, err_write, ((out_read, 1, prefix), (err_read, 2, prefix)))


def tag_prefix(job_id: int, gpus: Tuple[str, ...]) -> bytes:
    return f"[{job_id}|gpu {','.join(gpus)}] ".encode("utf-8", "backslashreplace")


class LogDir(OutputMode):
    """Each job writes ``DIR/<id>.out`` and ``DIR/<id>.err``; retries append."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def streams(self, job_id: int, gpus: Tuple[str, ...], attempt: int) -> JobStreams:
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
        flags |= os.O_TRUNC if attempt <= 1 else os.O_APPEND
        out = os.open(os.path.join(self.directory, f"{job_id}.out"), flags, 0o666)
        try:
            err = os.open(os.path.join(self.directory, f"{job_id}.err"), flags, 0o666)
        except OSError:
            os.close(out)
            raise
        return JobStreams(out, err)
