"""`Config`: everything the scheduling loop is told, in one object.

The command line (`cli`, `gpu_cli`) builds it; the `Scheduler` only reads it.
"""

from __future__ import annotations

from types import MappingProxyType

from ..launch.streams import OutputMode, Passthrough

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Any, FrozenSet, Mapping, Optional, Tuple

    from ..gpus.gate import GpuGate
    from ..report.joblog import JobLogWriter, ResumeFilter
    from ..report.progress import ProgressLine


class Config:
    """What the scheduler is told: the class attributes are the defaults, and
    ``Config(gpus=..., timeout=...)`` overrides them by name."""

    gpus: Tuple[str, ...] = ()
    #: None: jobs that declare `mem` share a GPU by memory, others have it alone.
    jobs_per_gpu: Optional[int] = 1
    gpus_per_job: int = 1
    shell: Optional[str] = None
    kill_grace: float = 10.0
    output: OutputMode = Passthrough()  # stateless, so one can be shared
    #: Seconds an attempt may run, and extra attempts for a failed job.
    timeout: Optional[float] = None
    retries: int = 0
    #: None, "soon" (drain) or "now" (terminate) after the first final failure.
    halt: Optional[str] = None
    joblog: Optional[JobLogWriter] = None
    resume: Optional[ResumeFilter] = None
    progress: Optional[ProgressLine] = None
    #: The command line that resumes this run, for the summary.
    resume_hint: Optional[str] = None

    # --- what is known about the GPUs, and the options about them -----------
    #: GPU id -> bytes jobs' `mem` may add up to (``--gpu-memory`` or reported size)
    gpu_memory: Mapping[str, int] = MappingProxyType({})
    #: GPU ids that are MIG instances
    mig: FrozenSet[str] = frozenset()
    #: other names of GPU ids for JSONL ``on`` (UUIDs)
    aliases: Mapping[str, str] = MappingProxyType({})
    #: busy checks, locks, lost GPUs; None when none of these apply
    gate: Optional["GpuGate"] = None
    #: "text" (one command per line) or "jsonl" (one JSON object per line)
    input_format: str = "text"
    #: later jobs that fit now may start before a waiting earlier one
    backfill: bool = False

    def __init__(self, **options: Any) -> None:
        for name, value in options.items():
            if not hasattr(Config, name) or name.startswith("_"):
                raise TypeError(f"Config has no option {name!r}")
            setattr(self, name, value)
