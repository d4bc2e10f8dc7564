"""The client verbs: ``simple_gpu_scheduler status``, ``ls``, ``add``, ...

Each verb talks to a live run over its control socket (docs/control.md). A
verb is a parser setup and a handler, in `_VERBS`; ``add`` is in `verb_add`,
what every verb shares (parser, connection, output) in `verb_base`, and what
they print is built by pure functions in `verb_output` (`status_lines`,
`ls_lines`, `LogLines`) that take the reply's dicts and return text, so tests
read them without a server.

Exit statuses: 0 done; 1 the run refused the request (``ok: false``), the
connection broke, or ``wait`` saw a job that did not succeed; 2 a usage
error (bad arguments, no live run or several, an unsafe control directory);
130 Ctrl-C. Every error is one line on stderr, never a traceback.

``watch simple_gpu_scheduler status`` runs this every few seconds, so this
module imports no engine, launcher or GPU code: argparse, json and socket,
the pure `model` helpers, and of `report` only the status table's helpers
(`report.status`, which imports nothing but `model`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..control.client import Connection, ControlError, find_run
from ..control.paths import control_dir, live_runs
from ..errors import ExitCode, UsageError, internal_error, say
from . import argtypes
from .verb_add import add, parse_add, setup_add
from .verb_base import (
    ArgumentError,
    Refused,
    call,
    connect,
    job_ids,
    json_option,
    make_parser,
    out,
    width_of,
)
from .verb_output import LogLines, gpu_lines, ls_footer, ls_lines, status_text, wait_lines

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Sequence, Tuple

    Handler = Callable[[argparse.Namespace], int]

VERBS: Tuple[str, ...] = (
    "status", "ls", "add", "cancel", "kill", "log", "pause", "unpause", "drain", "stop",
    "gpus", "move", "wait",
)

#: Clears a terminal and puts the cursor home, as watch(1) redraws.
CLEAR = "\x1b[H\x1b[2J"


# --- entry point -----------------------------------------------------------------------


def run_verb(verb: str, argv: List[str]) -> int:
    """Run client verb `verb` (one of `VERBS`) with its arguments; the exit status."""
    prog = f"simple_gpu_scheduler {verb}"
    try:
        if verb not in _VERBS:
            raise UsageError(f"unknown verb {verb!r}; the verbs are {', '.join(VERBS)}")
        return _VERBS[verb][1](parse_args(verb, argv))
    except ArgumentError as exc:
        say(f"{prog}: error: {exc} (see {prog} --help)")
        return ExitCode.USAGE
    except UsageError as exc:
        say(f"{prog}: error: {exc}")
        return ExitCode.USAGE
    except (Refused, ControlError) as exc:
        say(f"{prog}: error: {exc}")
        return ExitCode.FAILED
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # As the `signal` docs advise: stdout at /dev/null, so that the flush
        # at exit does not fail a second time (``ls | head``).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.BROKEN_PIPE
    except OSError as exc:
        say(f"{prog}: error: {exc.strerror or exc}")
        return ExitCode.FAILED
    except Exception as exc:  # a bug of ours: still one line, not a traceback
        if os.environ.get("SGS_DEBUG"):
            raise
        say(internal_error(prog, exc))
        return ExitCode.FAILED


# --- parsers ---------------------------------------------------------------------------


def parse_args(verb: str, argv: List[str]) -> argparse.Namespace:
    """`argv` parsed by `verb`'s parser; a `UsageError` when it is wrong."""
    parser = make_parser(f"simple_gpu_scheduler {verb}", verb)
    _VERBS[verb][0](parser)
    if verb == "add":
        return parse_add(parser, argv)
    return parser.parse_intermixed_args(argv)


def _simple(op: str) -> Handler:
    """The handler of a verb that is only its op (pause, drain, ...): quiet."""

    def handle(args: argparse.Namespace) -> int:
        with connect(args) as conn:
            call(conn, {"op": op})
        return ExitCode.OK

    return handle


# --- status ----------------------------------------------------------------------------


def _setup_status(parser: argparse.ArgumentParser) -> None:
    json_option(parser)
    parser.add_argument("--watch", action="store_true",
                        help="redraw every second, until Ctrl-C or the run ends")


def _status(args: argparse.Namespace) -> int:
    if args.watch:
        return _watch(args)
    runs, failed = _statuses(args)
    if args.json:
        out(json.dumps(runs) + "\n")
    else:
        width = width_of(sys.stdout)
        out(status_text(runs, width))
    return ExitCode.FAILED if failed else ExitCode.OK


