"""The status table (SIGUSR1, and later a status request), from a `Snapshot`."""

from __future__ import annotations

import os

from ..model.jobs import gpu_label
from ..model.units import format_duration

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import List, Optional

    from ..model.snapshot import Snapshot

#: The fewest characters of a command a row shows, however narrow the terminal:
#: less would tell nothing apart, so such a row wraps instead.
MIN_COMMAND = 20
#: The most characters of a job's name in its row (cut in the middle).
MAX_NAME = 32


def status_table(snap: Snapshot, width: Optional[int] = None) -> List[str]:
    """The SIGUSR1 status report as lines (pure, so tests can read it).

    With `width` (a terminal's, see `terminal_width`) a command too long for
    its row is cut in the middle: the start says what runs, the end is what
    tells the jobs of a sweep apart (``python train.py --da...--lr 0.001``).
    Without, commands are whole: a log file or a pipe has no width.
    """
    head = (
        f"status after {format_duration(snap.elapsed)}: {len(snap.running)} running, "
        f"{snap.succeeded} succeeded, {snap.failed} failed, {snap.queued} queued"
        + (f", {snap.not_started} not started" if snap.not_started else "")
        + ("" if snap.input_open else ", input ended")
    )
    lines = [head]
    if snap.running:
        gpu_width = max(len(gpu_label(r.gpus, r.host)) for r in snap.running)
        names = [cut_middle(r.name or "", MAX_NAME) for r in snap.running]
        # A NAME column only when some running job has a name (JSON lines).
        name_width = max(len(n) for n in names)
        name_head = f"{'NAME':<{name_width}}  " if name_width else ""
        lines.append(f"  {'JOB':>5}  {'GPU':<{gpu_width}}  {'TIME':>7}  {name_head}COMMAND")
        # What precedes the command: "  " + 5 + "  " + gpus + "  " + 7 + "  " (+ name + "  ").
        before = gpu_width + 20 + (name_width + 2 if name_width else 0)
        room = None if width is None else max(MIN_COMMAND, width - before)
        for r, name in zip(snap.running, names):
            shown = f"{name:<{name_width}}  " if name_width else ""
            lines.append(
                f"  {r.job_id:>5}  {gpu_label(r.gpus, r.host):<{gpu_width}}  "
                f"{format_duration(r.runtime):>7}  {shown}{cut_middle(r.command, room)}"
            )
    return lines


def cut_middle(text: str, room: Optional[int]) -> str:
    """`text` in at most `room` characters (None: no limit), cut in the middle
    with ``...``; the end gets the odd character less."""
    if room is None or len(text) <= room:
        return text
    keep = max(0, room - 3)
    tail = keep // 2
    return text[: keep - tail] + "..." + (text[-tail:] if tail else "")


def terminal_width(fd: int) -> Optional[int]:
    """The width of the terminal `fd` is, or None when it is none (a file, a
    pipe, closed). As `cli.main` does: ``COLUMNS`` first, then the terminal's
    own size (80 if it does not know it), without `shutil`, which costs
    start-up time."""
    try:
        if not os.isatty(fd):
            return None
    except OSError:
        return None
    try:
        columns = int(os.environ["COLUMNS"])
        if columns > 0:
            return columns
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(fd).columns or 80
    except OSError:
        return 80
