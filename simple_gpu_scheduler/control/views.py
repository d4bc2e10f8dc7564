"""The run as the control socket shows it: ``status`` and ``ls`` objects.

Read-only views of the engine's records, pool and counts, built as plain
dicts for JSON (the fields are documented in docs/control.md).
"""

from __future__ import annotations

import os

from ..engine.state import QUEUED, FinishedRow
from ..engine.stopping import DRAIN, KILL, TERMINATE
from ..model.jobs import signal_name
from .wire import command_field

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional

    from ..engine.loop import Loop
    from ..engine.state import JobRecord, RunState

STOPPING = {0: None, DRAIN: "drain", TERMINATE: "terminate", KILL: "kill"}


def signal_field(signum: Optional[int]) -> Optional[str]:
    return signal_name(signum) if signum else None


def counts(state: RunState) -> Dict[str, int]:
    return {
        "running": len(state.active), "queued": state.queued, "succeeded": state.succeeded,
        "failed": state.failed, "not_started": len(state.not_started_ids),
        "skipped": state.skipped,
    }


def gpus(loop: Loop) -> List[Dict[str, Any]]:
    on: Dict[str, List[int]] = {}
    for record in sorted(loop.state.active.values(), key=lambda r: r.job.id):
        for gpu_id in record.slots:
            on.setdefault(gpu_id, []).append(record.job.id)
    shown = []
    for gpu_id in loop.pool.ids:
        slots = loop.pool.gpu(gpu_id)
        why = None
        if slots.lost is not None:
            state, why = "lost", slots.lost
        elif slots.removed:
            state = "removed"
        elif on.get(gpu_id):
            state = "running"
        elif slots.unavailable is not None and slots.unavailable != "being looked at":
            state, why = "busy", slots.unavailable
        else:
            state = "free"
        shown.append({"id": gpu_id, "state": state, "jobs": on.get(gpu_id, []), "why": why})
    return shown


def run(loop: Loop, name: str, started: float) -> Dict[str, Any]:
    state = loop.state
    if state.input_open:
        given = "open"
    else:
        given = "serving" if loop.serving else "ended"
    return {
        "name": name, "pid": os.getpid(), "started": started,
        "elapsed": loop.wall() - started, "paused": loop.paused, "input": given,
        "stopping": STOPPING.get(loop.stop_level), "gpus": gpus(loop), "counts": counts(state),
        "running": [_running(loop, r) for r in sorted(state.active.values(),
                                                      key=lambda r: r.job.id)],
    }


def _running(loop: Loop, record: JobRecord) -> Dict[str, Any]:
    job = record.job
    shown = {"id": job.id, "name": job.name, "gpus": list(record.gpus), "host": record.host,
             "runtime": loop.clock() - record.started, "pid": _pid(record)}
    shown.update(command_field(job.command))
    return shown


def _pid(record: JobRecord) -> Optional[int]:
    pid = getattr(record.execution, "pid", None)
    return pid if isinstance(pid, int) else None


def listing(loop: Loop) -> List[Any]:
    """Every job the run knows, in ``ls`` order: finished, running and
    lingering by id, then the queued ones in start order. References only
    (finished rows and records), so that this is quick with 100,000 jobs;
    `job` makes each a dict, a few at a time (`handlers`)."""
    state = loop.state
    known: List[Any] = list(state.finished)
    known.extend(state.active.values())
    known.sort(key=lambda item: item.id if isinstance(item, FinishedRow) else item.job.id)
    known.extend(state.queue)
    return known


def job(item: Any, now: float) -> Dict[str, Any]:
    """One entry of `listing` as an ``ls`` row."""
    if isinstance(item, FinishedRow):
        return finished(item)
    return _record(item, now)


def finished(row: FinishedRow) -> Dict[str, Any]:
    shown = {
        "id": row.id, "name": row.name, "state": row.state, "gpus": list(row.gpus),
        "host": row.host, "started": row.started, "runtime": row.runtime, "exit": row.exit,
        "signal": signal_field(row.signal), "attempts": row.attempts,
        "priority": row.priority, "pid": None, "reason": row.reason,
    }
    shown.update(command_field(row.command))
    return shown


def _record(record: JobRecord, now: float) -> Dict[str, Any]:
    job = record.job
    queued = record.status == QUEUED
    shown = {
        "id": job.id, "name": job.name, "state": record.status,
        "gpus": [] if queued else list(record.gpus), "host": record.host,
        "started": None if queued else record.started_wall,
        "runtime": None if queued else (record.runtime if record.runtime is not None
                                        else now - record.started),
        "exit": None, "signal": None, "attempts": job.attempts, "priority": job.priority,
        "pid": None if queued else _pid(record), "reason": None,
    }
    shown.update(command_field(job.command))
    return shown


def finished_row(state: RunState, job_id: int) -> Optional[FinishedRow]:
    """The finished row of `job_id`, if it is still kept."""
    return state.finished_by_id.get(job_id)
