"""What a job is and how an attempt at it ended.

Pure data: no processes, threads or files here. A `Job` is one command read
from the input together with what it asks for; an `Outcome` is how one attempt
at running it ended. Outcomes are types, not booleans, so that every place
that reports or logs a job says the same thing about it.
"""

from __future__ import annotations

import signal

from .record import Record
from .units import format_duration

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Mapping, Optional, Sequence, Tuple, Union

# No dataclasses here: `dataclasses` imports `inspect`, which alone costs more
# start-up time than the rest of a one-job run. These few classes are written
# out instead.


class Job:
    """One command from the input, numbered in input order from 1."""

    __slots__ = (
        "id", "command", "gpus", "mem", "on", "name", "priority", "env", "cwd",
        "timeout", "retries", "attempts", "invalid", "whole_env",
    )

    def __init__(
        self,
        id: int,
        command: bytes,
        gpus: int = 1,
        mem: Optional[int] = None,
        on: Optional[Tuple[str, ...]] = None,
        name: Optional[str] = None,
        priority: int = 0,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        timeout: Optional[float] = None,
        retries: int = 0,
        attempts: int = 0,
        invalid: Optional[str] = None,
        whole_env: bool = False,
    ) -> None:
        self.id = id
        self.command = command
        #: How many distinct GPUs the job needs (``--gpus-per-job`` or JSONL ``gpus``).
        self.gpus = gpus
        #: GPU memory the job declares, in bytes (JSONL ``mem``), or None.
        self.mem = mem
        #: GPU ids the job may use (JSONL ``on``), or None for any.
        self.on = on
        self.name = name
        #: Lower runs first among the commands already read (JSONL ``priority``).
        self.priority = priority
        self.env: Mapping[str, str] = {} if env is None else env
        self.cwd = cwd
        #: Seconds an attempt may run (``--timeout`` or JSONL ``timeout``), or None.
        self.timeout = timeout
        #: How many more attempts a failed job gets (``--retries`` or JSONL ``retries``).
        self.retries = retries
        #: Attempts started so far; the first attempt is number 1.
        self.attempts = attempts
        #: Set when the input line could not become a runnable job (a NUL byte,
        #: an over-long line, invalid JSON): the job fails with this reason, unstarted.
        self.invalid = invalid
        #: `env` is the job's whole environment (a job added from a client's
        #: shell runs with that shell's), not additions to the scheduler's.
        self.whole_env = whole_env

    def __repr__(self) -> str:
        return f"Job(id={self.id}, command={self.command!r})"

    def text(self, limit: Optional[int] = None) -> str:
        """The command for messages: undecodable bytes escaped, one line, maybe cut."""
        text = self.command.decode("utf-8", "backslashreplace")
        if "\\\n" in text:
            text = _joined(text)
        return printable(text.replace("\n", "\\n"), limit)

    def label(self, limit: int = 100) -> str:
        """How messages name the job: ``job 3``, or ``job 3 (lr=0.1,bs=32)`` when
        it has a name (JSON lines ``name``, shown printable, cut at `limit`)."""
        if not self.name:
            return f"job {self.id}"
        return f"job {self.id} ({printable(self.name, limit)})"


def printable(text: str, limit: Optional[int] = None) -> str:
    """`text` on one line for messages: what is not printable escaped, cut at `limit`."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else _escape(c) for c in text)
    if limit is not None and len(text) > limit:
        text = text[: max(0, limit - 3)] + "..."
    return text


def _joined(text: str) -> str:
    """A backslash-continued command as the shell reads it: each backslash-
    newline removed, and the blanks around it (the next line's indent) shown
    as one space, where there were any."""
    parts = text.split("\\\n")
    joined = parts[0]
    for part in parts[1:]:
        blank = joined[-1:] in (" ", "\t") or part[:1] in (" ", "\t")
        joined = joined.rstrip(" \t") + (" " if blank else "") + part.lstrip(" \t")
    return joined


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


# --- Outcomes of one attempt ---------------------------------------------------


class _Outcome(Record):
    """The outcome types: values, equal when type and fields are."""

    __slots__: Tuple[str, ...] = ()
    ok = False

    def describe(self) -> str:
        raise NotImplementedError


class Exited(_Outcome):
    """The command's shell exited on its own with this status."""

    __slots__ = ("code",)

    def __init__(self, code: int) -> None:
        self.code = code

    @property
    def ok(self) -> bool:  # type: ignore[override]
        return self.code == 0

    def describe(self) -> str:
        return f"exit {self.code}"


class Killed(_Outcome):
    """The command's shell died from a signal (sent by us or by anybody else)."""

    __slots__ = ("signal",)

    def __init__(self, signal: int) -> None:
        # A plain int: `signal.SIGTERM` is an IntEnum, which Python 3.9 writes
        # as "Signals.SIGTERM" in a job log's Signal column.
        self.signal = int(signal)

    def describe(self) -> str:
        return f"killed by {signal_name(self.signal)}"


class TimedOut(_Outcome):
    """The attempt ran past its timeout and was terminated."""

    __slots__ = ("seconds", "signal")

    def __init__(self, seconds: float, signal: int = signal.SIGTERM) -> None:
        self.seconds = seconds
        #: The signal that finally ended it (SIGTERM, or SIGKILL after the grace).
        self.signal = int(signal)

    def describe(self) -> str:
        return f"timed out after {format_duration(self.seconds)}"


class FailedToStart(_Outcome):
    """The command never ran: the reason says why (NUL byte, no shell, ...)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def describe(self) -> str:
        return f"could not start: {self.reason}"


class NotStarted(_Outcome):
    """The command was read but never started: the run was stopped, or (with
    a `reason`, such as "cancelled") a control request said so."""

    __slots__ = ("reason",)

    def __init__(self, reason: Optional[str] = None) -> None:
        self.reason = reason

    def describe(self) -> str:
        return "not started" if self.reason is None else f"not started ({self.reason})"


class Lost(_Outcome):
    """The attempt ran, and then the machine under it went away (a cluster
    node died): its exit status is unknown; the reason says what was lost."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def describe(self) -> str:
        return f"lost: {self.reason}"


if TYPE_CHECKING:
    Outcome = Union[Exited, Killed, TimedOut, FailedToStart, NotStarted, Lost]


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


def gpu_label(gpus: Sequence[str], host: str = "") -> str:
    """How messages name a job's GPUs: ``gpu 0`` or ``gpu 0,1``, and on a
    cluster the node too: ``gpu 0 of 10.0.0.7``."""
    label = "gpu " + ",".join(gpus)
    return f"{label} of {host}" if host else label