def _statuses(args: argparse.Namespace) -> Tuple[List[Dict[str, Any]], bool]:
    """The RUN object of the --run run, or of every live run; and whether some
    run refused. A run that ends between the listing and our request is left out."""
    directory = control_dir(args.control_dir)
    if args.run is not None:
        listed = [find_run(directory, args.run)]
    else:
        listed = live_runs(directory)
        if not listed:
            raise UsageError(f"no run of yours is live in {directory}")
    runs, failed = [], False
    for info in listed:
        try:
            with Connection.open(info.path) as conn:
                runs.append(call(conn, {"op": "status"})["run"])
        except ControlError:
            if args.run is not None:
                raise
        except Refused as exc:
            say(f"simple_gpu_scheduler status: error: {info.describe()}: {exc}")
            failed = True
    if not runs and not failed:
        raise UsageError(f"no run of yours is live in {directory}")
    return runs, failed


def _watch(args: argparse.Namespace) -> int:
    """Redraw every second: the --run run until it ends, or every live run
    (listed again each time, so new runs appear) until none is left."""
    import time

    tty = width_of(sys.stdout) is not None
    conn = connect(args) if args.run is not None else None
    try:
        while True:
            if conn is not None:
                try:
                    runs = [call(conn, {"op": "status"})["run"]]
                except ControlError:
                    out(f"run {conn.name} (pid {conn.pid}) has ended\n")
                    return ExitCode.OK
            else:
                try:
                    runs, _ = _statuses(args)
                except UsageError:
                    out("no run is live any more\n")
                    return ExitCode.OK
            if args.json:
                text = json.dumps(runs) + "\n"
            else:
                width = width_of(sys.stdout)
                text = status_text(runs, width)
            out(CLEAR + text if tty else text + "\n")
            time.sleep(1.0)
    except KeyboardInterrupt:
        return ExitCode.OK
    finally:
        if conn is not None:
            conn.close()


# --- ls --------------------------------------------------------------------------------


def _setup_ls(parser: argparse.ArgumentParser) -> None:
    json_option(parser)


