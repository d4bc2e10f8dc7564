"""What can go wrong, and the exit statuses, named once.

Every layer may raise `UsageError`; only the command line (`cli`) turns it
into a one-line message and exit status `ExitCode.USAGE`.
"""

from __future__ import annotations


class UsageError(Exception):
    """A bad command line or input file: one line for the user, exit status 2."""


class LaunchError(Exception):
    """A job could not be started; the message says why in one line.

    Part of the launcher protocol (`launch.base`); it lives here so that the
    engine and the launcher raise and catch it without loading the protocol
    module, which holds only types, at start-up."""


class ExitCode:
    """The command's exit statuses (see the README's "Exit status")."""

    OK = 0
    #: some command failed, could not start, or was not started
    FAILED = 1
    #: bad usage: nothing ran
    USAGE = 2
    #: a stop signal N gives 128 + N (130 for Ctrl-C, 143 for SIGTERM)
    SIGNAL_BASE = 128
    #: Ctrl-C before the signal handlers are in place (128 + SIGINT)
    INTERRUPTED = 130
    #: a closed pipe (simple_hypersearch | head)
    BROKEN_PIPE = 141

    @staticmethod
    def for_signal(signum: int) -> int:
        return ExitCode.SIGNAL_BASE + signum


def internal_error(prog: str, exc: Exception) -> str:
    """The one line a bug of ours gets instead of a traceback (re-raised
    instead when ``SGS_DEBUG`` is set, by the caller)."""
    return (f"{prog}: internal error: {type(exc).__name__}: {exc} "
            "(SGS_DEBUG=1 shows the traceback; please report it)")


def say(text: str) -> None:
    """`text` as a line on stderr, whatever state stderr is in (closed, gone,
    never opened): the last resort of a usage or internal error."""
    import sys

    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass
