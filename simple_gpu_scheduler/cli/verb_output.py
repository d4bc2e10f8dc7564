"""What the client verbs print: pure functions from reply dicts to text.

``status`` and ``gpus`` rows, the ``ls`` table, ``log`` lines with their job
prefix, and ``wait``'s summary. No socket here, so the tests read them
without a server; the verbs themselves (parsing, talking) are in `verbs`.
"""

from __future__ import annotations

from ..model.jobs import printable
from ..model.units import format_duration
from ..report.status import MIN_COMMAND, cut_middle

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Sequence, Tuple


def status_text(runs: List[Dict[str, Any]], width: Optional[int]) -> str:
    """Every run's lines, a blank line between runs."""
    return "\n\n".join("\n".join(status_lines(run, width)) for run in runs) + "\n"


def status_lines(run: Dict[str, Any], width: Optional[int] = None) -> List[str]:
    """A RUN object (the ``status`` reply) as lines: a header, the counts, and
    one row per GPU and job on it. With `width` (a terminal's) commands are cut
    in the middle to fit; without, they are whole."""
    reading = {"open": "reading input", "ended": "input ended",
               "serving": "input ended, serving adds"}.get(str(run.get("input")), "input ?")
    header = (f"{run.get('name')} (pid {run.get('pid')}): "
              f"up {format_duration(float(run.get('elapsed') or 0))}, {reading}")
    if run.get("paused"):
        header += ", paused"
    if run.get("stopping"):
        header += f", stopping ({run['stopping']})"
    counts = run.get("counts") or {}
    shown = [f"{counts.get(key, 0)} {key}" for key in ("running", "queued", "succeeded", "failed")]
    shown += [f"{counts[key]} {key.replace('_', ' ')}"
              for key in ("not_started", "skipped") if counts.get(key)]
    return [header, "  " + ", ".join(shown)] + gpu_lines(
        run.get("gpus") or [], run.get("running") or [], width)


def gpu_lines(
    gpus: Sequence[Dict[str, Any]], running: Sequence[Dict[str, Any]],
    width: Optional[int] = None,
) -> List[str]:
    """One row per GPU (id, state, and why it is busy or lost in the COMMAND
    column) and per job on it (id, name, runtime, command). A job on several
    GPUs is shown whole on the first of them; running jobs on no listed GPU
    come last, under GPU ``-``."""
    jobs = {job.get("id"): job for job in running}
    rows: List[Tuple[str, str, str, str, str, str]] = []
    first: Dict[Any, str] = {}
    for gpu in gpus:
        gpu_id, state = str(gpu.get("id")), str(gpu.get("state"))
        job_ids = list(gpu.get("jobs") or [])
        for index, job_id in enumerate(job_ids):
            lead = (gpu_id, state) if index == 0 else ("", "")
            rows.append(lead + _job_cells(job_id, jobs.get(job_id), first.get(job_id)))
            first.setdefault(job_id, gpu_id)
        # Why it is busy or lost, where a command would be: a wide STATE
        # column would push every command right.
        why = f"({gpu['why']})" if gpu.get("why") else ""
        if why or not job_ids:
            rows.append(("", "", "", "", "", why) if job_ids else (gpu_id, state, "", "", "", why))
    for job in running:
        if job.get("id") not in first:
            rows.append(("-", "") + _job_cells(job.get("id"), job, None))
    if not rows:
        return []
    heads = ("GPU", "STATE", "JOB", "NAME", "TIME", "COMMAND")
    named = any(row[3] for row in rows)
    widths = [max([len(heads[col])] + [len(row[col]) for row in rows]) for col in range(5)]
    before = 2 + sum(w + 2 for col, w in enumerate(widths) if col != 3 or named)
    room = None if width is None else max(MIN_COMMAND, width - before)
    lines = []
    for row in [heads, *rows]:
        cells = [f"{row[0]:<{widths[0]}}", f"{row[1]:<{widths[1]}}", f"{row[2]:>{widths[2]}}"]
        if named:
            cells.append(f"{row[3]:<{widths[3]}}")
        cells += [f"{row[4]:>{widths[4]}}", cut_middle(row[5], room)]
        lines.append(("  " + "  ".join(cells)).rstrip())
    return lines


def _job_cells(
    job_id: Any, job: Optional[Dict[str, Any]], shown_on: Optional[str],
) -> Tuple[str, str, str, str]:
    if shown_on is not None:
        return str(job_id), "", "", f"(see gpu {shown_on})"
    if job is None:
        return str(job_id), "", "", ""
    runtime = job.get("runtime")
    # On a cluster the GPU rows are the cluster's slots: where the job really
    # runs comes before its command.
    where = f"[{gpus_text(job)}] " if job.get("host") else ""
    return (str(job_id), printable(job.get("name") or "", 32),
            "" if runtime is None else format_duration(float(runtime)),
            where + command_text(job))


