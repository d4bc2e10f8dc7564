"""The job log: one row per finished attempt, in GNU parallel's layout.

Columns (tab-separated, with a header row, as ``parallel --joblog`` writes):
``Seq Host Starttime JobRuntime Send Receive Exitval Signal Command``. Host
holds the job's GPUs (``gpu:0,1``); Send and Receive are 0 (we do not count
bytes). A command is stored as bytes with backslash, tab, newline, carriage
return and NUL escaped (``\\\\ \\t \\n \\r \\0``), so every command, multi-line or
not UTF-8, reads back exactly.

Formatting, parsing and the resume rule are pure; `JobLogWriter` and
`read_joblog` are the only file I/O.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from typing import TYPE_CHECKING, Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple

from ..model.jobs import exit_and_signal

if TYPE_CHECKING:
    from ..model.jobs import Job, Outcome

HEADER = b"Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand"

_ESCAPES = {b"\\": b"\\\\", b"\t": b"\\t", b"\n": b"\\n", b"\r": b"\\r", b"\0": b"\\0"}
_UNESCAPES = {b"\\": b"\\", b"t": b"\t", b"n": b"\n", b"r": b"\r", b"0": b"\0"}


class JobLogError(Exception):
    """The file is not a job log this program can read; the message says why."""


class Row(NamedTuple):
    seq: int
    host: str
    start: float
    runtime: float
    exitval: int
    signal: int
    command: bytes

    @property
    def succeeded(self) -> bool:
        return self.exitval == 0 and self.signal == 0


def escape(command: bytes) -> bytes:
    if not any(ch in command for ch in _ESCAPES):
        return command
    return b"".join(_ESCAPES.get(command[i:i + 1], command[i:i + 1]) for i in range(len(command)))


def unescape(text: bytes) -> bytes:
    if b"\\" not in text:
        return text
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i:i + 1]
        if ch == b"\\":
            code = text[i + 1:i + 2]
            if code not in _UNESCAPES:
                raise ValueError(f"unknown escape \\{code.decode('latin-1')} in the command")
            out += _UNESCAPES[code]
            i += 2
        else:
            out += ch
            i += 1
    return bytes(out)


def format_row(row: Row) -> bytes:
    fields = (
        str(row.seq), row.host, f"{row.start:.3f}", f"{row.runtime:.3f}", "0", "0",
        str(row.exitval), str(row.signal),
    )
    return "\t".join(fields).encode() + b"\t" + escape(row.command) + b"\n"


def parse_row(line: bytes) -> Row:
    """One data line (without its newline) back into a `Row`; ValueError if it is not one."""
    fields = line.split(b"\t")
    if len(fields) != 9:
        raise ValueError(f"expected 9 tab-separated fields, found {len(fields)}")
    try:
        return Row(
            seq=int(fields[0]),
            host=fields[1].decode("utf-8", "replace"),
            start=float(fields[2]),
            runtime=float(fields[3]),
            exitval=int(fields[6]),
            signal=int(fields[7]),
            command=unescape(fields[8]),
        )
    except ValueError as exc:
        raise ValueError(str(exc) if "escape" in str(exc) else "a number field is not a number") from None


def parse_joblog(data: bytes) -> Tuple[List[Row], Optional[str], int]:
    """Rows of a whole file's bytes, a warning if the last line was cut, and the
    length of the intact part (where appending must start).

    An empty file is an empty log. A last line without its newline was being
    written when the writer died: it is ignored, with a warning. Anything else
    that does not parse means this is not a job log: `JobLogError`.
    """
    if not data:
        return [], None, 0
    lines = data.split(b"\n")
    cut = lines.pop()  # b"" when the file ends with a newline
    intact = len(data) - len(cut)
    warning = None
    if cut:
        warning = f"ignoring the cut last line ({len(cut)} bytes), left by a crash"
    if not lines:
        if HEADER.startswith(cut):
            return [], warning, 0
        raise JobLogError("it does not start with the job log header")
    if lines[0].rstrip(b"\r") != HEADER:
        raise JobLogError("it does not start with the job log header")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        try:
            rows.append(parse_row(line))
        except ValueError as exc:
            raise JobLogError(f"line {number}: {exc}") from None
    return rows, warning, intact


def read_joblog(path: str) -> Tuple[List[Row], Optional[str], int]:
    """`parse_joblog` of a file; a missing file is an empty log."""
    try:
        # Only a regular file: /dev/stdout or a FIFO would be read forever.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise JobLogError("it is not a regular file")
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return [], None, 0
    except OSError as exc:
        raise JobLogError(exc.strerror or str(exc)) from None
    return parse_joblog(data)


class ResumeFilter:
    """Which input commands a resumed run skips.

    Matching is by command text, not by position, so a reshuffled sweep
    resumes too; duplicates are counted: a command that is in the input twice
    and succeeded once runs once more.

    - ``--resume``: an input command is skipped as often as it has jobs in the
      log, counting one per distinct Seq (retries of one job share their Seq);
    - ``--resume-failed``: as often as it has successful rows (a job succeeds
      at most once), so failed ones run again.
    """

    def __init__(self, rows: Iterable[Row], failed_too: bool) -> None:
        counts: Counter = Counter()
        if failed_too:
            counts.update(row.command for row in rows if row.succeeded)
        else:
            seen: Set[Tuple[bytes, int]] = set()
            for row in rows:
                if (row.command, row.seq) not in seen:
                    seen.add((row.command, row.seq))
                    counts[row.command] += 1
        self._left: Dict[bytes, int] = dict(counts)
        self.skipped = 0

    def skip(self, command: bytes) -> bool:
        """True if this occurrence of `command` was done already (and count it)."""
        left = self._left.get(command, 0)
        if left <= 0:
            return False
        self._left[command] = left - 1
        self.skipped += 1
        return True


class JobLogWriter:
    """Appends rows; each row is one ``write`` to the kernel as the attempt ends,
    so a crash of the scheduler loses no finished row. (No fsync per row: it
    would cost more than a short job, and only a power loss needs it.)"""

    def __init__(self, path: str, keep: int) -> None:
        """Open `path` for appending after its first `keep` bytes (dropping a cut
        last line); write the header if the file is new or empty."""
        # O_APPEND: every row lands at the end, also when several schedulers
        # (one per GPU group, say) share one log.
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        if os.fstat(self._fd).st_size > keep:
            os.ftruncate(self._fd, keep)
        if keep == 0:
            os.ftruncate(self._fd, 0)
            self._write(HEADER + b"\n")

    def write(self, row: Row) -> None:
        self._write(format_row(row))

    def write_attempt(
        self, job: Job, gpus: Sequence[str], start: float, runtime: float, outcome: Outcome
    ) -> None:
        """The row of one ended attempt of `job` (Seq is the job's number)."""
        exitval, signum = exit_and_signal(outcome)
        self.write(Row(
            seq=job.id, host="gpu:" + ",".join(gpus), start=start, runtime=runtime,
            exitval=exitval, signal=signum, command=job.command))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def close(self) -> None:
        os.close(self._fd)
