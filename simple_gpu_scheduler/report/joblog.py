"""The job log: one row per finished attempt, in GNU parallel's layout.

Columns (tab-separated, with a header row, as ``parallel --joblog`` writes):
``Seq Host Starttime JobRuntime Send Receive Exitval Signal Command``. Host
holds the job's GPUs (``gpu:0,1``); Send and Receive are 0 (we do not count
bytes). A command is stored as bytes with backslash, tab, newline, carriage
return and NUL escaped (``\\\\ \\t \\n \\r \\0``), so every command, multi-line or
not UTF-8, reads back exactly.

Several schedulers may share one log (one per GPU group, say), and any of
them may be killed in the middle of a row. So the log is never truncated or
rewritten, only appended to, and a cut row stays where it is:

- a writer that finds the file not ending in a newline (someone's cut row)
  writes the mark ``\t\n`` before its own row: the cut line is closed, and
  ends in a tab, which no row does (a command is escaped and never empty);
- the reader skips, with a warning, every cut line wherever it is: one that
  ends in the mark, the last line when it has no newline, and a line that is a
  prefix of a row (cut, then given a newline by hand or by an editor). Any
  other line that is not a row still means the file is not a job log. A
  header line after the first (two schedulers created the log at once) and a
  lone mark (two writers closed the same cut) are skipped quietly.

GNU parallel's readers match rows by their fields, so a cut line, marked or
not, is skipped by them too.

Formatting, parsing and the resume rule are pure; `JobLogWriter` and
`read_joblog` are the only file I/O.
"""

from __future__ import annotations

import os
import stat
from collections import Counter

from ..model.jobs import exit_and_signal
from ..model.record import Record

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

    from ..model.jobs import Job, Outcome

HEADER = b"Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand"
#: What a writer puts after a cut line before its own row (see the module docstring).
MARK = b"\t\n"

_ESCAPES = {b"\\": b"\\\\", b"\t": b"\\t", b"\n": b"\\n", b"\r": b"\\r", b"\0": b"\\0"}
_UNESCAPES = {b"\\": b"\\", b"t": b"\t", b"n": b"\n", b"r": b"\r", b"0": b"\0"}


class JobLogError(Exception):
    """The file is not a job log this program can read; the message says why."""


class Row(Record):
    """One row: one ended attempt of a job (Seq is the job's number)."""

    __slots__ = ("seq", "host", "start", "runtime", "exitval", "signal", "command")

    def __init__(
        self, seq: int, host: str, start: float, runtime: float, exitval: int, signal: int,
        command: bytes,
    ) -> None:
        self.seq = seq
        self.host = host
        self.start = start
        self.runtime = runtime
        self.exitval = exitval
        self.signal = signal
        self.command = command

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
        why = str(exc) if "escape" in str(exc) else "a number field is not a number"
        raise ValueError(why) from None


def parse_joblog(data: bytes) -> Tuple[List[Row], Optional[str], int]:
    """Rows of a whole file's bytes, a warning if it holds cut lines, and the
    length of the part that ends in a newline.

    An empty file is an empty log. The file must start with the header (or
    with a header cut by a crash); after it, every line is a row, a cut line
    (skipped, named in the warning) or one of the lines skipped quietly, as the
    module docstring says. Anything else means this is not a job log:
    `JobLogError`.
    """
    if not data:
        return [], None, 0
    lines = data.split(b"\n")
    last = lines.pop()  # b"" when the file ends with a newline
    if last:
        lines.append(last)
    intact = len(data) - len(last)
    unterminated = len(lines) if last else 0  # the number of the line without newline
    cut: List[Tuple[int, int]] = []  # (line number, bytes) of each cut line

    first = lines[0]
    if first.rstrip(b"\r") != HEADER:
        # A cut header: the file's only line, or closed by a writer's mark.
        closed = first[:-1] if first.endswith(b"\t") else first if unterminated == 1 else b""
        if not (closed and HEADER.startswith(closed)):
            raise JobLogError("it does not start with the job log header")
        cut.append((1, len(first)))
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if line.rstrip(b"\r") == HEADER or line == b"\t":
            continue
        if line.endswith(b"\t") or number == unterminated:
            cut.append((number, len(line)))
            continue
        try:
            rows.append(parse_row(line))
        except ValueError as exc:
            if not _row_prefix(line):
                raise JobLogError(f"line {number}: {exc}") from None
            cut.append((number, len(line)))
    return rows, _cut_warning(cut, unterminated), intact


