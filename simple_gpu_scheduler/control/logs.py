"""``log`` requests: a job's output so far, and followed as it is printed.

Where the output is depends on the run's output mode:

- ``--log-dir``: the job's files, read here from an offset (the whole file,
  or from where its last N lines begin), and with ``follow`` read again
  every `FOLLOW_EVERY` seconds for what was appended: a timer that exists
  only while somebody follows, so an idle run still sleeps;
- ``--tag`` / ``--progress``: what `launch.keeper.OutputKeeper` keeps, and
  with ``follow`` each chunk as a copy reads it (handed over from the
  copier's thread with `call_soon_threadsafe`);
- the default, output straight to our stdout: never seen, so refused with
  a sentence that says which options make it followable. Interposing a pipe
  by default would cost every run a copy, and the jobs their terminal
  (colour, progress bars, line buffering); we keep the default as it is.

A client that reads slowly is fed only as its connection drains (at most
`BACKLOG` bytes pending), so following a 10 GB log costs no memory.
"""

from __future__ import annotations

import os
import stat

from ..engine.steering import Refused, require_job
from ..launch.streams import LogDir
from . import views
from .wire import output_field

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Set, Tuple, TypeVar

    from ..engine.loop import Loop
    from ..launch.keeper import Chunk, OutputKeeper
    from ..launch.streams import OutputMode
    from ..model.jobs import Job
    from .server import Connection

    T = TypeVar("T")

#: Seconds between two looks at a followed log file.
FOLLOW_EVERY = 0.25
#: Bytes read from a log file at once.
CHUNK = 64 * 1024
#: Bytes that may wait for a client before more of a file is read for it.
BACKLOG = 1024 * 1024
#: Bytes of log files sent to one client in one turn of the engine's loop.
PUMP_BUDGET = 1024 * 1024
#: The most bytes `log -n N` reads back from a file's end to find N lines.
TAIL_SCAN = 16 * 1024 * 1024
#: Seconds a follower waits, after its job is done, for the job's streams to
#: close (something the job left behind may hold them open).
OUTPUT_PATIENCE = 2.0

NOT_KEPT = ("job output goes straight to the scheduler's stdout and is not kept; start the "
            "run with --tag (the last 256 KiB of each job is kept) or --log-dir DIR (every "
            "job's output in files) to see it with log")


class _Target:
    """One followed job: its files and how far they have been sent."""

    __slots__ = ("job_id", "files", "offsets", "ended", "state", "seen")

    def __init__(self, job_id: int, files: Optional[Tuple[str, str]]) -> None:
        self.job_id = job_id
        self.files = files
        self.offsets = [0, 0]
        #: the number of the last kept chunk this follower has had (`keeper`)
        self.seen = 0
        #: done for good: once its files are sent to their end, say so
        self.ended = False
        self.state: Optional[str] = None


class _Session:
    __slots__ = ("connection", "follow", "every", "targets", "timer")

    def __init__(self, connection: Connection, follow: bool, every: bool) -> None:
        self.connection = connection
        self.follow = follow
        self.every = every
        self.targets: Dict[int, _Target] = {}
        self.timer: Any = None


