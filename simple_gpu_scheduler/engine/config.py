"""`Settings`: what the engine's loop is told about the run's policy.

The command line builds it; everything with behaviour of its own (the
launcher, the input, the GPU pool and gate, the listener that reports) is
handed to the loop as a collaborator instead.
"""

from __future__ import annotations

from ..model.record import Record

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Callable, Optional


class Settings(Record):
    __slots__ = ("kill_grace", "halt", "backfill", "skip", "memory_known", "progress_every")

    def __init__(
        self, kill_grace: float = 10.0, halt: Optional[str] = None, backfill: bool = False,
        skip: Optional[Callable[[bytes], bool]] = None, memory_known: bool = True,
        progress_every: Optional[float] = None,
    ) -> None:
        #: seconds between SIGTERM and SIGKILL on the stop ladder
        self.kill_grace = kill_grace
        #: None, "soon" (drain) or "now" (terminate) after the first final failure
        self.halt = halt
        #: later jobs that fit now may start before a waiting earlier one
        self.backfill = backfill
        #: True for a command the job log says is done (``--resume``)
        self.skip = skip
        #: whether the GPUs' memory sizes are known (else a job's `mem` cannot pack)
        self.memory_known = memory_known
        #: seconds between progress events while jobs run (``--progress``), or None
        self.progress_every = progress_every
