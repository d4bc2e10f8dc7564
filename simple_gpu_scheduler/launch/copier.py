"""Copies of job output (``--tag``, ``--progress``, ``--tag --log-dir``): one
helper thread per stream we write to, not per job.

A thread per job stream (two per job) costs a thread start and, more, the GIL
handed back and forth at every job start: a run of 2000 short tagged jobs
spent half its time there. A `Copier` thread instead waits on the pipes of
every job with one ``poll``, copies what is readable, and says (`on_done`)
when a stream has ended; there is one for copies to our stdout and one for
copies to our stderr, so a paused reader of one (a pager) never holds up the
other. The engine's thread never writes job output, so a slow reader
downstream holds up the copies (and so the jobs, through their full pipes),
never signals, timeouts or starts.

How a stream is cut into pieces is `Pieces`, pure: see `launch.streams`.
"""

from __future__ import annotations

import _thread  # a lock is all we need; `threading` costs start-up time
import os
import select
from collections import deque

from .. import threads
from ..report.console import write_fd

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Callable, ClassVar, Deque, Dict, List, Optional


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


class Copy:
    """Copy one job stream (a pipe's read end, which this takes over) to `fd`
    piece by piece, each piece with a prefix, on the `Copier`'s thread;
    `join` and `finish` wait for the stream's end."""

    def __init__(self, source: int, fd: int, prefix: bytes,
                 on_done: Optional[Callable[[], None]] = None,
                 file: Optional[int] = None,
                 tap: Optional[Callable[[bytes], None]] = None) -> None:
        self.source = source
        #: gets every chunk read, as read (`keeper.OutputKeeper`, for ``log``)
        self._tap = tap
        #: a log file (``--log-dir`` with ``--tag``) that gets every byte read,
        #: unprefixed and uncut; this takes it over and closes it at the end
        self._file = file
        #: called from the copy's thread once the stream has ended
        self._on_done = on_done
        self.fd = fd
        self._prefix = prefix
        self._done = _thread.allocate_lock()
        self._done.acquire()
        #: pieces written so far (`finish` watches it for progress)
        self.lines = 0
        self._pieces = Pieces()

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

    def readable(self) -> bool:
        """Copy what one read gives (the pipe is readable); False at its end."""
        try:
            chunk = os.read(self.source, self._pieces.room())
            if chunk:
                if self._file is not None:
                    self._to_file(chunk)
                if self._tap is not None:
                    self._tap(chunk)
                self._write(self._pieces.feed(chunk))
                return True
            self._write(self._pieces.end())
        except OSError:
            pass  # the pipe went away under us: nothing left to copy
        self._end()
        return False

    def _end(self) -> None:
        if self._tap is not None:
            self._tap(b"")  # the stream has ended
        os.close(self.source)
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
            write_fd(self.fd, self._prefix + piece)
            self.lines += 1


class Copier:
    """The thread that runs every `Copy`, started with the first one."""

    #: one copier per stream we write to (1, 2): a paused reader of our stdout
    #: (a pager) holds up the copies to stdout only, not those to stderr
    _shared: ClassVar[Dict[int, Copier]] = {}

    @classmethod
    def shared(cls, fd: int) -> Copier:
        copier = cls._shared.get(fd)
        if copier is None:
            copier = cls._shared[fd] = cls()
        return copier

    def __init__(self) -> None:
        self._poll = select.poll()
        self._waker = threads.WakePipe()
        self._poll.register(self._waker.read_fd, select.POLLIN)
        #: copies handed over and not yet watched; `deque.append` is thread-safe
        self._added: Deque[Copy] = deque()
        self._copies: Dict[int, Copy] = {}
        self._started = False

    def add(self, copy: Copy) -> None:
        self._added.append(copy)
        if not self._started:
            self._started = True
            threads.start(self._run)
        self._waker.wake()

    def _run(self) -> None:
        while True:
            while self._added:
                copy = self._added.popleft()
                self._copies[copy.source] = copy
                self._poll.register(copy.source, select.POLLIN)
            for fd, _ in self._poll.poll():
                if fd == self._waker.read_fd:
                    self._waker.drain()
                    continue
                copy = self._copies[fd]
                if not copy.readable():
                    # `readable` has closed the fd: forget it before the next
                    # poll (a new copy that gets the same number is added
                    # only after this, at the top of the loop).
                    self._poll.unregister(fd)
                    del self._copies[fd]