def gpus_text(job: Dict[str, Any]) -> str:
    """A job's GPUs for a table: ``0,1``, ``0@10.0.0.7`` on a cluster node, or ``-``."""
    gpus = ",".join(str(g) for g in job.get("gpus") or []) or "-"
    return f"{gpus}@{job['host']}" if job.get("host") else gpus


def command_text(obj: Dict[str, Any]) -> str:
    """A reply's ``command`` (or ``command_b64``) on one line: what is not
    printable (a newline of a multi-line command, bytes that are not UTF-8)
    escaped."""
    command = obj.get("command")
    if not isinstance(command, str):
        import base64

        raw = base64.b64decode(obj.get("command_b64") or "")
        command = raw.decode("utf-8", "backslashreplace")
    return printable(command)


def ls_lines(jobs: Sequence[Dict[str, Any]]) -> List[str]:
    """The ``ls`` table: ID, NAME, STATE, GPUS, START (local time), TIME, EXIT
    (status, or the signal's name), TRIES, and the whole COMMAND last."""
    import time

    heads = ("ID", "NAME", "STATE", "GPUS", "START", "TIME", "EXIT", "TRIES", "COMMAND")
    rows = []
    for job in jobs:
        started, runtime = job.get("started"), job.get("runtime")
        if job.get("exit") is not None:
            ended = str(job["exit"])
        else:
            ended = str(job.get("signal") or "-")
        rows.append((
            str(job.get("id")),
            printable(job.get("name") or "-", 32),
            str(job.get("state")),
            gpus_text(job),
            "-" if started is None else time.strftime("%H:%M:%S", time.localtime(started)),
            "-" if runtime is None else format_duration(float(runtime)),
            ended,
            str(job.get("attempts", 0)),
            command_text(job),
        ))
    widths = [max([len(heads[col])] + [len(row[col]) for row in rows]) for col in range(8)]
    right = (0, 5, 6, 7)  # numbers align right
    lines = []
    for row in [heads, *rows]:
        cells = [f"{cell:>{w}}" if col in right else f"{cell:<{w}}"
                 for col, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join([*cells, row[8]]).rstrip())
    return lines


def ls_footer(forgotten: int) -> Optional[str]:
    """The line after the table when older finished jobs are no longer kept."""
    if forgotten <= 0:
        return None
    return (f"({forgotten} older finished job{'s' if forgotten != 1 else ''} not listed: "
            "a run keeps the latest 100,000, fewer for long commands)")


class LogLines:
    """``log`` output as bytes to write: with `prefix` (several jobs) each line
    starts with ``[ID] `` as --tag does, so a partial line is held, per job and
    stream, until its newline comes (or the job or the log ends)."""

    def __init__(self, prefix: bool) -> None:
        self.prefix = prefix
        self._partial: Dict[Tuple[int, str], bytes] = {}

    def feed(self, job_id: int, stream: str, data: bytes) -> bytes:
        """What to write now for this chunk of job `job_id`'s `stream`."""
        if not self.prefix:
            return data
        head = self._partial.pop((job_id, stream), b"") + data
        cut = head.rfind(b"\n") + 1
        if cut < len(head):
            self._partial[(job_id, stream)] = head[cut:]
        if not cut:
            return b""
        tag = f"[{job_id}] ".encode()
        return b"".join(tag + line + b"\n" for line in head[: cut - 1].split(b"\n"))

    def finish(self, job_id: Optional[int] = None) -> List[Tuple[str, bytes]]:
        """The held partial lines of `job_id` (None: of every job), as
        (stream, bytes) with a newline added, in job order."""
        out = []
        for key in sorted(self._partial):
            if job_id is None or key[0] == job_id:
                out.append((key[1], f"[{key[0]}] ".encode() + self._partial.pop(key) + b"\n"))
        return out


def wait_lines(end: Dict[str, Any]) -> List[str]:
    """The jobs that did not succeed, one line each, then a summary line; for
    the whole run (``counts``), its counts."""
    counts = end.get("counts")
    if isinstance(counts, dict):
        shown = [f"{counts.get(key, 0)} {key.replace('_', ' ')}"
                 for key in ("succeeded", "failed", "not_started")]
        return ["the run ended: " + ", ".join(shown)]
    jobs = end.get("jobs") or []
    lines = []
    for job in jobs:
        if job.get("state") == "succeeded":
            continue
        how = ""
        if job.get("exit") is not None:
            how = f" (exit {job['exit']})"
        elif job.get("signal"):
            how = f" ({job['signal']})"
        lines.append(f"job {job.get('id')}: {str(job.get('state')).replace('_', ' ')}{how}")
    plural = "s" if len(jobs) != 1 else ""
    if end.get("succeeded") is True:
        lines.append(f"{len(jobs)} job{plural} succeeded")
    else:
        lines.append(f"{len(lines)} of {len(jobs)} job{plural} did not succeed")
    return lines
