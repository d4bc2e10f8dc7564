"""Where a local job's output goes: our stdout and stderr untouched
(passthrough), piece by piece with a prefix (``--tag``, and ``--progress``
with an empty prefix), one file per job and stream (``--log-dir``), or both:
with ``--tag --log-dir`` the copy writes what the job prints to its file, as
it was printed, and the pieces, tagged, to our stream.

The copy (`copier.Copy`; one helper thread per stream runs them) reads a stream
with ``os.read`` and holds at most `BOUND` bytes of it, whatever the job
prints. It cuts the stream into pieces
(`copier.Pieces`):

- a piece ends after a newline, a carriage return, or ``\r\n``. A progress
  bar (tqdm) redraws itself with ``\r``, so each update is a piece: it shows,
  with the tag in front (lagging one update behind, as a piece is only written
  once it has ended). A lone ``\r`` is no piece (tqdm starts every update with
  one): there is nothing to show. A ``\r\n`` that one read splits is written
  as a ``\r`` piece and an empty ``\n`` piece;
- a piece longer than `BOUND` is written in parts of `BOUND` bytes, each ended
  with a newline, the next part again with the prefix: a huge line comes out
  as several tagged lines (a cut may fall inside a multi-byte character)
  instead of filling our memory. The last piece gets a newline too.

Every piece is one `write_fd` call of prefix and piece, so lines of concurrent
jobs are never mixed inside a line.

A log file is never truncated: a rerun into the same directory, a retry and a
``--resume-failed`` run append, and when the file already holds something, a
one-line marker (`marker`) comes first, so an earlier run's output is never
lost and each attempt's part can be found.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Callable, List, Optional, Tuple

    from .copier import Copy
    from .keeper import OutputKeeper

    Tap = Callable[[bytes], None]

class JobStreams:
    """A job's stdout and stderr as the child gets them (fds; None: ours), and
    what the parent does once the child has its copies."""

    def __init__(
        self, out: Optional[int] = None, err: Optional[int] = None,
        copies: Tuple[Tuple[int, int, bytes, Optional[int], Optional[Tap]], ...] = (),
    ) -> None:
        self.out = out
        self.err = err
        #: (read end, our fd, prefix, log file or None, tap or None) of every
        #: pipe to copy piece by piece
        self._copies = copies

    @property
    def copies(self) -> bool:
        """Whether the job's output is copied by us (``--tag``, ``--progress``)."""
        return bool(self._copies)

    def started(self, on_done: Optional[Callable[[], None]] = None) -> List[Copy]:
        """The child has its copies: close ours, start the copies (each closes
        its read end when its stream ends; `on_done` is called, from the
        copier's thread, as each one ends)."""
        self._close_child_ends()
        return self.start_copies(on_done)

    def close_writers(self) -> None:
        """A cluster's job has ended: close the ends its output was written to
        here (the copies then reach their end)."""
        self._close_child_ends()
        self.out = self.err = None

    def start_copies(self, on_done: Optional[Callable[[], None]] = None) -> List[Copy]:
        """Start the copies, keeping `out` and `err` open: a cluster's job
        output is written to them here, from the task's stream."""
        if not self._copies:
            return []
        from .copier import Copier, Copy  # only when output is copied: no import otherwise

        copies = [Copy(read, fd, prefix, on_done, file, tap)
                  for read, fd, prefix, file, tap in self._copies]
        for copy in copies:
            Copier.shared(copy.fd).add(copy)
        return copies

    def close(self) -> None:
        """The child never started: close everything."""
        self._close_child_ends()
        for read, _, _, file, _ in self._copies:
            os.close(read)
            if file is not None:
                os.close(file)

    def _close_child_ends(self) -> None:
        for fd in (self.out, self.err):
            if fd is not None:
                os.close(fd)


class OutputMode:
    """How job output is routed; one instance per run."""

    def streams(self, job_id: int, gpus: Tuple[str, ...], attempt: int,
                name: Optional[str] = None, host: str = "") -> JobStreams:
        """The stdout and stderr for one attempt's process (OSError if they
        cannot be opened); `name` is the job's (JSON lines ``name``), if any;
        `host` the cluster node it runs on."""
        return JobStreams()


class Passthrough(OutputMode):
    """Jobs write straight to our stdout and stderr: no copy, no cost."""


