"""``simple_gpu_scheduler add``: the request a command line makes, in batches.

Pure where it can be (`add_request`, `add_batches`, `jsonl_lines` take the
directory, environment and stdin's bytes as arguments), so tests read the
requests without a server; `add` sends them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import ExitCode, UsageError
from . import argtypes
from .verb_base import ArgumentError, Refused, call, connect, json_option, out

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Any, Dict, Iterator, List, Optional, Union


def setup_add(parser: argparse.ArgumentParser) -> None:
    parser.usage = "%(prog)s [options] [--jsonl | -- CMD...]"
    json_option(parser)
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


def parse_add(parser: argparse.ArgumentParser, argv: List[str]) -> argparse.Namespace:
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
            raise ArgumentError(
                f"--jsonl takes the jobs from stdin: no CMD and no {'/'.join(given) or 'CMD'}; "
                "put such keys in each line")
        request["lines"] = jsonl_lines(stdin or b"")
        if not request["lines"]:
            raise UsageError("--jsonl: stdin holds no job lines")
        return request
    if not args.cmd:
        raise ArgumentError("give the command after --, or --jsonl to read JSON lines")
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


def add(args: argparse.Namespace) -> int:
    stdin = None
    if args.jsonl:
        if sys.stdin is None:
            raise UsageError("--jsonl: stdin is closed")
        stdin = sys.stdin.buffer.read()
    request = add_request(args, os.getcwd(), dict(os.environ), stdin)
    ids: List[int] = []
    with connect(args) as conn:
        for part in add_batches(request):
            try:
                ids += call(conn, part).get("ids") or []
            except Refused as exc:
                if ids:  # earlier batches are in: say which, as a script needs
                    out("".join(f"{job_id}\n" for job_id in ids))
                    raise Refused(f"{exc} (jobs {ids[0]}-{ids[-1]} of the lines "
                                   "before it were added)") from None
                raise
    if args.json:
        out(json.dumps({"ids": ids}) + "\n")
    else:
        out("".join(f"{job_id}\n" for job_id in ids))
    return ExitCode.OK