class LogSessions:
    def __init__(self, loop: Loop, output: OutputMode,
                 keeper: Optional[OutputKeeper] = None) -> None:
        self.loop = loop
        self.files = output if isinstance(output, LogDir) else None
        self.keeper = keeper if self.files is None else None
        self._sessions: Dict[Connection, _Session] = {}
        #: job id -> sessions following it (kept output only)
        self._followers: Dict[int, Set[_Session]] = {}
        if self.keeper is not None:
            self.keeper.listener = self._from_copier

    # --- requests -------------------------------------------------------------------

    def open(self, connection: Connection, ids: List[int], every: bool, follow: bool,
             lines: Optional[int]) -> None:
        if self.files is None and self.keeper is None:
            raise Refused(NOT_KEPT)
        if connection in self._sessions:
            raise Refused("this connection follows a log already")
        state = self.loop.state
        if every:
            ids = sorted(state.active)
        names: Dict[int, Optional[str]] = {}
        for job_id in dict.fromkeys(ids):
            names[job_id] = self._known(job_id)
        session = _Session(connection, follow, every)
        connection.send({"ok": True, "ids": list(names)})
        for job_id, name in names.items():
            self._add(session, job_id, name, lines)
        if follow or self.files is not None:
            self._sessions[connection] = session  # answered over later turns
        if follow:
            for target in list(session.targets.values()):
                if target.job_id not in state.records:
                    self._ended(session, target, self._state_of(target.job_id))
        if self.files is not None:
            self._pump(session)
        elif follow:
            self._maybe_end(session)
        else:
            connection.send({"end": True})

    def _known(self, job_id: int) -> Optional[str]:
        """The job's name; refused if there is no such job or nothing of it is kept."""
        state = self.loop.state
        require_job(self.loop, job_id)
        record = state.records.get(job_id)
        if record is not None:
            return record.job.name
        row = views.finished_row(state, job_id)
        if self.keeper is not None and not self.keeper.knows(job_id) and (
                row is None or row.state not in ("not_started", "could_not_start")):
            raise Refused(f"job {job_id}'s output is no longer kept (the output of the running "
                          "jobs and of the last 64 that finished is; --log-dir keeps all)")
        return row.name if row is not None else None

    def _add(self, session: _Session, job_id: int, name: Optional[str],
             lines: Optional[int]) -> None:
        files = self.files.paths(job_id, name) if self.files is not None else None
        target = session.targets[job_id] = _Target(job_id, files)
        if files is not None:
            if lines is not None:
                target.offsets = [_tail_offset(path, lines) for path in files]
            return
        assert self.keeper is not None
        # A look without follow changes nobody's follow of the job.
        chunks, target.seen = self.keeper.follow(job_id, on=True if session.follow else None)
        if session.follow:
            self._followers.setdefault(job_id, set()).add(session)
        if lines is not None:
            chunks = _tail_chunks(chunks, lines)
        for stream, data in chunks:
            session.connection.send({"id": job_id, "stream": stream, **output_field(data)})

    # --- the engine's events --------------------------------------------------------

    def started(self, job: Job) -> None:
        for session in list(self._sessions.values()):
            if session.every and session.follow and job.id not in session.targets:
                session.connection.send({"started": job.id})
                self._add(session, job.id, job.name, None)

    def done(self, job_id: int) -> None:
        state = self._state_of(job_id)
        keeper = self.keeper
        for session in list(self._sessions.values()):
            target = session.targets.get(job_id)
            if target is None or not session.follow or target.ended:
                continue
            if keeper is None:
                self._ended(session, target, state)
                continue
            # What the job printed last may still be on its way from the
            # copier: say it ended once its streams are closed (or soon).
            target.state = state
            end = self._ender(session, target)
            if keeper.streams_open(job_id):
                self.loop.call_at(self.loop.clock() + OUTPUT_PATIENCE, end)
            else:
                # Closed already: its last chunks are in the loop's queue of
                # posted calls, and this goes in after them.
                self.loop.call_soon_threadsafe(end)

    def run_ended(self) -> None:
        for session in list(self._sessions.values()):
            if session.follow:
                session.every = False
                for target in list(session.targets.values()):
                    if not target.ended:
                        self._ended(session, target,
                                    target.state or self._state_of(target.job_id))
                if self.files is not None:
                    self._pump(session, final=True)
                elif not session.connection.closed and session.connection in self._sessions:
                    self._maybe_end(session)  # every job had ended: the end, said now

    def closed(self, connection: Connection) -> None:
        session = self._sessions.pop(connection, None)
        if session is None:
            return
        if session.timer is not None:
            session.timer.cancel()
        for job_id in session.targets:
            self._unfollow(session, job_id)

    # --- inside ---------------------------------------------------------------------

    def _state_of(self, job_id: int) -> Optional[str]:
        record = self.loop.state.records.get(job_id)
        if record is not None:
            return record.status
        row = views.finished_row(self.loop.state, job_id)
        return row.state if row is not None else None

    def _ender(self, session: _Session, target: _Target) -> Callable[[], None]:
        return lambda: self._ended(session, target, target.state)

    def _ended(self, session: _Session, target: _Target, state: Optional[str]) -> None:
        if target.ended or session.connection.closed:
            return
        target.ended = True
        target.state = state
        if target.files is None:  # kept output: every chunk before this was sent
            session.connection.send({"ended": target.job_id, "state": state})
            self._unfollow(session, target.job_id)
            self._maybe_end(session)

    def _maybe_end(self, session: _Session) -> None:
        if session.every or not all(t.ended for t in session.targets.values()):
            return
        session.connection.send({"end": True})
        self.closed(session.connection)

    def _unfollow(self, session: _Session, job_id: int) -> None:
        followers = self._followers.get(job_id)
        if followers is None:
            return
        followers.discard(session)
        if not followers:
            del self._followers[job_id]
            if self.keeper is not None:
                self.keeper.follow(job_id, on=False)

    def _from_copier(self, job_id: int, stream: str, data: bytes, seq: int) -> None:
        # On the copier's thread: hand over, act on the engine's.
        self.loop.call_soon_threadsafe(lambda: self._chunk(job_id, stream, data, seq))

    def _chunk(self, job_id: int, stream: str, data: bytes, seq: int) -> None:
        for session in list(self._followers.get(job_id, ())):
            target = session.targets.get(job_id)
            if target is None:
                continue
            if stream == "closed":
                if target.state is not None:
                    self._ended(session, target, target.state)  # it is done: say so
                continue
            if seq <= target.seen:
                continue  # it had this one already, in what was kept when it came
            target.seen = seq
            session.connection.send({"id": job_id, "stream": stream, **output_field(data)})

    def _pump(self, session: _Session, final: bool = False) -> None:
        """Send what the files hold beyond what was sent, as far as the client
        takes it; then look again later, or say the end."""
        connection = session.connection
        session.timer = None
        connection.on_drained = None
        if connection.closed:
            return
        backed_up = False
        budget = PUMP_BUDGET  # a 10 GB log is sent over many turns, not in one
        for target in list(session.targets.values()):
            if target.files is None:
                continue
            for n, stream in enumerate(("out", "err")):
                while True:
                    if connection.closed:
                        return
                    if connection.pending >= BACKLOG or budget <= 0:
                        backed_up = True
                        break
                    data = _read(target.files[n], target.offsets[n])
                    if not data:
                        break
                    target.offsets[n] += len(data)
                    budget -= len(data)
                    connection.send({"id": target.job_id, "stream": stream,
                                     **output_field(data)})
            if backed_up:
                break
            if session.follow and target.ended and target.state != "sent":
                connection.send({"ended": target.job_id, "state": target.state})
                target.state = "sent"
        if backed_up:
            if connection.pending >= BACKLOG:
                connection.on_drained = connection.guard(lambda: self._pump(session))
            else:  # the budget is spent: go on next turn, after what else is ready
                session.timer = self.loop.call_at(
                    self.loop.clock(), connection.guard(lambda: self._pump(session)))
            return
        if not session.follow or (not session.every and all(
                t.ended for t in session.targets.values())):
            connection.send({"end": True})
            self.closed(connection)
            return
        if not final:
            session.timer = self.loop.call_at(self.loop.clock() + FOLLOW_EVERY,
                                              connection.guard(lambda: self._pump(session)))


