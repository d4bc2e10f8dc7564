"""The status table (SIGUSR1, and later a status request), from a `Snapshot`."""

from __future__ import annotations

from ..model.jobs import format_duration, gpu_label

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import List

    from ..model.snapshot import Snapshot


def status_table(snap: Snapshot, width: int = 100) -> List[str]:
    """The SIGUSR1 status report as lines (pure, so tests can read it)."""
    head = (
        f"status after {format_duration(snap.elapsed)}: {len(snap.running)} running, "
        f"{snap.succeeded} succeeded, {snap.failed} failed, {snap.queued} queued"
        + (f", {snap.not_started} not started" if snap.not_started else "")
        + ("" if snap.input_open else ", input ended")
    )
    lines = [head]
    if snap.running:
        gpu_width = max(len(gpu_label(r.gpus)) for r in snap.running)
        lines.append(f"  {'JOB':>5}  {'GPU':<{gpu_width}}  {'TIME':>7}  COMMAND")
        for r in snap.running:
            command = r.command
            room = max(20, width - gpu_width - 20)
            if len(command) > room:
                command = command[: room - 3] + "..."
            lines.append(
                f"  {r.job_id:>5}  {gpu_label(r.gpus):<{gpu_width}}  "
                f"{format_duration(r.runtime):>7}  {command}"
            )
    return lines