def _cut_warning(cut: Sequence[Tuple[int, int]], unterminated: int) -> Optional[str]:
    if not cut:
        return None
    if len(cut) == 1:
        number, size = cut[0]
        which = "last line" if number == unterminated else f"line {number}"
        return f"ignoring the cut {which} ({size} bytes), left by a crash"
    numbers = ", ".join(str(number) for number, _ in cut)
    return f"ignoring {len(cut)} cut lines ({numbers}), left by crashes"


#: What each field of a row holds, in order.
_KINDS = ("int", "text", "float", "float", "int", "int", "int", "int", "command")


def _row_prefix(line: bytes) -> bool:
    """Whether `line` is the start of a row cut short: its whole fields are
    valid, the last one is the start of a valid one. A blank line is none: no
    writer leaves one."""
    fields = line.split(b"\t")
    if not line or len(fields) > len(_KINDS):
        return False
    *whole, part = fields
    return all(_valid(kind, field) for kind, field in zip(_KINDS, whole)) and _valid(
        _KINDS[len(whole)], part, cut=True)


def _valid(kind: str, field: bytes, cut: bool = False) -> bool:
    if kind == "text":
        return True
    if kind == "command":
        if cut and (len(field) - len(field.rstrip(b"\\"))) % 2:
            field = field[:-1]  # cut between a backslash and what it escapes
        try:
            unescape(field)
        except ValueError:
            return False
        return True
    if not cut:
        try:
            int(field) if kind == "int" else float(field)
        except ValueError:
            return False
        return True
    digits = field.lstrip(b" ")  # GNU parallel pads its numbers with spaces
    digits = digits[1:] if digits.startswith(b"-") else digits
    if kind == "float":
        digits = digits.replace(b".", b"", 1)
    return digits == b"" or digits.isdigit()


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
    would cost more than a short job, and only a power loss needs it.)

    The file is only ever appended to, never truncated: other schedulers may
    be appending to it at the same moment (see the module docstring)."""

    def __init__(self, path: str, keep: Optional[int] = None) -> None:
        """Open `path` for appending; write the header if the file has none yet.

        `keep` is not used (it is what `read_joblog` returned as the length of
        the part ending in a newline): what the file holds when a row is
        written decides, because other schedulers may have appended since it
        was read.
        """
        # O_APPEND: every row lands at the end, also when several schedulers
        # (one per GPU group, say) share one log. Read access for `_append`'s look
        # at the last byte.
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            # No complete first line: the file is new, empty, or holds only a
            # header cut by a crash (the reader accepted nothing else). Two new
            # schedulers may both write one: readers skip the second.
            if b"\n" not in os.pread(self._fd, len(HEADER) + 1, 0):
                self._append(HEADER + b"\n")
        except OSError:
            os.close(self._fd)
            raise

    def write(self, row: Row) -> None:
        self._append(format_row(row))

    def write_attempt(
        self, job: Job, gpus: Sequence[str], start: float, runtime: float, outcome: Outcome,
        node: str = "",
    ) -> None:
        """The row of one ended attempt of `job` (Seq is the job's number). Host
        is its GPUs, ``gpu:0,1``, with the cluster node after an ``@``:
        ``gpu:0@10.0.0.7``; ``-`` for an attempt that never reached a GPU (a
        Ray task cancelled while it waited for one)."""
        exitval, signum = exit_and_signal(outcome)
        host = "gpu:" + ",".join(gpus) + (f"@{node}" if node else "") if gpus or node else "-"
        self.write(Row(
            seq=job.id, host=host, start=start, runtime=runtime,
            exitval=exitval, signal=signum, command=job.command))

    def _append(self, data: bytes) -> None:
        # A last line without its newline is a row some writer was killed in
        # the middle of: close it with the mark, so ours starts a line of its
        # own instead of being glued to it. Looked at before every row, as any
        # writer may die at any time. If another writer's row lands between
        # this look and our write, the mark becomes a line of its own, which
        # readers skip.
        size = os.fstat(self._fd).st_size
        if size and os.pread(self._fd, 1, size - 1) != b"\n":
            data = MARK + data
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def close(self) -> None:
        os.close(self._fd)