def _open_log(path: str) -> int:
    """The log file at `path` for reading, or -1: not there (yet), or not a
    regular file (a job that made its log a link to /dev/zero, or to a file
    of someone else's, gets nothing read through it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return -1
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
    except OSError:
        pass
    os.close(fd)
    return -1


def _read(path: str, offset: int) -> bytes:
    fd = _open_log(path)
    if fd < 0:
        return b""
    try:
        return os.pread(fd, CHUNK, offset)
    except OSError:
        return b""
    finally:
        os.close(fd)


def _last_lines(blocks: Iterable[Tuple[bytes, T]], lines: int) -> Optional[Tuple[T, int]]:
    """Where the last `lines` lines of a text begin: `blocks` are its pieces
    from the last to the first, each with a tag; the answer is the tag of
    the piece and the index in it, or None when the whole text is fewer
    lines. The text's own last newline ends its last line, no more."""
    seen = 0
    first = True
    for block, tag in blocks:
        index = len(block) - 1 if first and block.endswith(b"\n") else len(block)
        first = False
        while True:
            index = block.rfind(b"\n", 0, index)
            if index < 0:
                break
            seen += 1
            if seen == lines:
                return tag, index + 1
    return None


def _tail_offset(path: str, lines: int) -> int:
    """Where the last `lines` lines of the file at `path` begin: looked for
    in its last `TAIL_SCAN` bytes at most (a progress bar's log of ``\r`` and
    no newline would be read whole otherwise, on the engine's thread)."""
    fd = _open_log(path)
    if fd < 0:
        return 0
    try:
        end = os.fstat(fd).st_size
        if lines == 0:
            return end

        def blocks() -> Iterator[Tuple[bytes, int]]:
            position = end
            while position > max(0, end - TAIL_SCAN):
                start = max(0, position - CHUNK)
                yield os.pread(fd, position - start, start), start
                position = start

        found = _last_lines(blocks(), lines)
        return max(0, end - TAIL_SCAN) if found is None else found[0] + found[1]
    except OSError:
        return 0
    finally:
        os.close(fd)


def _tail_chunks(chunks: List[Chunk], lines: int) -> List[Chunk]:
    """The part of `chunks` that holds their last `lines` lines."""
    if lines == 0:
        return []
    found = _last_lines(((data, i) for i, (_, data) in reversed(list(enumerate(chunks)))),
                        lines)
    if found is None:
        return chunks
    i, index = found
    return [(chunks[i][0], chunks[i][1][index:])] + chunks[i + 1:]