def _ls(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        reply = call(conn, {"op": "ls"})
    jobs, forgotten = reply.get("jobs") or [], int(reply.get("forgotten") or 0)
    if args.json:
        out(json.dumps({"jobs": jobs, "forgotten": forgotten}) + "\n")
        return ExitCode.OK
    out("".join(line + "\n" for line in ls_lines(jobs)))
    footer = ls_footer(forgotten)
    if footer:
        say(footer)
    return ExitCode.OK


# --- cancel, kill ----------------------------------------------------------------------


def _setup_ids(parser: argparse.ArgumentParser) -> None:
    job_ids(parser, "+")


def _by_ids(op: str) -> Handler:
    """``cancel`` and ``kill``: quiet on success, as kill(1) is."""

    def handle(args: argparse.Namespace) -> int:
        with connect(args) as conn:
            call(conn, {"op": op, "ids": args.ids})
        return ExitCode.OK

    return handle


# --- log -------------------------------------------------------------------------------


def _setup_log(parser: argparse.ArgumentParser) -> None:
    job_ids(parser, "*")
    parser.add_argument("--all", action="store_true", help="every job's output")
    parser.add_argument("-f", "--follow", action="store_true",
                        help="go on printing as the jobs print, until they are done")
    parser.add_argument("-n", "--lines", type=argtypes.non_negative_int, metavar="N",
                        help="only the last N lines of what is kept")


def _log(args: argparse.Namespace) -> int:
    if args.all == bool(args.ids):
        raise ArgumentError("give job ids or --all (not both)")
    request: Dict[str, Any] = {"op": "log", "follow": args.follow, "lines": args.lines}
    if args.all:
        request["all"] = True
    else:
        request["ids"] = args.ids
    printer = LogLines(prefix=args.all or len(args.ids) > 1)
    with connect(args) as conn:
        call(conn, request)
        if args.follow:
            conn.settimeout(None)  # a job may print nothing for hours
        try:
            for line in conn.replies():
                if "ended" in line:
                    _write_chunks(printer.finish(line["ended"]))
                elif "id" in line and "stream" in line:
                    _write_chunks([(line["stream"], printer.feed(
                        int(line["id"]), str(line["stream"]), _chunk_bytes(line)))])
        finally:
            _write_chunks(printer.finish())
    return ExitCode.OK


def _chunk_bytes(line: Dict[str, Any]) -> bytes:
    text = line.get("text")
    if isinstance(text, str):
        return text.encode("utf-8", "surrogateescape")
    import base64

    return base64.b64decode(line.get("b64") or "")


def _write_chunks(chunks: Sequence[Tuple[str, bytes]]) -> None:
    for stream, data in chunks:
        if data:
            target = sys.stderr if stream == "err" else sys.stdout
            target.buffer.write(data)
            target.buffer.flush()


# --- gpus ------------------------------------------------------------------------------


def _setup_gpus(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=("add", "remove"),
                        help="remove: no new jobs there (running ones finish); "
                        "add: take jobs there too. Without: show the GPUs")
    parser.add_argument("ids", nargs="*", metavar="ID",
                        help="GPU ids, comma- or space-separated, as --gpus takes them")
    parser.add_argument("--kill", action="store_true",
                        help="with remove: stop the jobs running there (SIGTERM, then SIGKILL)")


def gpu_ids(words: Sequence[str]) -> List[str]:
    """``["0,1", "2"]`` -> ``["0", "1", "2"]``: ids split on commas and spaces."""
    return [part for word in words for part in word.replace(",", " ").split()]


def _gpus(args: argparse.Namespace) -> int:
    ids = gpu_ids(args.ids)
    if args.action is None:
        if ids or args.kill:
            raise ArgumentError("give add or remove before GPU ids")
        with connect(args) as conn:
            run = call(conn, {"op": "status"})["run"]
        lines = gpu_lines(run.get("gpus") or [], run.get("running") or [],
                          width_of(sys.stdout))
    else:
        if not ids:
            raise ArgumentError(f"gpus {args.action}: give GPU ids")
        if args.kill and args.action != "remove":
            raise ArgumentError("--kill goes with gpus remove")
        request: Dict[str, Any] = {"op": "gpus", "action": args.action, "ids": ids}
        if args.action == "remove":
            request["kill"] = args.kill
        with connect(args) as conn:
            reply = call(conn, request)
        lines = gpu_lines(reply.get("gpus") or [], [], None)
    out("".join(line + "\n" for line in lines))
    return ExitCode.OK


# --- move ------------------------------------------------------------------------------


def _setup_move(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", type=argtypes.non_negative_int, metavar="ID", help="a queued job")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--front", action="store_true", help="first of its priority")
    where.add_argument("--back", action="store_true", help="last of its priority")
    where.add_argument("--before", type=argtypes.non_negative_int, metavar="ID",
                       help="just before queued job ID (taking its priority)")


def _move(args: argparse.Namespace) -> int:
    request: Dict[str, Any] = {"op": "move", "id": args.id}
    if args.before is not None:
        request.update(to="before", before=args.before)
    else:
        request["to"] = "front" if args.front else "back"
    with connect(args) as conn:
        call(conn, request)
    return ExitCode.OK


# --- wait ------------------------------------------------------------------------------


def _setup_wait(parser: argparse.ArgumentParser) -> None:
    json_option(parser)
    job_ids(parser, "*")


def _wait(args: argparse.Namespace) -> int:
    request: Dict[str, Any] = {"op": "wait"}
    if args.ids:
        request["ids"] = args.ids
    with connect(args) as conn:
        call(conn, request)
        conn.settimeout(None)  # jobs may take days
        end: Dict[str, Any] = {}
        try:
            for line in conn.replies():
                end = line
        except ControlError:
            what = "the jobs were done" if args.ids else "it finished"
            say(f"simple_gpu_scheduler wait: run {conn.name} (pid {conn.pid}) "
                 f"went away before {what}")
            return ExitCode.FAILED
    if args.json:
        out(json.dumps(end) + "\n")
    else:
        out("".join(line + "\n" for line in wait_lines(end)))
    return ExitCode.OK if end.get("succeeded") is True else ExitCode.FAILED


# --- output ----------------------------------------------------------------------------


_VERBS: Dict[str, Tuple[Callable[[argparse.ArgumentParser], None], Handler]] = {
    "status": (_setup_status, _status),
    "ls": (_setup_ls, _ls),
    "add": (setup_add, add),
    "cancel": (_setup_ids, _by_ids("cancel")),
    "kill": (_setup_ids, _by_ids("kill")),
    "log": (_setup_log, _log),
    "pause": (lambda parser: None, _simple("pause")),
    "unpause": (lambda parser: None, _simple("unpause")),
    "drain": (lambda parser: None, _simple("drain")),
    "stop": (lambda parser: None, _simple("stop")),
    "gpus": (_setup_gpus, _gpus),
    "move": (_setup_move, _move),
    "wait": (_setup_wait, _wait),
}
