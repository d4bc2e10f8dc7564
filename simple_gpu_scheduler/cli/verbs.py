"""The client verbs: ``simple_gpu_scheduler status``, ``ls``, ``add``, ...

Each verb talks to a live run over its control socket (docs/control.md). A
verb is a parser setup and a handler, in `_VERBS`; what it prints is built by
pure functions (`status_lines`, `ls_lines`, `LogLines`, `add_request`) that
take the reply's dicts and return text, so tests read them without a server.

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
from ..report.status import terminal_width
from . import argtypes
from .verb_output import LogLines, gpu_lines, ls_footer, ls_lines, status_text, wait_lines

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import (
        Any,
        Callable,
        Dict,
        Iterator,
        List,
        NoReturn,
        Optional,
        Sequence,
        Tuple,
        Union,
    )

    Handler = Callable[[argparse.Namespace], int]

VERBS: Tuple[str, ...] = (
    "status", "ls", "add", "cancel", "kill", "log", "pause", "unpause", "drain", "stop",
    "gpus", "move", "wait",
)

#: Clears a terminal and puts the cursor home, as watch(1) redraws.
CLEAR = "\x1b[H\x1b[2J"


# --- entry point -----------------------------------------------------------------------


class _ArgumentError(UsageError):
    """A bad command line of a verb (its message gets a pointer to --help)."""


class _Refused(Exception):
    """The run answered ``ok: false``; the message is its ``error``."""


def run_verb(verb: str, argv: List[str]) -> int:
    """Run client verb `verb` (one of `VERBS`) with its arguments; the exit status."""
    prog = f"simple_gpu_scheduler {verb}"
    try:
        if verb not in _VERBS:
            raise UsageError(f"unknown verb {verb!r}; the verbs are {', '.join(VERBS)}")
        return _VERBS[verb][1](parse_args(verb, argv))
    except _ArgumentError as exc:
        _say(f"{prog}: error: {exc} (see {prog} --help)")
        return ExitCode.USAGE
    except UsageError as exc:
        _say(f"{prog}: error: {exc}")
        return ExitCode.USAGE
    except (_Refused, ControlError) as exc:
        _say(f"{prog}: error: {exc}")
        return ExitCode.FAILED
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # As the `signal` docs advise: stdout at /dev/null, so that the flush
        # at exit does not fail a second time (``ls | head``).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.BROKEN_PIPE
    except OSError as exc:
        _say(f"{prog}: error: {exc.strerror or exc}")
        return ExitCode.FAILED
    except Exception as exc:  # a bug of ours: still one line, not a traceback
        if os.environ.get("SGS_DEBUG"):
            raise
        _say(internal_error(prog, exc))
        return ExitCode.FAILED


# --- parsers ---------------------------------------------------------------------------


def parse_args(verb: str, argv: List[str]) -> argparse.Namespace:
    """`argv` parsed by `verb`'s parser; a `UsageError` when it is wrong."""
    parser = _parser(f"simple_gpu_scheduler {verb}", verb)
    _VERBS[verb][0](parser)
    if verb == "add":
        return _parse_add(parser, argv)
    return parser.parse_intermixed_args(argv)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter without its import of `shutil` (start-up time: it
    builds one for every option it adds): the width from COLUMNS or the
    terminal, as `cli.main` does."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=(_width_of(sys.__stdout__) or 80) - 2)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, not the whole usage block."""

    def error(self, message: str) -> NoReturn:
        raise _ArgumentError(message)


def _parser(prog: str, verb: str) -> _Parser:
    argtypes.untranslated_argparse()
    parser = _Parser(prog=prog, allow_abbrev=False, description=_DESCRIPTIONS[verb],
                     formatter_class=_Formatter)
    parser.add_argument(
        "--run", metavar="NAME|PID",
        help="the run to talk to, by its --name or pid (needed when several are live)")
    parser.add_argument(
        "--control-dir", metavar="DIR",
        help="where the runs' sockets are (default: $SGS_CONTROL_DIR, else "
        "$XDG_RUNTIME_DIR/simple_gpu_scheduler, else /tmp/simple_gpu_scheduler-UID)")
    return parser


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the reply as JSON")


