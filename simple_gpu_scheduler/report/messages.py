"""The engine's events in words: the ``[sgs]`` lines, job-log rows, progress.

`ConsoleReport` is the listener the command line gives the engine. Each
event has one small handler (a table from event type to method), so a new
event is a new method, not a branch in an ``if`` chain. Under ``--quiet`` the
text of a per-job line is never built.
"""

from __future__ import annotations

from ..model import events as ev
from ..model.jobs import FailedToStart, gpu_label
from ..model.units import format_clock, format_duration

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Callable, Dict, List, Optional, Sequence

    from ..model.snapshot import Snapshot
    from .console import Console
    from .joblog import JobLogWriter
    from .progress import ProgressLine


#: How much of a command a one-line message shows.
SHOWN = 200


class ConsoleReport:
    """Words the run's events on the console; writes job-log rows."""

    def __init__(
        self, console: Console, joblog: Optional[JobLogWriter] = None,
        progress: Optional[ProgressLine] = None, resume_hint: Optional[str] = None,
        status_width: Callable[[], Optional[int]] = lambda: None,
    ) -> None:
        self.console = console
        self.joblog = joblog
        self.progress = progress
        self.resume_hint = resume_hint
        #: the width the status table is cut to (None: whole commands)
        self.status_width = status_width
        self._handlers: Dict[type, Callable[[ev.Event], None]] = {
            ev.JobStarted: self._started,  # type: ignore[dict-item]
            ev.AttemptEnded: self._attempt_ended,  # type: ignore[dict-item]
            ev.JobSkipped: self._skipped,  # type: ignore[dict-item]
            ev.JobNotStarted: self._not_started,  # type: ignore[dict-item]
            ev.JobDone: self._done,  # type: ignore[dict-item]
            ev.Steered: self._steered,  # type: ignore[dict-item]
            ev.Lingering: self._lingering,  # type: ignore[dict-item]
            ev.GaveUp: self._gave_up,  # type: ignore[dict-item]
            ev.TimeoutReached: self._timeout,  # type: ignore[dict-item]
            ev.Stopping: self._stopping,  # type: ignore[dict-item]
            ev.InputFailed: self._input_failed,  # type: ignore[dict-item]
            ev.Notice: self._notice,  # type: ignore[dict-item]
            ev.StatusAsked: self._status,  # type: ignore[dict-item]
            ev.Progress: self._progress,  # type: ignore[dict-item]
            ev.RunEnded: self._run_ended,  # type: ignore[dict-item]
        }

    def __call__(self, event: ev.Event) -> None:
        self._handlers[type(event)](event)

    # --- jobs -----------------------------------------------------------------

    def _started(self, event: ev.JobStarted) -> None:
        if self.console.verbosity < 0:
            return  # not even the text, with --quiet
        job = event.job
        attempt = f" (attempt {job.attempts} of {job.retries + 1})" if job.attempts > 1 else ""
        self.console.line(
            f"{job.label()} started on {gpu_label(event.gpus, _node(event.host))}{attempt}: "
            f"{job.text(SHOWN)}")

    def _attempt_ended(self, event: ev.AttemptEnded) -> None:
        job, outcome = event.job, event.outcome
        if self.joblog is not None:
            self.joblog.write_attempt(job, event.gpus, event.started_wall, event.runtime, outcome,
                                      _node(event.host))
        where = f" on {gpu_label(event.gpus, _node(event.host))}" if event.gpus else ""
        if outcome.ok:
            if self.console.verbosity >= 0:
                self.console.line(
                    f"{job.label()} finished{where} after {format_duration(event.runtime)}: "
                    f"{outcome.describe()}")
            return
        after = ("" if isinstance(outcome, FailedToStart)
                 else f" after {format_duration(event.runtime)}")
        again = (f" (will retry: attempt {job.attempts + 1} of {job.retries + 1})"
                 if event.retry else "")
        self.console.line(
            f"{job.label()} failed{where}{after}: {outcome.describe()}{again}: {job.text(SHOWN)}")

    def _skipped(self, event: ev.JobSkipped) -> None:
        if self.console.verbosity >= 1:
            self.console.line(
                f"{event.job.label()} skipped: already in the job log: {event.job.text(SHOWN)}")

    def _not_started(self, event: ev.JobNotStarted) -> None:
        why = f" ({event.reason})" if event.reason else ""
        self.console.line(f"not started{why}: {event.job.label()}: {event.job.text()}")

    def _done(self, event: ev.JobDone) -> None:
        pass  # said already, by the attempt's end or "not started"

    def _steered(self, event: ev.Steered) -> None:
        (self.console.info if event.level >= 0 else self.console.debug)(event.text)

    def _lingering(self, event: ev.Lingering) -> None:
        self.console.debug(f"{event.job.label()} left processes behind; terminating them")

    def _gave_up(self, event: ev.GaveUp) -> None:
        self.console.line(
            f"{event.job.label()}: some of its processes are still there after SIGKILL; "
            f"giving {gpu_label(event.gpus, _node(event.where))} back anyway")

    def _timeout(self, event: ev.TimeoutReached) -> None:
        self.console.debug(f"{event.job.label()} reached its timeout; terminating it")

    # --- the run --------------------------------------------------------------

    def _stopping(self, event: ev.Stopping) -> None:
        if event.level == 1:
            self.console.line(
                f"{event.why}: draining; {event.running} running job(s) will finish, "
                f"{event.queued} queued command(s) will not start "
                "(Ctrl-C or SIGTERM again terminates the running jobs)")
        elif event.level == 2:
            self.console.line(
                f"{event.why}: terminating {event.running} running job(s) "
                f"(SIGKILL after {event.grace:g}s; "
                "Ctrl-C or SIGTERM once more kills them now)")
        else:
            self.console.line(f"{event.why}: killing every job now")

    def _input_failed(self, event: ev.InputFailed) -> None:
        self.console.line(event.error)

    def _notice(self, event: ev.Notice) -> None:
        if event.level >= 1:
            self.console.line(event.text)
        elif event.level == 0:
            self.console.info(event.text)
        else:
            self.console.debug(event.text)

    def _status(self, event: ev.StatusAsked) -> None:
        from .status import status_table  # only on SIGUSR1

        for line in status_table(event.snapshot, width=self.status_width()):
            self.console.line(line)

    def _progress(self, event: ev.Progress) -> None:
        if self.progress is not None:
            self.progress.show(event.snapshot)

    def _run_ended(self, event: ev.RunEnded) -> None:
        if self.progress is not None:
            self.progress.close()
        snap = event.snapshot
        lines = summary_lines(snap, list(event.failed_ids), self.resume_hint)
        quiet_ok = not (snap.failed or snap.not_started or event.stopped)
        for line in lines:
            (self.console.info if quiet_ok else self.console.line)(line)


def summary_lines(
    snap: Snapshot, failed_ids: Sequence[int], resume_hint: Optional[str]
) -> List[str]:
    """What the scheduler says when it ends."""
    total = snap.succeeded + snap.failed + snap.not_started
    head = (f"done in {format_clock(snap.elapsed)}: {snap.succeeded} of {total} succeeded, "
            f"{snap.failed} failed, {snap.not_started} not started")
    if snap.skipped:
        head += f"; {snap.skipped} skipped as done in the job log"
    lines = [head]
    if failed_ids:
        shown = ", ".join(str(i) for i in failed_ids[:50])
        more = f" and {len(failed_ids) - 50} more" if len(failed_ids) > 50 else ""
        lines.append(f"failed jobs: {shown}{more}")
    if resume_hint and (snap.failed or snap.not_started):
        lines.append(f"to run what did not succeed, feed the same input to: {resume_hint}")
    return lines


def _node(host: str) -> str:
    """The node to name in messages: none for this machine's jobs."""
    return "" if host == "local" else host
