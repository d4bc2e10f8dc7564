"""``--queue-file FILE``: a live queue that survives editors.

``tail -F`` follows a queue file by name, but when an editor or ``sed -i``
replaces the file, tail reads the new file from its first line, so every
command already run runs again. This source follows the file by name too
(looking every `INTERVAL` seconds while it has room for more jobs, as
``tail -F`` does without inotify), and numbers the lines: a line number is
read once. After the file has been replaced or truncated, its first N lines
are taken as read, N being the lines read so far, and reading goes on from
line N + 1. So appending (``echo cmd >> FILE``) and editing lines not yet
read both do what they look like. The queue never ends by itself: Ctrl-C
(a drain) ends it.
"""

from __future__ import annotations

import os

from .reader import InputSource

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Optional

    from .reader import JobFactory

#: Seconds between looks at the file while there is room for more jobs.
INTERVAL = 0.5


class QueueFileSource(InputSource):
    """Commands appended to a file, followed across replacement."""

    #: the loop looks again this often instead of waiting on a file descriptor
    interval: Optional[float] = INTERVAL

    def __init__(self, path: str, make_job: JobFactory, continuation: bool = True) -> None:
        self.path = path
        fd = self._open()
        super().__init__(fd, make_job, continuation)
        #: complete lines read so far, from every version of the file
        self._lines = 0
        #: lines of a new version of the file still to skip (read before)
        self._skip = 0

    def _open(self) -> int:
        return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)

    def read(self) -> None:
        """Whatever was appended since the last look; a replaced or truncated
        file is reopened, its lines already read skipped."""
        try:
            here, there = os.fstat(self.fd), os.stat(self.path)
        except FileNotFoundError:
            return  # between an editor's unlink and rename: look again later
        except OSError as exc:
            self.error = f"cannot read the queue file {self.path}: {exc.strerror or exc}"
            self._end()
            return
        if (here.st_ino, here.st_dev) != (there.st_ino, there.st_dev) or \
                there.st_size < os.lseek(self.fd, 0, os.SEEK_CUR):
            self._reopen()
        while True:
            try:
                chunk = os.read(self.fd, 64 * 1024)
            except OSError as exc:
                self.error = f"cannot read the queue file {self.path}: {exc.strerror or exc}"
                self._end()
                return
            if not chunk:
                return  # nothing more for now: not the end of the queue
            chunk = self._skipped(chunk)
            self._lines += chunk.count(b"\n")
            for line in self._splitter.feed(chunk):
                raw = self._assembler.feed(line)
                if raw is not None:
                    self._ready.append(raw)
            if self._ready:
                return

    def _reopen(self) -> None:
        try:
            fd = self._open()
        except OSError:
            return
        os.close(self.fd)
        self.fd = fd
        self._skip = self._lines
        # A last line without its newline in the old version is dropped: the
        # new version holds it whole, as one of the lines skipped or read.
        from .lines import MAX_COMMAND_BYTES, LineSplitter

        self._splitter = LineSplitter(MAX_COMMAND_BYTES + 1)

    def _skipped(self, chunk: bytes) -> bytes:
        """`chunk` without the lines still to skip."""
        while self._skip and chunk:
            end = chunk.find(b"\n")
            if end < 0:
                return b""
            chunk = chunk[end + 1:]
            self._skip -= 1
        return chunk
