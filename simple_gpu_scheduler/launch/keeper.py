"""The recent output of jobs whose output we copy, for ``log`` requests.

When job output comes through our copies (``--tag``, ``--progress``), each
chunk a copy reads is also handed to `OutputKeeper.tap`'s function, on the
copier's thread. The keeper holds the last `KEEP` bytes of each job (its
stdout and stderr chunks in the order they were read), for the running jobs
and the `FINISHED` jobs that ended last: memory is bounded however long the
run and however much the jobs print.

A follower (``log -f``) registers with `follow`, which returns what is kept
and, under the same lock, makes every later chunk of that job go to the
keeper's `listener` too: nothing is lost or sent twice between the two.
The listener is called on the copier's thread; it must only hand the chunk
over to the engine's thread (`call_soon_threadsafe`). When the last of a
followed job's streams ends, the listener gets ``(job id, "closed", b"")``:
a job is known to have ended at its shell's exit, and what it printed just
before may still be on its way (`streams_open`).

Output that goes straight to our stdout (the default) is never seen here;
nor is ``--log-dir``'s, whose files hold it all.
"""

from __future__ import annotations

import _thread
from collections import OrderedDict, deque

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Callable, Deque, Dict, List, Optional, Set, Tuple

    Chunk = Tuple[str, bytes]  # ("out" or "err", bytes)

#: Bytes kept of each job's output (stdout and stderr together).
KEEP = 256 * 1024
#: Finished jobs whose output is still kept.
FINISHED = 64


class _Kept:
    __slots__ = ("chunks", "size", "seq")

    def __init__(self) -> None:
        self.chunks: Deque[Chunk] = deque()
        self.size = 0
        #: chunks added so far: the number of the last one
        self.seq = 0

    def add(self, stream: str, data: bytes) -> None:
        self.seq += 1
        if len(data) >= KEEP:
            self.chunks.clear()
            self.size = 0
            data = data[-KEEP:]
        self.chunks.append((stream, data))
        self.size += len(data)
        while self.size > KEEP:
            old_stream, old = self.chunks.popleft()
            excess = self.size - KEEP
            if len(old) > excess:
                self.chunks.appendleft((old_stream, old[excess:]))
                self.size -= excess
            else:
                self.size -= len(old)


class OutputKeeper:
    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        #: job id -> its kept output; finished jobs move to the end, oldest first
        self._jobs: OrderedDict[int, _Kept] = OrderedDict()
        self._running: Set[int] = set()
        self._followed: Set[int] = set()
        #: job id -> its streams not ended yet
        self._open: Dict[int, int] = {}
        #: gets (job id, stream, bytes, number) of followed jobs' chunks, on
        #: the copier's thread; a chunk's number is its place in the job's output
        self.listener: Optional[Callable[[int, str, bytes, int], None]] = None

    def tap(self, job_id: int, stream: str) -> Callable[[bytes], None]:
        """The function a copy calls with each chunk of `job_id`'s `stream`."""
        with self._lock:
            if job_id not in self._jobs:
                self._jobs[job_id] = _Kept()
            self._running.add(job_id)
            self._open[job_id] = self._open.get(job_id, 0) + 1

        def tapped(data: bytes) -> None:
            # An empty chunk: the stream has ended (`copier.Copy` says so).
            with self._lock:
                followed = job_id in self._followed and self.listener is not None
                if not data:
                    left = self._open.get(job_id, 1) - 1
                    if left > 0:
                        self._open[job_id] = left
                        return
                    self._open.pop(job_id, None)
                    if followed:
                        self.listener(job_id, "closed", b"", 0)  # type: ignore[misc]
                    return
                kept = self._jobs.get(job_id)
                if kept is None:  # its output is forgotten already: still number it
                    kept = self._jobs[job_id] = _Kept()
                kept.add(stream, data)
                if followed:
                    self.listener(job_id, stream, data, kept.seq)  # type: ignore[misc]

        return tapped

    def knows(self, job_id: int) -> bool:
        with self._lock:
            return job_id in self._jobs

    def streams_open(self, job_id: int) -> bool:
        with self._lock:
            return job_id in self._open

    def follow(self, job_id: int, on: Optional[bool] = True) -> Tuple[List[Chunk], int]:
        """What is kept of `job_id`, and the number of its last chunk (what a
        follower has had: a chunk on its way with that number or lower is not
        for it); with `on` True, later chunks go to `listener`, with False
        they stop going there, with None nothing changes."""
        with self._lock:
            if on:
                self._followed.add(job_id)
            elif on is False:
                self._followed.discard(job_id)
            kept = self._jobs.get(job_id)
            if kept is None:
                return [], 0
            return list(kept.chunks), kept.seq

    def job_done(self, job_id: int) -> None:
        """`job_id` will print no more: its output is kept among the finished."""
        with self._lock:
            self._running.discard(job_id)
            kept = self._jobs.pop(job_id, None)
            if kept is None:
                return
            self._jobs[job_id] = kept  # to the end: the newest finished
            finished = [i for i in self._jobs if i not in self._running]
            for old in finished[: max(0, len(finished) - FINISHED)]:
                del self._jobs[old]
