"""Where a run stands at one moment: what every report is made from."""

from __future__ import annotations

from .record import Record

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Optional, Tuple


class RunningView(Record):
    __slots__ = ("job_id", "gpus", "runtime", "command", "name", "host")

    def __init__(self, job_id: int, gpus: Tuple[str, ...], runtime: float, command: str,
                 name: Optional[str] = None, host: str = "") -> None:
        self.job_id = job_id
        #: the cluster node it runs on ("" on this machine)
        self.host = host
        self.gpus = gpus
        self.runtime = runtime
        self.command = command
        #: the job's name (JSON lines ``name``), printable, or None
        self.name = name


class Snapshot(Record):
    """Where the run stands at one moment."""

    __slots__ = (
        "running", "queued", "succeeded", "failed", "not_started", "skipped", "input_open",
        "elapsed", "total",
    )

    def __init__(
        self, running: Tuple[RunningView, ...], queued: int, succeeded: int, failed: int,
        not_started: int, skipped: int, input_open: bool, elapsed: float,
        total: Optional[int] = None,
    ) -> None:
        self.running = running
        #: commands waiting to start: those read, and with `total` those not read yet
        self.queued = queued
        self.succeeded = succeeded
        self.failed = failed
        self.not_started = not_started
        #: commands skipped because the job log says they are done (``--resume``)
        self.skipped = skipped
        self.input_open = input_open
        self.elapsed = elapsed
        #: how many commands the whole input holds, when counted up front (a
        #: regular file with ``--progress``): `queued` is then exact while the
        #: input is still open
        self.total = total
