"""``--queue-file FILE``: a live queue that survives editors.

``tail -F`` follows a queue file by name, but when an editor or ``sed -i``
replaces the file, tail reads the new file from its first line, so every
command already run runs again. This source follows the file by name too
(looking every `INTERVAL` seconds while it has room for more jobs, as
``tail -F`` does without inotify), and remembers what it has read, line by
line: a line that was read is not read again.

When the file is replaced (an editor's save, ``sed -i``, ``mv``) or rewritten
in place (truncated, ``cat > FILE``, an edit of a line already read), the new
version is read from its first line, and each of its lines that was read
before (as many times as it was read) is skipped: deleting lines that ran
(``sed -i 1d``), appending, and editing lines not read yet all do what they
look like, and a line is never cut in two. A new file at the path must be a
regular file of the same owner as the first: a file another user put there
is not read. The queue never ends by itself: Ctrl-C (a drain) ends it.
"""

from __future__ import annotations

import os
import stat
from collections import Counter

from .lines import MAX_COMMAND_BYTES, LineSplitter
from .reader import InputSource

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Optional

    from .reader import JobFactory

#: Seconds between looks at the file while there is room for more jobs.
INTERVAL = 0.5
#: Bytes per read.
CHUNK = 64 * 1024


class QueueFileSource(InputSource):
    """Commands appended to a file, followed across replacement."""

    #: the loop looks again this often instead of waiting on a file descriptor
    interval: Optional[float] = INTERVAL

    def __init__(self, path: str, make_job: JobFactory, continuation: bool = True) -> None:
        """Open `path` (OSError if it cannot be; ValueError if it is not a
        regular file: a FIFO belongs on stdin, ``< FIFO``)."""
        self.path = path
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise ValueError(f"it is not a regular file (for a pipe or FIFO, use < {path})")
        super().__init__(fd, make_job, continuation)
        self._owner = info.st_uid
        #: how often each line (with its newline) was read, from every version
        self._seen: Counter[bytes] = Counter()
        #: of a new version: lines read before that it may still hold
        self._pending: Counter[bytes] = Counter()
        #: bytes of the current version read up to the last complete line
        self._offset = 0
        #: that last complete line, to tell an in-place rewrite from an append
        self._last = b""
        #: a line read only in part (no newline yet)
        self._partial = b""
        self._refused: Optional[int] = None  # the inode of a foreign file, said once

    def read(self) -> None:
        """Whatever was appended since the last look, in whole lines; a new
        version of the file is read from its start, skipping what was read."""
        try:
            here, there = os.fstat(self.fd), os.stat(self.path)
        except FileNotFoundError:
            return  # between an editor's unlink and rename: look again later
        except OSError as exc:
            self.error = f"cannot read the queue file {self.path}: {exc.strerror or exc}"
            self._end()
            return
        if (here.st_ino, here.st_dev) != (there.st_ino, there.st_dev):
            if not self._reopen(there):
                return
        elif there.st_size < self._offset or not self._last_line_still_there():
            self._new_version(self.fd)  # rewritten in place
        while not self._ready:
            try:
                chunk = os.pread(self.fd, CHUNK, self._offset + len(self._partial))
            except OSError as exc:
                self.error = f"cannot read the queue file {self.path}: {exc.strerror or exc}"
                self._end()
                return
            if not chunk:
                return  # nothing more for now: not the end of the queue
            self._take_lines(chunk)

    def _take_lines(self, chunk: bytes) -> None:
        data = self._partial + chunk
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            line = data[start:end + 1]
            start = end + 1
            self._offset += len(line)
            self._last = line
            if self._pending[line] > 0:
                self._pending[line] -= 1  # read in an earlier version
                continue
            self._seen[line] += 1
            self._feed(line)
        self._partial = data[start:]
        if len(self._partial) > MAX_COMMAND_BYTES:
            # Over-long and not ended yet: the splitter keeps only its head and
            # reports it; it is never remembered for skipping.
            self._offset += len(self._partial)
            self._feed(self._partial)
            self._partial = b""

    def _feed(self, data: bytes) -> None:
        for line in self._splitter.feed(data):
            raw = self._assembler.feed(line)
            if raw is not None:
                self._ready.append(raw)

    def _last_line_still_there(self) -> bool:
        if not self._last:
            return True
        try:
            return os.pread(self.fd, len(self._last), self._offset - len(self._last)) == self._last
        except OSError:
            return False

    def _reopen(self, there: os.stat_result) -> bool:
        """A new file at the path: read it if it is ours to read."""
        if not stat.S_ISREG(there.st_mode) or there.st_uid != self._owner:
            if self._refused != there.st_ino:
                self._refused = there.st_ino
                self.notices.append(
                    f"--queue-file {self.path}: the new file there is not a regular file "
                    "of the same owner; it is not read")
            return False
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError:
            return False
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != self._owner:
            os.close(fd)
            return False
        os.close(self.fd)
        self.fd = fd
        self._new_version(fd)
        return True

    def _new_version(self, fd: int) -> None:
        read = sum(self._seen.values())
        self.notices.append(
            f"--queue-file {self.path} was replaced or rewritten: reading it again from its "
            f"first line; the {read} line(s) already read are not run again")
        self._pending = Counter(self._seen)
        self._offset = 0
        self._last = b""
        self._partial = b""
        # A line the old version held without its newline is dropped: the new
        # version holds it whole, to be read or skipped.
        self._splitter = LineSplitter(MAX_COMMAND_BYTES + 1)
