"""Where a local job's output goes: our stdout and stderr untouched
(passthrough), piece by piece with a prefix (``--tag``, and ``--progress``
with an empty prefix), one file per job and stream (``--log-dir``), or both:
with ``--tag --log-dir`` the copy writes what the job prints to its file, as
it was printed, and the pieces, tagged, to our stream.

The copy (`TagPump`) reads a stream with ``os.read`` and holds at most
`BOUND` bytes of it, whatever the job prints. It cuts the stream into pieces
(`Pieces`):

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
import _thread  # a lock is all we need; `threading` costs start-up time
import time

from .. import threads
from ..report.console import write_fd

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Callable, List, Optional, Tuple

#: The most bytes of one job stream held in memory (a pipe holds as much).
BOUND = 64 * 1024


class Pieces:
    """Cuts a byte stream into pieces (see the module docstring): pure, fed
    with what each read returned."""

    def __init__(self, limit: int = BOUND) -> None:
        self.limit = limit
        self._held = b""

    def room(self) -> int:
        """How many bytes the next read may take (at least 1): what is held
        and read together never exceeds the bound."""
        return self.limit - len(self._held)

    def feed(self, chunk: bytes) -> List[bytes]:
        """The pieces that `chunk` ends; the rest is held for the next one."""
        data = self._held + chunk if self._held else chunk
        pieces: List[bytes] = []
        start = 0
        # Two searches kept apart: a fresh find of both at every piece would
        # scan to the end for a character that never comes, per line.
        newline = data.find(b"\n")
        ret = data.find(b"\r")
        while newline >= 0 or ret >= 0:
            if ret < 0 or 0 <= newline < ret:
                end = newline + 1
            else:
                end = ret + 2 if newline == ret + 1 else ret + 1
            if end - start > 1 or data[start] != 0x0D:  # a lone \r is no piece
                pieces.append(data[start:end])
            start = end
            if 0 <= newline < start:
                newline = data.find(b"\n", start)
            if 0 <= ret < start:
                ret = data.find(b"\r", start)
        rest = data[start:]
        if len(rest) >= self.limit:
            pieces.append(rest + b"\n")
            rest = b""
        self._held = rest
        return pieces

    def end(self) -> List[bytes]:
        """The stream has ended: what is held, as a last piece with a newline."""
        rest, self._held = self._held, b""
        return [rest + b"\n"] if rest else []


class TagPump:
    """Copy one job stream (a pipe's read end, which this takes over) to `fd`
    piece by piece, each piece with a prefix, in a helper thread; `join` and
    `finish` wait for the stream's end."""

    def __init__(self, source: int, fd: int, prefix: bytes,
                 on_done: Optional[Callable[[], None]] = None,
                 file: Optional[int] = None) -> None:
        self._source = source
        #: a log file (``--log-dir`` with ``--tag``) that gets every byte read,
        #: unprefixed and uncut; this takes it over and closes it at the end
        self._file = file
        #: called from the copy's thread once the stream has ended
        self._on_done = on_done
        self._fd = fd
        self._prefix = prefix
        self._done = _thread.allocate_lock()
        self._done.acquire()
        #: pieces written so far (`finish` watches it for progress)
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
        nothing); give up once `patience` seconds pass without a piece, when
        something that escaped the job's process group holds the pipe open."""
        seen = -1
        while not self.join(patience) and self.lines != seen:
            seen = self.lines

    def _run(self) -> None:
        pieces = Pieces()
        try:
            while True:
                chunk = os.read(self._source, pieces.room())
                if not chunk:
                    break
                if self._file is not None:
                    self._to_file(chunk)
                self._write(pieces.feed(chunk))
            self._write(pieces.end())
        except OSError:
            pass  # the pipe went away under us: nothing left to copy
        finally:
            os.close(self._source)
            if self._file is not None:
                os.close(self._file)
            self._done.release()
            if self._on_done is not None:
                self._on_done()

    def _to_file(self, chunk: bytes) -> None:
        """All of `chunk` to the log file. A file that cannot be written (a
        full disk) is given up on; the tagged copy goes on."""
        assert self._file is not None
        view = memoryview(chunk)
        try:
            while view:
                view = view[os.write(self._file, view):]
        except OSError:
            os.close(self._file)
            self._file = None

    def _write(self, pieces: List[bytes]) -> None:
        for piece in pieces:
            # Once the downstream is gone we keep reading, so the job never
            # blocks on a full pipe; what it prints is dropped.
            write_fd(self._fd, self._prefix + piece)
            self.lines += 1


