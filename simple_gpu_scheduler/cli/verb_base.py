"""What every client verb shares: its parser, its connection, its output.

The verbs themselves are in `verbs` (and ``add``, the one with the most to
check, in `verb_add`); what they print is built in `verb_output`.
"""

from __future__ import annotations

import argparse
import sys

from ..control.client import Connection, find_run
from ..control.paths import control_dir
from ..errors import UsageError
from ..report.status import terminal_width
from . import argtypes

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Any, Dict, NoReturn, Optional


class ArgumentError(UsageError):
    """A bad command line of a verb (its message gets a pointer to --help)."""


class Refused(Exception):
    """The run answered ``ok: false``; the message is its ``error``."""


class Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter without its import of `shutil` (start-up time: it
    builds one for every option it adds): the width from COLUMNS or the
    terminal, as `cli.main` does."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=(width_of(sys.__stdout__) or 80) - 2)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, not the whole usage block."""

    def error(self, message: str) -> NoReturn:
        raise ArgumentError(message)


def make_parser(prog: str, verb: str) -> Parser:
    argtypes.untranslated_argparse()
    parser = Parser(prog=prog, allow_abbrev=False, description=DESCRIPTIONS[verb],
                     formatter_class=Formatter)
    parser.add_argument(
        "--run", metavar="NAME|PID",
        help="the run to talk to, by its --name or pid (needed when several are live)")
    parser.add_argument(
        "--control-dir", metavar="DIR",
        help="where the runs' sockets are (default: $SGS_CONTROL_DIR, else "
        "$XDG_RUNTIME_DIR/simple_gpu_scheduler, else /tmp/simple_gpu_scheduler-UID)")
    return parser


def json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the reply as JSON")


DESCRIPTIONS = {
    "status": "Show live runs: their state, counts and what runs on each GPU.",
    "ls": "List a run's jobs: finished, running and queued.",
    "add": "Add a job (or JSON lines from stdin) to a run's queue; prints the new ids.",
    "cancel": "Cancel queued jobs: they will not start.",
    "kill": "Kill running jobs (SIGTERM to the process tree, then SIGKILL); no retry.",
    "log": "Print what jobs printed (needs a run with --tag, --progress or --log-dir).",
    "pause": "Start no more jobs until unpause; running jobs go on.",
    "unpause": "Start jobs again after pause.",
    "drain": "Let running jobs finish and start no more (as a first Ctrl-C does).",
    "stop": "Terminate the running jobs (as a second Ctrl-C does).",
    "gpus": "Show a run's GPUs, or take GPUs from it (remove) or give it more (add).",
    "move": "Move a queued job in the queue.",
    "wait": "Wait until jobs (or the whole run) are done; exit 0 if all succeeded.",
}


def job_ids(parser: argparse.ArgumentParser, nargs: str) -> None:
    parser.add_argument("ids", nargs=nargs, type=argtypes.non_negative_int, metavar="ID",
                        help="job ids (as `ls` shows them)")


def connect(args: argparse.Namespace) -> Connection:
    """The connection to the run that --run names (or the only live one)."""
    return Connection.open(find_run(control_dir(args.control_dir), args.run).path)


def call(conn: Connection, request: Dict[str, Any]) -> Dict[str, Any]:
    reply = conn.request(request)
    if reply.get("ok") is not True:
        raise Refused(str(reply.get("error") or "the run refused the request"))
    return reply


def width_of(stream: Any) -> Optional[int]:
    """The width of the terminal `stream` is, or None (a file, a pipe, closed)."""
    try:
        return terminal_width(stream.fileno())
    except (AttributeError, ValueError, OSError):
        return None


def out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


