"""The reader thread: stdin to jobs, with back-pressure, and a clean stop.

The thread reads fd 0 with plain ``os.read`` (no buffered reader whose lock a
daemon thread could hold at interpreter exit), cuts the bytes into commands
and posts each as a `JobRead` event. It posts a job only while fewer than
`read_ahead` posted jobs wait to start (the scheduling loop calls `job_taken`),
and reads the next chunk only when the commands of the last one are all
posted: a generator of ten million lines waits in its pipe, not in our memory.

`stop` (a drain) makes it read nothing more, and post at once every command
it had already taken from stdin, so that the loop can list them all as not
started: nothing read is ever silently lost.
"""

from __future__ import annotations

import os
import select
import threading
from collections import deque

from .. import threads
from .lines import MAX_COMMAND_BYTES, CommandAssembler, LineSplitter, RawCommand
from ..model.jobs import Job
from ..model.record import Record

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Callable, Deque, Optional

    #: Builds a job from its sequence number and raw command (plain text or JSONL).
    JobFactory = Callable[[int, RawCommand], Job]

#: Bytes per read. Small enough that the commands of one chunk cost little
#: memory while they wait for room, large enough for few system calls.
CHUNK = 16 * 1024


class JobRead(Record):
    __slots__ = ("job",)

    def __init__(self, job: Job) -> None:
        self.job = job


class InputEnded(Record):
    __slots__ = ("error",)

    def __init__(self, error: Optional[str] = None) -> None:
        #: Why reading failed, or None at a normal end of input.
        self.error = error


class Reader:
    def __init__(
        self, fd: int, make_job: JobFactory, post: Callable[[object], None], read_ahead: int,
        continuation: bool = True,
    ) -> None:
        self._fd = fd
        self._make_job = make_job
        self._post = post
        self._read_ahead = read_ahead
        self._continuation = continuation
        self._room = threading.Condition()
        self._waiting = 0  # posted jobs the loop has not taken yet
        self._stopped = False
        self._stop_r, self._stop_w = os.pipe()
        self._count = 0

    def start(self) -> None:
        # A helper thread: at exit it may still block in select(); nothing of
        # ours is lost by leaving it there.
        threads.start(self._run)

    def job_taken(self) -> None:
        """The loop started (or dropped) a job: one more may be posted."""
        with self._room:
            self._waiting -= 1
            self._room.notify()

    def stop(self) -> None:
        """Read nothing more; post what was already read (called by a drain)."""
        with self._room:
            self._stopped = True
            self._room.notify()
        os.write(self._stop_w, b".")

    def _run(self) -> None:
        splitter = LineSplitter(MAX_COMMAND_BYTES + 1)  # + 1: a CRLF line's CR
        assembler = CommandAssembler(continuation=self._continuation)
        ready: Deque[RawCommand] = deque()  # taken from stdin, not posted yet
        at_end = False
        try:
            while True:
                if not self._wait_for_room():
                    break
                if ready:
                    self._emit(ready.popleft())
                    continue
                if at_end:
                    self._post(InputEnded())
                    return
                chunk = self._read()
                if chunk is None:
                    break  # stopped while waiting for input
                if chunk:
                    for line in splitter.feed(chunk):
                        _append(ready, assembler.feed(line))
                else:
                    _flush(ready, splitter, assembler)
                    at_end = True
        except OSError as exc:
            self._post(InputEnded(f"cannot read the input: {exc.strerror or exc}"))
            return
        # Stopped: whatever was taken from stdin is posted now, to be listed
        # as not started, a cut last line included.
        _flush(ready, splitter, assembler)
        while ready:
            self._emit(ready.popleft())

    def _wait_for_room(self) -> bool:
        """Block until a job may be posted; False once stopped."""
        with self._room:
            while self._waiting >= self._read_ahead and not self._stopped:
                self._room.wait()
            return not self._stopped

    def _read(self) -> Optional[bytes]:
        """The next chunk of stdin (b"" at its end), or None if stopped first."""
        readable, _, _ = select.select([self._fd, self._stop_r], [], [])
        if self._stop_r in readable:
            return None
        return os.read(self._fd, CHUNK)

    def _emit(self, raw: RawCommand) -> None:
        with self._room:
            self._waiting += 1
        self._count += 1
        self._post(JobRead(self._make_job(self._count, raw)))


def _append(ready: Deque[RawCommand], raw: Optional[RawCommand]) -> None:
    if raw is not None:
        ready.append(raw)


def _flush(ready: Deque[RawCommand], splitter: LineSplitter, assembler: CommandAssembler) -> None:
    """The commands still held by the splitter and assembler (a last line
    without a newline, a continuation cut off)."""
    last = splitter.end()
    if last is not None:
        _append(ready, assembler.feed(last))
    _append(ready, assembler.end())
