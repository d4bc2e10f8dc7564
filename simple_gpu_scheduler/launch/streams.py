"""Where a local job's output goes: our stdout and stderr untouched
(passthrough), line by line with a prefix (``--tag``), or one file per job and
stream (``--log-dir``).
"""

from __future__ import annotations

import os
import threading

from .. import threads
from ..report.console import write_fd

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import IO, Callable, List, Optional, Tuple


class TagPump:
    """Copy one job stream to `fd` line by line, each line with a prefix, in a
    helper thread; `join` and `finish` wait for the stream's end."""

    def __init__(self, source: IO[bytes], fd: int, prefix: bytes,
                 on_done: Optional[Callable[[], None]] = None) -> None:
        self._source = source
        #: called from the copy's thread once the stream has ended
        self._on_done = on_done
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
            if self._on_done is not None:
                self._on_done()




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

    @property
    def copies(self) -> bool:
        """Whether the job's output is copied by us (``--tag``, ``--progress``)."""
        return bool(self._copies)

    def started(self, on_done: Optional[Callable[[], None]] = None) -> List[TagPump]:
        """The child has its copies: close ours, start the line copies
        (`on_done` is called, from a copy's thread, as each one ends)."""
        self._close_child_ends()
        return [TagPump(open(read, "rb"), fd, prefix, on_done)
                for read, fd, prefix in self._copies]

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
