"""The reader thread: stdin to jobs, with back-pressure.

The thread reads fd 0 with plain ``os.read`` (no buffered reader whose lock a
daemon thread could hold at interpreter exit), cuts the bytes into commands
and posts each as a `JobRead` event. Before posting it takes one permit of a
semaphore that the scheduling loop gives back when it starts a job: at most
`read_ahead` commands are ever read but not started, so a generator of ten
million lines waits in its pipe instead of in our memory.
"""

from __future__ import annotations

import os
import threading
from typing import Callable, NamedTuple, Optional

from .inputs import CommandAssembler, LineSplitter, RawCommand
from .jobs import Job

CHUNK = 64 * 1024


class JobRead(NamedTuple):
    job: Job


class InputEnded(NamedTuple):
    #: Why reading failed, or None at a normal end of input.
    error: Optional[str] = None


#: Builds a job from its sequence number and raw command (plain text or JSONL).
JobFactory = Callable[[int, RawCommand], Job]


class Reader(threading.Thread):
    def __init__(
        self, fd: int, make_job: JobFactory, post: Callable[[object], None], read_ahead: int,
        continuation: bool = True,
    ) -> None:
        # Daemon: at exit the thread may still block in read(); nothing of
        # ours is lost by leaving it there.
        super().__init__(daemon=True, name="reader")
        self._fd = fd
        self._make_job = make_job
        self._post = post
        self._room = threading.Semaphore(read_ahead)
        self._count = 0
        self._continuation = continuation

    def job_taken(self) -> None:
        """The loop started (or dropped) a job: one more may be read."""
        self._room.release()

    def run(self) -> None:
        splitter = LineSplitter()
        assembler = CommandAssembler(continuation=self._continuation)
        try:
            while True:
                chunk = os.read(self._fd, CHUNK)
                if not chunk:
                    break
                for line in splitter.feed(chunk):
                    self._emit(assembler.feed(line))
        except OSError as exc:
            self._post(InputEnded(f"cannot read the input: {exc.strerror or exc}"))
            return
        last = splitter.end()
        if last is not None:
            self._emit(assembler.feed(last))
        self._emit(assembler.end())
        self._post(InputEnded())

    def _emit(self, raw: Optional[RawCommand]) -> None:
        if raw is None:
            return
        self._room.acquire()
        self._count += 1
        self._post(JobRead(self._make_job(self._count, raw)))