class Tagged(OutputMode):
    """Job output copied piece by piece (`copier`); each piece gets ``[<job id>|gpu <ids>] `` in
    front when `prefix` is set (``--tag``), or nothing (``--progress`` alone)."""

    def __init__(self, prefix: bool = True, keeper: Optional[OutputKeeper] = None) -> None:
        self.prefix = prefix
        #: keeps each job's recent output for ``log`` requests, if given
        self.keeper = keeper

    def streams(self, job_id: int, gpus: Tuple[str, ...], attempt: int,
                name: Optional[str] = None, host: str = "") -> JobStreams:
        taps: Tuple[Optional[Tap], Optional[Tap]] = (None, None)
        if self.keeper is not None:
            taps = (self.keeper.tap(job_id, "out"), self.keeper.tap(job_id, "err"))
        return tagged_streams(tag_prefix(job_id, gpus, host) if self.prefix else b"", taps=taps)


def tagged_streams(prefix: bytes, files: Tuple[Optional[int], Optional[int]] = (None, None),
                   taps: Tuple[Optional[Tap], Optional[Tap]] = (None, None)) -> JobStreams:
    """Pipes for a job's stdout and stderr, copied to ours with `prefix` (and to
    `files`, the log files, if given; they are closed here if a pipe fails)."""
    try:
        out_read, out_write = os.pipe()
        try:
            err_read, err_write = os.pipe()
        except OSError:
            os.close(out_read)
            os.close(out_write)
            raise
    except OSError:
        for file in files:
            if file is not None:
                os.close(file)
        raise
    return JobStreams(out_write, err_write,
                      ((out_read, 1, prefix, files[0], taps[0]),
                       (err_read, 2, prefix, files[1], taps[1])))


def tag_prefix(job_id: int, gpus: Tuple[str, ...], host: str = "") -> bytes:
    """``[3|gpu 0,1] ``, and on a cluster ``[3|10.0.0.7 gpu 0] ``."""
    where = f"{host} " if host else ""
    return f"[{job_id}|{where}gpu {','.join(gpus)}] ".encode("utf-8", "backslashreplace")


class LogDir(OutputMode):
    """Each job writes ``DIR/<id>.out`` and ``DIR/<id>.err`` (``DIR/<id>-<name>.*``
    for a job with a name), never truncated (see the module docstring); with
    `tag`, its output is also copied, tagged, to our stdout and stderr."""

    def __init__(self, directory: str, tag: bool = False) -> None:
        self.directory = directory
        self.tag = tag

    def paths(self, job_id: int, name: Optional[str] = None) -> Tuple[str, str]:
        """The job's two log files, as absolute paths (for ``log`` requests)."""
        stem = os.path.join(os.path.abspath(self.directory), log_stem(job_id, name))
        return stem + ".out", stem + ".err"

    def streams(self, job_id: int, gpus: Tuple[str, ...], attempt: int,
                name: Optional[str] = None, host: str = "") -> JobStreams:
        stem = os.path.join(self.directory, log_stem(job_id, name))
        line = marker(job_id, attempt, time.localtime())
        out = open_log(stem + ".out", line)
        try:
            err = open_log(stem + ".err", line)
        except OSError:
            os.close(out)
            raise
        if self.tag:
            return tagged_streams(tag_prefix(job_id, gpus, host), (out, err))
        return JobStreams(out, err)


#: The characters a job's name keeps in a log file's name; others become ``_``.
SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._,=+-")
#: The most characters of a job's name in a log file's name.
NAME_IN_FILE = 100


def log_stem(job_id: int, name: Optional[str]) -> str:
    """``3``, or ``3-lr=0.1,bs=32`` for a job with a name: the name made safe for a
    file name (`SAFE` characters, at most `NAME_IN_FILE`), the job id first."""
    if not name:
        return str(job_id)
    safe = "".join(c if c in SAFE else "_" for c in name[:NAME_IN_FILE])
    return f"{job_id}-{safe}"


def marker(job_id: int, attempt: int, when: time.struct_time) -> bytes:
    """The line that separates this attempt's output from what a log file held."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", when)
    text = f"--- simple_gpu_scheduler: job {job_id} attempt {max(1, attempt)}, {stamp} ---\n"
    return text.encode()


def open_log(path: str, line: bytes) -> int:
    """`path` opened for appending (created if need be); when it already holds
    something, `line` is written first, on a line of its own."""
    # Read and write: the last byte says whether the marker needs a newline first.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size:
            if os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            os.write(fd, line)
    except OSError:
        os.close(fd)
        raise
    return fd
