"""What a job is and how an attempt at it ended.

Pure data: no processes, threads or files here. A `Job` is one command read
from the input together with what it asks for; an `Outcome` is how one attempt
at running it ended. Outcomes are types, not booleans, so that every place
that reports or logs a job says the same thing about it.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Tuple, Union


@dataclass
class Job:
    """One command from the input, numbered in input order from 1."""

    id: int
    command: bytes
    #: How many distinct GPUs the job needs (``--gpus-per-job`` or JSONL ``gpus``).
    gpus: int = 1
    #: GPU memory the job declares, in bytes (JSONL ``mem``), or None.
    mem: Optional[int] = None
    #: GPU ids the job may use (JSONL ``on``), or None for any.
    on: Optional[Tuple[str, ...]] = None
    name: Optional[str] = None
    #: Lower runs first among the commands already read (JSONL ``priority``).
    priority: int = 0
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Optional[str] = None
    #: Seconds an attempt may run (``--timeout`` or JSONL ``timeout``), or None.
    timeout: Optional[float] = None
    #: How many more attempts a failed job gets (``--retries`` or JSONL ``retries``).
    retries: int = 0
    #: Attempts started so far; the first attempt is number 1.
    attempts: int = 0
    #: Set when the input line could not become a runnable job (a NUL byte, an
    #: over-long line, invalid JSON): the job fails with this reason, unstarted.
    invalid: Optional[str] = None

    def text(self, limit: Optional[int] = None) -> str:
        """The command for messages: undecodable bytes escaped, one line, maybe cut."""
        text = self.command.decode("utf-8", "backslashreplace")
        text = text.replace("\\\n", "\\ ").replace("\n", "\\n")
        if not text.isprintable():
            text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
        if limit is not None and len(text) > limit:
            text = text[: max(0, limit - 3)] + "..."
        return text


# --- Outcomes of one attempt ---------------------------------------------------


@dataclass(frozen=True)
class Exited:
    """The command's shell exited on its own with this status."""

    code: int

    @property
    def ok(self) -> bool:
        return self.code == 0

    def describe(self) -> str:
        return f"exit {self.code}"


@dataclass(frozen=True)
class Killed:
    """The command's shell died from a signal (sent by us or by anybody else)."""

    signal: int

    ok = False

    def describe(self) -> str:
        return f"killed by {signal_name(self.signal)}"


@dataclass(frozen=True)
class TimedOut:
    """The attempt ran past its timeout and was terminated."""

    seconds: float
    #: The signal that finally ended it (SIGTERM, or SIGKILL after the grace).
    signal: int = signal.SIGTERM

    ok = False

    def describe(self) -> str:
        return f"timed out after {format_duration(self.seconds)}"


@dataclass(frozen=True)
class FailedToStart:
    """The command never ran: the reason says why (NUL byte, no shell, ...)."""

    reason: str

    ok = False

    def describe(self) -> str:
        return f"could not start: {self.reason}"


@dataclass(frozen=True)
class NotStarted:
    """The command was read but never started because the run was stopped."""

    ok = False

    def describe(self) -> str:
        return "not started"


Outcome = Union[Exited, Killed, TimedOut, FailedToStart, NotStarted]


def outcome_from_returncode(returncode: int) -> Union[Exited, Killed]:
    """Turn a `Popen.returncode` (negative means a signal) into an outcome."""
    if returncode < 0:
        return Killed(-returncode)
    return Exited(returncode)


def exit_and_signal(outcome: Outcome) -> Tuple[int, int]:
    """The (exit value, signal) pair that GNU parallel's job log records."""
    if isinstance(outcome, Exited):
        return outcome.code, 0
    if isinstance(outcome, (Killed, TimedOut)):
        return -1, outcome.signal
    # Never ran: parallel writes exit value -1 for a command it could not start.
    return -1, 0


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def format_duration(seconds: float) -> str:
    """A short human duration: ``0.4s``, ``12s``, ``3m05s``, ``2h01m``, ``3d04h``."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def gpu_label(gpus: Sequence[str]) -> str:
    """How messages name a job's GPUs: ``gpu 0`` or ``gpu 0,1``."""
    return "gpu " + ",".join(gpus)
