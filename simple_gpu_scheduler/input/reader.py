"""stdin to jobs, read by the engine's own loop: no reader thread.

The engine watches fd 0 in its selector only while it has room for more
jobs (its read-ahead), calls `InputSource.read` when the fd is readable, and
`take`s jobs one by one. A chunk of input can hold many commands; those not
taken yet wait here as raw bytes, so a generator of ten million lines waits
in its pipe, not in our memory.

Because everything read is held here until it is taken, a drain can list
every command read and not started (`drain`): nothing read is ever lost, and
the summary's counts add up to what was read.
"""

from __future__ import annotations

import os
import stat
from collections import deque

from ..model.jobs import Job
from .lines import MAX_COMMAND_BYTES, CommandAssembler, LineSplitter

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Callable, Deque, List, Optional

    from .jsonl import Defaults
    from .lines import RawCommand

    #: Builds a job from its sequence number and raw command (plain text or JSONL).
    JobFactory = Callable[[int, RawCommand], Job]

#: Bytes per read. Small enough that the commands of one chunk cost little
#: memory while they wait for room, large enough for few system calls.
CHUNK = 16 * 1024
#: Bytes per read when counting the commands of a file up front: less than
#: the longest command, so a line inside one chunk is never an over-long one.
COUNT_CHUNK = 64 * 1024
assert COUNT_CHUNK < MAX_COMMAND_BYTES


def count_commands(fd: int, continuation: bool = True) -> Optional[int]:
    """How many commands the regular file on `fd` holds from its current offset
    on, cut as `InputSource` cuts them (comments, blank lines and continuations
    count as the run counts them), or None when `fd` is no regular file (a pipe,
    a terminal: its end is not known) or cannot be read.

    Reads with ``os.pread``: the fd's offset does not move, and nothing is
    held but one chunk. For ``--progress``, which can then show the whole queue
    and an ETA from the start. Each chunk's first line and its cut last line go
    through the same `LineSplitter` and `CommandAssembler` as the run; the
    whole lines between are counted at C speed (lines minus blank and comment
    lines) unless a backslash could make one a continuation.
    """
    import re

    skipped = re.compile(rb"^[ \t\x0b\x0c\r]*(?:#[^\n]*)?\n", re.M)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        offset = os.lseek(fd, 0, os.SEEK_CUR)
        splitter = LineSplitter(MAX_COMMAND_BYTES + 1)
        assembler = CommandAssembler(continuation=continuation)
        count = 0
        #: the last chunk's cut line holds a backslash: this chunk's first
        #: newline may end a line that continues
        carry = False

        def slow(data: bytes) -> int:
            return sum(assembler.feed(line) is not None for line in splitter.feed(data))

        while True:
            chunk = os.pread(fd, COUNT_CHUNK, offset)
            if not chunk:
                break
            offset += len(chunk)
            first = chunk.find(b"\n") + 1
            last = chunk.rfind(b"\n") + 1
            if not first:
                count += slow(chunk)
                carry = carry or b"\\" in chunk
                continue
            head, middle, tail = chunk[:first], chunk[first:last], chunk[last:]
            count += slow(head)  # ends what the last chunk left open
            if continuation and (carry or b"\\" in head or b"\\" in middle):
                count += slow(middle)
            else:
                count += middle.count(b"\n") - len(skipped.findall(middle))
            count += slow(tail)
            carry = b"\\" in tail
    except OSError:
        return None
    end = splitter.end()
    if end is not None and assembler.feed(end) is not None:
        count += 1
    return count + (assembler.end() is not None)


def job_factory(
    jsonl: bool, gpus: int = 1, timeout: Optional[float] = None, retries: int = 0,
    aliases: Optional[dict] = None,
) -> JobFactory:
    """How a raw command becomes a job: a plain-text line gets the command
    line's defaults; a JSON line (``--input jsonl``) brings its own."""
    if jsonl:
        defaults: List[Defaults] = []  # built on the first JSON line: json costs start-up

        def from_json(seq: int, raw: RawCommand) -> Job:
            from .jsonl import Defaults, parse_job

            if not defaults:
                defaults.append(Defaults(
                    gpus=gpus, aliases=aliases or {}, timeout=timeout, retries=retries))
            return parse_job(seq, raw, defaults[0])

        return from_json

    def from_text(seq: int, raw: RawCommand) -> Job:
        return Job(id=seq, command=raw.text, gpus=gpus, invalid=raw.invalid,
                   timeout=timeout, retries=retries)

    return from_text


class InputSource:
    """The commands on one file descriptor, cut and numbered from 1."""

    def __init__(self, fd: int, make_job: JobFactory, continuation: bool = True) -> None:
        self.fd = fd
        self._make_job = make_job
        self._splitter = LineSplitter(MAX_COMMAND_BYTES + 1)  # + 1: a CRLF line's CR
        self._assembler = CommandAssembler(continuation=continuation)
        #: read from the fd, not taken yet
        self._ready: Deque[RawCommand] = deque()
        self.at_end = False
        #: why reading failed, once it has
        self.error: Optional[str] = None
        #: the highest job id given so far (`next_id`)
        self.count = 0

    @property
    def buffered(self) -> int:
        return len(self._ready)

    def wants_read(self) -> bool:
        """Whether reading could give a new command (none is waiting here)."""
        return not self.at_end and not self._ready

    def read(self) -> None:
        """Read one chunk (call when the fd is readable; it does not block then)."""
        try:
            chunk = os.read(self.fd, CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            self.error = f"cannot read the input: {exc.strerror or exc}"
            self._end()
            return
        if not chunk:
            self._end()
            return
        for line in self._splitter.feed(chunk):
            raw = self._assembler.feed(line)
            if raw is not None:
                self._ready.append(raw)

    def take(self) -> Optional[Job]:
        """The next command read, as a job, or None if none is waiting."""
        if not self._ready:
            return None
        return self._make_job(self.next_id(), self._ready.popleft())

    def next_id(self) -> int:
        """A new job id: the input's commands and jobs added by a control
        client share one numbering, so ids never repeat within a run."""
        self.count += 1
        return self.count

    def drain(self) -> List[Job]:
        """Stop reading: every command read and not taken, a cut last line
        included, as jobs (to be listed as not started)."""
        if not self.at_end:
            self._end()
        jobs = []
        while self._ready:
            job = self.take()
            assert job is not None
            jobs.append(job)
        return jobs

    def _end(self) -> None:
        """The commands still held by the splitter and assembler (a last line
        without a newline, a continuation cut off)."""
        self.at_end = True
        last = self._splitter.end()
        if last is not None:
            raw = self._assembler.feed(last)
            if raw is not None:
                self._ready.append(raw)
        raw = self._assembler.end()
        if raw is not None:
            self._ready.append(raw)