_DESCRIPTIONS = {
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


def _job_ids(parser: argparse.ArgumentParser, nargs: str) -> None:
    parser.add_argument("ids", nargs=nargs, type=argtypes.non_negative_int, metavar="ID",
                        help="job ids (as `ls` shows them)")


def _connect(args: argparse.Namespace) -> Connection:
    """The connection to the run that --run names (or the only live one)."""
    return Connection.open(find_run(control_dir(args.control_dir), args.run).path)


def _call(conn: Connection, request: Dict[str, Any]) -> Dict[str, Any]:
    reply = conn.request(request)
    if reply.get("ok") is not True:
        raise _Refused(str(reply.get("error") or "the run refused the request"))
    return reply


def _simple(op: str) -> Handler:
    """The handler of a verb that is only its op (pause, drain, ...): quiet."""

    def handle(args: argparse.Namespace) -> int:
        with _connect(args) as conn:
            _call(conn, {"op": op})
        return ExitCode.OK

    return handle


# --- status ----------------------------------------------------------------------------


def _setup_status(parser: argparse.ArgumentParser) -> None:
    _json_option(parser)
    parser.add_argument("--watch", action="store_true",
                        help="redraw every second, until Ctrl-C or the run ends")


def _status(args: argparse.Namespace) -> int:
    if args.watch:
        return _watch(args)
    runs, failed = _statuses(args)
    if args.json:
        _out(json.dumps(runs) + "\n")
    else:
        width = _width_of(sys.stdout)
        _out(status_text(runs, width))
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
                runs.append(_call(conn, {"op": "status"})["run"])
        except ControlError:
            if args.run is not None:
                raise
        except _Refused as exc:
            _say(f"simple_gpu_scheduler status: error: {info.describe()}: {exc}")
            failed = True
    if not runs and not failed:
        raise UsageError(f"no run of yours is live in {directory}")
    return runs, failed


def _watch(args: argparse.Namespace) -> int:
    """Redraw every second: the --run run until it ends, or every live run
    (listed again each time, so new runs appear) until none is left."""
    import time

    tty = _width_of(sys.stdout) is not None
    conn = _connect(args) if args.run is not None else None
    try:
        while True:
            if conn is not None:
                try:
                    runs = [_call(conn, {"op": "status"})["run"]]
                except ControlError:
                    _out(f"run {conn.name} (pid {conn.pid}) has ended\n")
                    return ExitCode.OK
            else:
                try:
                    runs, _ = _statuses(args)
                except UsageError:
                    _out("no run is live any more\n")
                    return ExitCode.OK
            if args.json:
                text = json.dumps(runs) + "\n"
            else:
                width = _width_of(sys.stdout)
                text = status_text(runs, width)
            _out(CLEAR + text if tty else text + "\n")
            time.sleep(1.0)
    except KeyboardInterrupt:
        return ExitCode.OK
    finally:
        if conn is not None:
            conn.close()


# --- ls --------------------------------------------------------------------------------


def _setup_ls(parser: argparse.ArgumentParser) -> None:
    _json_option(parser)


def _ls(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        reply = _call(conn, {"op": "ls"})
    jobs, forgotten = reply.get("jobs") or [], int(reply.get("forgotten") or 0)
    if args.json:
        _out(json.dumps({"jobs": jobs, "forgotten": forgotten}) + "\n")
        return ExitCode.OK
    _out("".join(line + "\n" for line in ls_lines(jobs)))
    footer = ls_footer(forgotten)
    if footer:
        _say(footer)
    return ExitCode.OK


# --- add -------------------------------------------------------------------------------


def _setup_add(parser: argparse.ArgumentParser) -> None:
    parser.usage = "%(prog)s [options] [--jsonl | -- CMD...]"
    _json_option(parser)
    parser.add_argument("--gpus", type=argtypes.positive_int, metavar="N",
                        help="GPUs the job gets (default: the run's --gpus-per-job)")
    parser.add_argument("--mem", metavar="SIZE", help="GPU memory the job needs (12GiB)")
    parser.add_argument("--on", metavar="IDS", help="only these GPUs, comma-separated")
    parser.add_argument("--priority", type=int, metavar="P",
                        help="lower starts first, among the queued jobs (default: 0)")
    parser.add_argument("--name", metavar="NAME", help="the job's name")
    parser.add_argument("--timeout", metavar="DURATION",
                        help="end an attempt after DURATION (90, 30s, 15m, 2h, 1d)")
    parser.add_argument("--retries", type=argtypes.non_negative_int, metavar="N",
                        help="run a failed job up to N more times")
    parser.add_argument("--front", action="store_true",
                        help="before every queued job of its priority")
    parser.add_argument(
        "--jsonl", action="store_true",
        help="read jobs from stdin as JSON lines, as --input jsonl does (no CMD then)")
    parser.add_argument("cmd", nargs="*", metavar="CMD",
                        help="the command; its words are joined with spaces")


#: The options of `add` that become keys of its one job object (dest, key).
_JOB_OPTIONS = (("gpus", "gpus"), ("mem", "mem"), ("on", "on"), ("priority", "priority"),
                ("name", "name"), ("timeout", "timeout"), ("retries", "retries"))


def _parse_add(parser: argparse.ArgumentParser, argv: List[str]) -> argparse.Namespace:
    """Everything after the first ``--`` is the command, whatever it looks like
    (``-- python train.py --lr 0.1``); split here rather than trust argparse's
    handling of ``--``, which has changed between Python versions."""
    if "--" in argv:
        cut = argv.index("--")
        args = parser.parse_args(argv[:cut])
        args.cmd = list(args.cmd) + argv[cut + 1:]
    else:
        args = parser.parse_args(argv)
    return args


def add_request(
    args: argparse.Namespace, cwd: str, env: Dict[str, str],
    stdin: Optional[bytes] = None,
) -> Dict[str, Any]:
    """The ``add`` request for parsed `args` (pure: the directory, environment
    and, with --jsonl, stdin's bytes are passed in)."""
    request: Dict[str, Any] = {"op": "add", "cwd": cwd, "env": env, "front": args.front}
    if args.jsonl:
        given = [f"--{dest}" for dest, _ in _JOB_OPTIONS if getattr(args, dest) is not None]
        if args.cmd or given:
            raise _ArgumentError(
                f"--jsonl takes the jobs from stdin: no CMD and no {'/'.join(given) or 'CMD'}; "
                "put such keys in each line")
        request["lines"] = jsonl_lines(stdin or b"")
        if not request["lines"]:
            raise UsageError("--jsonl: stdin holds no job lines")
        return request
    if not args.cmd:
        raise _ArgumentError("give the command after --, or --jsonl to read JSON lines")
    job: Dict[str, Any] = {}
    raw = b" ".join(os.fsencode(word) for word in args.cmd)
    try:
        job["cmd"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        import base64

        job["cmd_b64"] = base64.b64encode(raw).decode("ascii")
    for dest, key in _JOB_OPTIONS:
        value = getattr(args, dest)
        if value is None:
            continue
        if key == "on":
            value = [part.strip() for part in value.split(",") if part.strip()]
        job[key] = value
    request["jobs"] = [job]
    return request


#: Bytes of JSON lines per ``add`` request. A server takes requests of up to
#: 1 MiB; and it answers nobody else while it checks one (3,000 lines take
#: about 50 ms), so a long --jsonl input goes in several small ones.
BATCH = 64 * 1024


def add_batches(request: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
    """`request` as requests the server takes: its ``lines`` cut into batches
    of about `BATCH` bytes (each batch all or nothing), else as it is."""
    lines = request.get("lines")
    if not lines:
        yield request
        return
    batch: List[Union[str, Dict[str, str]]] = []
    size = 0
    for line in lines:
        cost = len(json.dumps(line)) + 1
        if batch and size + cost > BATCH:
            yield dict(request, lines=batch)
            batch, size = [], 0
        batch.append(line)
        size += cost
    yield dict(request, lines=batch)


def jsonl_lines(data: bytes) -> List[Union[str, Dict[str, str]]]:
    """Stdin's JSON lines for ``add --jsonl``: each without its newline, blank
    ones skipped; a line that is not UTF-8 as ``{"b64": ...}`` (its bytes), so
    that it reaches the run's parser, which names the line and the problem."""
    lines: List[Union[str, Dict[str, str]]] = []
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            import base64

            lines.append({"b64": base64.b64encode(line).decode("ascii")})
    return lines


def _add(args: argparse.Namespace) -> int:
    stdin = None
    if args.jsonl:
        if sys.stdin is None:
            raise UsageError("--jsonl: stdin is closed")
        stdin = sys.stdin.buffer.read()
    request = add_request(args, os.getcwd(), dict(os.environ), stdin)
    ids: List[int] = []
    with _connect(args) as conn:
        for part in add_batches(request):
            try:
                ids += _call(conn, part).get("ids") or []
            except _Refused as exc:
                if ids:  # earlier batches are in: say which, as a script needs
                    _out("".join(f"{job_id}\n" for job_id in ids))
                    raise _Refused(f"{exc} (jobs {ids[0]}-{ids[-1]} of the lines "
                                   "before it were added)") from None
                raise
    if args.json:
        _out(json.dumps({"ids": ids}) + "\n")
    else:
        _out("".join(f"{job_id}\n" for job_id in ids))
    return ExitCode.OK


# --- cancel, kill ----------------------------------------------------------------------


def _setup_ids(parser: argparse.ArgumentParser) -> None:
    _job_ids(parser, "+")


def _by_ids(op: str) -> Handler:
    """``cancel`` and ``kill``: quiet on success, as kill(1) is."""

    def handle(args: argparse.Namespace) -> int:
        with _connect(args) as conn:
            _call(conn, {"op": op, "ids": args.ids})
        return ExitCode.OK

    return handle


# --- log -------------------------------------------------------------------------------


def _setup_log(parser: argparse.ArgumentParser) -> None:
    _job_ids(parser, "*")
    parser.add_argument("--all", action="store_true", help="every job's output")
    parser.add_argument("-f", "--follow", action="store_true",
                        help="go on printing as the jobs print, until they are done")
    parser.add_argument("-n", "--lines", type=argtypes.non_negative_int, metavar="N",
                        help="only the last N lines of what is kept")


def _log(args: argparse.Namespace) -> int:
    if args.all == bool(args.ids):
        raise _ArgumentError("give job ids or --all (not both)")
    request: Dict[str, Any] = {"op": "log", "follow": args.follow, "lines": args.lines}
    if args.all:
        request["all"] = True
    else:
        request["ids"] = args.ids
    printer = LogLines(prefix=args.all or len(args.ids) > 1)
    with _connect(args) as conn:
        _call(conn, request)
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
            raise _ArgumentError("give add or remove before GPU ids")
        with _connect(args) as conn:
            run = _call(conn, {"op": "status"})["run"]
        lines = gpu_lines(run.get("gpus") or [], run.get("running") or [],
                          _width_of(sys.stdout))
    else:
        if not ids:
            raise _ArgumentError(f"gpus {args.action}: give GPU ids")
        if args.kill and args.action != "remove":
            raise _ArgumentError("--kill goes with gpus remove")
        request: Dict[str, Any] = {"op": "gpus", "action": args.action, "ids": ids}
        if args.action == "remove":
            request["kill"] = args.kill
        with _connect(args) as conn:
            reply = _call(conn, request)
        lines = gpu_lines(reply.get("gpus") or [], [], None)
    _out("".join(line + "\n" for line in lines))
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
    with _connect(args) as conn:
        _call(conn, request)
    return ExitCode.OK


# --- wait ------------------------------------------------------------------------------


def _setup_wait(parser: argparse.ArgumentParser) -> None:
    _json_option(parser)
    _job_ids(parser, "*")


def _wait(args: argparse.Namespace) -> int:
    request: Dict[str, Any] = {"op": "wait"}
    if args.ids:
        request["ids"] = args.ids
    with _connect(args) as conn:
        _call(conn, request)
        conn.settimeout(None)  # jobs may take days
        end: Dict[str, Any] = {}
        try:
            for line in conn.replies():
                end = line
        except ControlError:
            what = "the jobs were done" if args.ids else "it finished"
            _say(f"simple_gpu_scheduler wait: run {conn.name} (pid {conn.pid}) "
                 f"went away before {what}")
            return ExitCode.FAILED
    if args.json:
        _out(json.dumps(end) + "\n")
    else:
        _out("".join(line + "\n" for line in wait_lines(end)))
    return ExitCode.OK if end.get("succeeded") is True else ExitCode.FAILED


# --- output ----------------------------------------------------------------------------


def _width_of(stream: Any) -> Optional[int]:
    """The width of the terminal `stream` is, or None (a file, a pipe, closed)."""
    try:
        return terminal_width(stream.fileno())
    except (AttributeError, ValueError, OSError):
        return None


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


_say = say


_VERBS: Dict[str, Tuple[Callable[[argparse.ArgumentParser], None], Handler]] = {
    "status": (_setup_status, _status),
    "ls": (_setup_ls, _ls),
    "add": (_setup_add, _add),
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
