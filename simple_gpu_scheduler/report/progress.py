"""``--progress``: one status line on stderr, and the end-of-run summary.

On a terminal the line is redrawn in place (``\\r`` + erase-line); every other
write to the terminal goes through `output.write_fd`, which takes the line
away first and puts it back after, so a job's output line is never torn. On a
pipe or file a plain line is printed instead, at most every `PLAIN_EVERY`
seconds. The text of the line and of the summary are pure functions of a
`Snapshot`.
"""

from __future__ import annotations

import time

from ..model.units import format_clock
from . import console as output
from .messages import summary_lines

__all__ = ["summary_lines"]  # the summary is worded in `messages`; named here too

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Sequence

    from ..model.snapshot import Snapshot

#: Seconds between plain progress lines when stderr is not a terminal, and
#: between lines that say nothing new (a long job still running).
PLAIN_EVERY = 5.0
PLAIN_UNCHANGED_EVERY = 60.0
#: Seconds between redraws on a terminal (the clock in the line moves).
REDRAW_EVERY = 1.0


def progress_text(snap: Snapshot) -> str:
    """``done 12 | failed 1 | running 4 | queued 8 | 0:03:10 | 3.9/min | ETA 0:02:03``.

    While the input is open, queued reads ``8+`` (more may come) and there is
    no ETA, unless the input's total is known (`Snapshot.total`, a regular file
    counted up front): then queued is exact and the ETA shows from the start."""
    done = snap.succeeded + snap.failed
    known = not snap.input_open or snap.total is not None
    parts = [
        f"done {snap.succeeded}", f"failed {snap.failed}", f"running {len(snap.running)}",
        f"queued {snap.queued}{'' if known else '+'}", format_clock(snap.elapsed),
    ]
    rate = done / snap.elapsed if snap.elapsed > 0 else 0.0
    parts.append(f"{rate:.2f}/s" if rate >= 1 else f"{rate * 60:.1f}/min")
    if known:
        left = snap.queued + len(snap.running)
        parts.append(f"ETA {format_clock(left / rate)}" if rate > 0 and left else "ETA -")
    return " | ".join(parts)


def resume_command(argv: Sequence[str]) -> str:
    """The command line that resumes this run: ours, with --resume-failed."""
    kept = [a for a in argv if a not in ("--resume", "--resume-failed")]
    import shlex  # only with --joblog

    return shlex.join(["simple_gpu_scheduler", *kept, "--resume-failed"])


class ProgressLine:
    """Shows a `Snapshot` as the status line, redrawn or printed as plain lines."""

    def __init__(self, tty: bool, fd: int = 2) -> None:
        self._tty = tty
        self._fd = fd
        self._last_plain = float("-inf")
        self._last_text = ""

    @property
    def interval(self) -> float:
        return REDRAW_EVERY if self._tty else PLAIN_EVERY

    def show(self, snap: Snapshot, force: bool = False) -> None:
        text = progress_text(snap)
        if self._tty:
            output.set_status_line(self._fd, text.encode())
            return
        now = time.monotonic()
        changed = text.split(" | ")[:4] != self._last_text.split(" | ")[:4]
        wait = PLAIN_EVERY if changed else PLAIN_UNCHANGED_EVERY
        if force or now - self._last_plain >= wait:
            self._last_plain = now
            self._last_text = text
            output.write_fd(self._fd, f"[sgs] progress: {text}\n".encode())

    def close(self) -> None:
        if self._tty:
            output.set_status_line(self._fd, None)