class JobStreams:
    """A job's stdout and stderr as the child gets them (fds; None: ours), and
    what the parent does once the child has its copies."""

    def __init__(
        self, out: Optional[int] = None, err: Optional[int] = None,
        copies: Tuple[Tuple[int, int, bytes, Optional[int]], ...] = (),
    ) -> None:
        self.out = out
        self.err = err
        #: (read end, our fd, prefix, log file or None) of every pipe to copy piece by piece
        self._copies = copies

    @property
    def copies(self) -> bool:
        """Whether the job's output is copied by us (``--tag``, ``--progress``)."""
        return bool(self._copies)

    def started(self, on_done: Optional[Callable[[], None]] = None) -> List[TagPump]:
        """The child has its copies: close ours, start the copies (each pump
        closes its read end when its stream ends; `on_done` is called, from a
        copy's thread, as each one ends)."""
        self._close_child_ends()
        return [TagPump(read, fd, prefix, on_done, file)
                for read, fd, prefix, file in self._copies]

    def close(self) -> None:
        """The child never started: close everything."""
        self._close_child_ends()
        for read, _, _, file in self._copies:
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
                name: Optional[str] = None) -> JobStreams:
        """The stdout and stderr for one attempt's process (OSError if they
        cannot be opened); `name` is the job's (JSON lines ``name``), if any."""
        return JobStreams()


class Passthrough(OutputMode):
    """Jobs write straight to our stdout and stderr: no copy, no cost."""


class Tagged(OutputMode):
    """Job output copied piece by piece (`TagPump`); each piece gets ``[<job id>|gpu <ids>] `` in
    front when `prefix` is set (``--tag``), or nothing (``--progress`` alone)."""

    def __init__(self, prefix: bool = True) -> None:
        self.prefix = prefix

    def streams(self, job_id: int, gpus: Tuple[str, ...], attempt: int,
                name: Optional[str] = None) -> JobStreams:
        return tagged_streams(tag_prefix(job_id, gpus) if self.prefix else b"")


def tagged_streams(prefix: bytes, files: Tuple[Optional[int], Optional[int]] = (None, None)
                   ) -> JobStreams:
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
                      ((out_read, 1, prefix, files[0]), (err_read, 2, prefix, files[1])))


def tag_prefix(job_id: int, gpus: Tuple[str, ...]) -> bytes:
    return f"[{job_id}|gpu {','.join(gpus)}] ".encode("utf-8", "backslashreplace")


class LogDir(OutputMode):
    """Each job writes ``DIR/<id>.out`` and ``DIR/<id>.err`` (``DIR/<id>-<name>.*``
    for a job with a name), never truncated (see the module docstring); with
    `tag`, its output is also copied, tagged, to our stdout and stderr."""

    def __init__(self, directory: str, tag: bool = False) -> None:
        self.directory = directory
        self.tag = tag

    def streams(self, job_id: int, gpus: Tuple[str, ...], attempt: int,
                name: Optional[str] = None) -> JobStreams:
        stem = os.path.join(self.directory, log_stem(job_id, name))
        line = marker(job_id, attempt, time.localtime())
        out = open_log(stem + ".out", line)
        try:
            err = open_log(stem + ".err", line)
        except OSError:
            os.close(out)
            raise
        if self.tag:
            return tagged_streams(tag_prefix(job_id, gpus), (out, err))
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
