"""The ``simple_gpu_scheduler`` command line.

Parsing and validation, then the composition root: a usage error is one line
on stderr and exit status 2; otherwise the engine's collaborators are built
here (`_run`) and the engine runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import List, NoReturn, Optional, Tuple

    from ..control.attach import Control
    from ..control.handlers import Handlers
    from ..engine.loop import Loop
    from ..launch.base import Launcher
    from ..launch.cluster import Cluster
    from ..launch.streams import OutputMode
    from ..model.events import Event, Listener
    from ..placement.pool import GpuPool
    from ..report.console import Console
    from ..report.joblog import JobLogWriter, ResumeFilter
    from ..report.progress import ProgressLine
    from .gpu_options import GpuPlan

from .. import __version__
from ..errors import ExitCode, UsageError, internal_error, say
from . import argtypes

EXAMPLES = """\
examples:
  # three GPUs, one job each; commands from a file, one per line
  simple_gpu_scheduler --gpus 0,1,2 < jobs.txt

  # a sweep, generated and run
  simple_hypersearch "python train.py --lr {lr}" -p lr 1e-2 1e-3 | simple_gpu_scheduler --gpus 0 1

  # a live queue: append commands to gpu.queue at any time (tail -F follows
  # the name; an editor's save makes it read the file again from the start)
  touch gpu.queue; tail -F -n 0 gpu.queue | simple_gpu_scheduler --gpus 0,1
  echo "python train.py --seed 1 > seed1.log" >> gpu.queue

  # two jobs on each GPU, every job on two GPUs, output tagged per job
  simple_gpu_scheduler --gpus 0,1,2,3 --jobs-per-gpu 2 --gpus-per-job 2 --tag < jobs.txt

input: one shell command per line, run in input order; blank lines and lines
starting with # are skipped; a line ending in \\ continues on the next.
Each job gets CUDA_VISIBLE_DEVICES, SGS_JOB_ID (its number in the input) and
CUDA_DEVICE_ORDER=PCI_BUS_ID (unless already set), and /dev/null as stdin.

signals: the first Ctrl-C, SIGTERM or SIGHUP drains (running jobs finish,
queued commands are listed and not started); a second Ctrl-C or SIGTERM
terminates the running jobs (SIGKILL after --kill-grace); a third kills them.
SIGUSR1 prints a status table on stderr.

steering (from another shell of the same user, while the run goes on):
  simple_gpu_scheduler status | ls | add -- CMD | cancel ID | kill ID | log -f ID
  simple_gpu_scheduler pause | unpause | drain | stop | gpus remove ID | move | wait
  (each verb has its own --help; docs/control.md describes the socket)

exit status: 0 every command succeeded, 1 some failed or did not start,
2 usage error, 128+N stopped by signal N (130 for Ctrl-C).
"""


class Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter without its import of `shutil`, which costs more
    start-up time than a one-job run does: argparse builds a formatter for
    every option it checks, and each asks `shutil` for the terminal width."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_terminal_width() - 2)


def _terminal_width() -> int:
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, not the whole usage block."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> Parser:
    argtypes.untranslated_argparse()
    parser = Parser(
        prog="simple_gpu_scheduler",
        # No prefixes: `--jobs 4` must not become `--jobs-per-gpu 4` (an
        # out-of-memory storm), nor `--time` `--timeout`.
        allow_abbrev=False,
        description="Run shell commands from stdin on GPUs, one job per free GPU slot.",
        epilog=EXAMPLES,
        formatter_class=Formatter,
    )
    parser.add_argument(
        "--gpus", nargs="+", metavar="ID",
        help="GPU ids to use, comma- or space-separated, ranges too (0-3; ids, UUIDs or "
        "MIG ids, passed verbatim in CUDA_VISIBLE_DEVICES; checked against NVML or "
        "nvidia-smi when either answers), or all (the default): every GPU NVML or "
        "nvidia-smi finds, within CUDA_VISIBLE_DEVICES if set. Commands come on stdin "
        "(< jobs.txt), never as a file argument",
    )
    parser.add_argument(
        "--jobs-per-gpu", type=argtypes.positive_int, metavar="K",
        help="jobs that may share one GPU (default: 1, except that jobs declaring "
        "mem share a GPU as long as their memory fits)",
    )
    parser.add_argument(
        "--gpus-per-job", type=argtypes.positive_int, default=1, metavar="N",
        help="distinct GPUs each job gets (default: %(default)s)",
    )
    parser.add_argument(
        "--shell", metavar="PATH",
        help="shell that runs each command as PATH -c COMMAND "
        "(default: $SHELL, else your login shell, else /bin/sh)",
    )
    parser.add_argument(
        "--tag", action="store_true",
        help="prefix every line a job prints with [<job id>|gpu <ids>]; with --log-dir, "
        "output goes to the log files and, tagged, to stdout and stderr too",
    )
    parser.add_argument(
        "--log-dir", metavar="DIR",
        help="write each job's output to DIR/<job id>.out and .err, DIR/<job id>-<name>.* "
        "for a JSON line with a name (DIR is created). A log file is never truncated: "
        "a rerun or retry appends, after a '--- simple_gpu_scheduler: job N attempt K, "
        "DATE TIME ---' line when the file already holds something",
    )
    parser.add_argument(
        "--kill-grace", type=argtypes.seconds, default=10.0, metavar="SECONDS",
        help="after SIGTERM, wait this long before SIGKILL (default: %(default)g)",
    )
    add_run_options(parser)
    add_control_options(parser)
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument("-q", "--quiet", action="store_true",
                      help="print only failures, warnings and signal notices")
    talk.add_argument("-v", "--verbose", action="store_true", help="print more detail")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    from .gpu_options import add_gpu_arguments
    from .ray_options import add_ray_argument

    add_gpu_arguments(parser)
    add_ray_argument(parser)
    return parser


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options that bound, retry, log and show the run."""
    group = parser.add_argument_group("job log, resume, timeouts and retries")
    group.add_argument(
        "--joblog", metavar="FILE",
        help="append one row per finished attempt to FILE (GNU parallel's --joblog "
        "columns; Host is the GPU ids)",
    )
    resume = group.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume", action="store_true",
        help="skip input commands that already have a row in the --joblog FILE",
    )
    resume.add_argument(
        "--resume-failed", action="store_true",
        help="skip input commands that already succeeded in the --joblog FILE; "
        "run failed and missing ones",
    )
    group.add_argument(
        "--timeout", type=argtypes.duration, metavar="DURATION",
        help="end an attempt after DURATION (90, 30s, 15m, 2h, 1d): SIGTERM to its "
        "process group, SIGKILL after --kill-grace; it counts as failed",
    )
    group.add_argument(
        "--retries", type=argtypes.non_negative_int, default=0, metavar="N",
        help="run a failed job up to N more times, on the first free GPU (default: %(default)s)",
    )
    group.add_argument(
        "--halt-on-failure", choices=("soon", "now"), metavar="soon|now",
        help="after a job has failed for good: soon = start nothing new and let running "
        "jobs finish; now = terminate running jobs too",
    )
    group.add_argument(
        "--progress", action="store_true",
        help="show a status line on stderr (redrawn on a terminal, a plain line every "
        "few seconds otherwise); when stdin is a regular file its commands are counted "
        "first, so the line shows the whole queue and an ETA from the start",
    )


def add_control_options(parser: argparse.ArgumentParser) -> None:
    """The run's control socket, its name, and what it does after its input."""
    group = parser.add_argument_group("steering a running scheduler (docs/control.md)")
    group.add_argument(
        "--name", metavar="NAME",
        help="the run's name for the client verbs (--run NAME), the socket NAME.sock "
        "(default: the scheduler's pid)")
    group.add_argument(
        "--control-dir", metavar="DIR",
        help="directory of the control sockets, mode 0700 (default: $SGS_CONTROL_DIR, "
        "else $XDG_RUNTIME_DIR/simple_gpu_scheduler, else /tmp/simple_gpu_scheduler-UID)")
    group.add_argument("--no-control", action="store_true",
                       help="no control socket: the client verbs cannot see this run "
                       "(--name, --control-dir and --serve need the socket)")
    group.add_argument(
        "--serve", action="store_true",
        help="keep running after stdin has ended, taking jobs from add, until drain, "
        "stop or Ctrl-C: simple_gpu_scheduler --gpus 0,1 --serve < /dev/null &")
    group.add_argument(
        "--on-finish", metavar="CMD",
        help="after each job ends for good, run CMD through the shell with SGS_JOB_ID, "
        "SGS_JOB_NAME, SGS_EXIT, SGS_SIGNAL, SGS_STATUS (succeeded, failed, killed, timed "
        "out), SGS_GPUS and SGS_COMMAND set; its failure is reported, never fatal")


def open_joblog(
    path: str, resume: bool, resume_failed: bool, console: Console
) -> Tuple[JobLogWriter, Optional[ResumeFilter]]:
    """Validate FILE before anything runs; returns (writer, resume filter or None)."""
    from ..report.joblog import JobLogError, JobLogWriter, ResumeFilter, read_joblog

    try:
        rows, warning, keep = read_joblog(path)
    except JobLogError as exc:
        raise UsageError(f"--joblog {path}: not a job log: {exc}; left untouched") from None
    if warning:
        console.line(f"--joblog {path}: {warning}")
    try:
        writer = JobLogWriter(path, keep)
    except OSError as exc:
        raise UsageError(f"--joblog {path}: cannot write: {exc.strerror}") from None
    resume_filter = None
    if resume or resume_failed:
        resume_filter = ResumeFilter(rows, failed_too=resume_failed)
    return writer, resume_filter


#: The client verbs (`verbs`): ``simple_gpu_scheduler VERB ...``. Named here
#: so that a run never imports the client.
VERBS = ("status", "ls", "add", "cancel", "kill", "log", "pause", "unpause", "drain", "stop",
         "gpus", "move", "wait")


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] in VERBS:
        from .verbs import run_verb

        return run_verb(args[0], args[1:])
    if args and args[0] == "run":  # the same as no verb, spelled out
        args = args[1:]
        argv = args
    try:
        return _main(argv)
    except UsageError as exc:
        _say(f"simple_gpu_scheduler: error: {exc} (see --help)")
        return ExitCode.USAGE
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers are in place
        return ExitCode.INTERRUPTED
    except Exception as exc:  # a bug of ours: still one line, not a traceback
        if os.environ.get("SGS_DEBUG"):
            raise
        _say(internal_error("simple_gpu_scheduler", exc))
        return ExitCode.FAILED


def _standard_fds() -> List[int]:
    """Open /dev/null on each of fds 0, 1 and 2 that is closed (``<&-``), and
    return those: otherwise the first file we open (a lock directory, a job
    log) would become "stdin" or "stdout"."""
    closed = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.append(fd)
    for fd in closed:
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        os.set_inheritable(fd, True)  # jobs inherit 0, 1 and 2 as their own
    return closed


def _main(argv: Optional[List[str]]) -> int:
    closed = _standard_fds()
    # Until the engine's handlers are in place (the hardware may take seconds
    # to answer first), a SIGUSR1 meant for the status table must not kill us.
    if signal.getsignal(signal.SIGUSR1) != signal.SIG_IGN:
        signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    args = build_parser().parse_args(argv)

    if args.no_control and (args.serve or args.name or args.control_dir):
        flag = "--serve" if args.serve else ("--name" if args.name else "--control-dir")
        raise UsageError(f"{flag} needs the control socket; drop --no-control")
    if args.name is not None:
        from ..control.paths import check_name

        check_name(args.name)
    if (args.resume or args.resume_failed) and not args.joblog:
        flag = "--resume" if args.resume else "--resume-failed"
        raise UsageError(f"{flag} needs --joblog FILE to know what is done")

    # Imported here, after parsing, so `--help` and usage errors stay fast.
    from ..launch.streams import LogDir, Passthrough, Tagged
    from ..report.console import Console
    from .gpu_options import plan_gpus

    console = Console(verbosity=-1 if args.quiet else (1 if args.verbose else 0))
    if 0 in closed and not args.list_gpus:
        console.line("stdin is closed: there are no commands to read")
    cluster = None
    if args.ray is not None:
        from .ray_options import check_ray_args, join, list_cluster

        check_ray_args(args)
        if args.list_gpus:
            return list_cluster(args, console)
        cluster, plan = join(args, console)
    elif args.list_gpus:
        from .list_gpus import list_gpus

        return list_gpus(args, console)
    else:
        plan = plan_gpus(args, console)

    if args.log_dir is not None:
        try:
            os.makedirs(args.log_dir, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--log-dir: cannot create {args.log_dir}: {exc.strerror}") from None
        output: OutputMode = LogDir(args.log_dir, tag=args.tag)
    elif args.tag or args.progress:
        # --progress redraws a line on the terminal: job output must come
        # through our line-wise writer so that it never tears a line.
        output = Tagged(prefix=args.tag)
        if not args.no_control:
            # Output we copy anyway is also kept (bounded), for `log`.
            from ..launch.keeper import OutputKeeper

            output.keeper = OutputKeeper()
    else:
        output = Passthrough()

    joblog = resume_filter = resume_hint = progress = None
    if args.joblog:
        joblog, resume_filter = open_joblog(args.joblog, args.resume, args.resume_failed, console)
        from ..report.progress import resume_command

        resume_hint = resume_command(sys.argv[1:] if argv is None else argv)
    if args.progress:
        from ..report.progress import ProgressLine

        progress = ProgressLine(tty=os.isatty(2))
    if sys.stdin is not None and sys.stdin.isatty():
        console.line("reading commands from the terminal, one per line; end with Ctrl-D")
    return _run(args, plan, console, output, joblog, resume_filter, resume_hint, progress,
                cluster)


def _run(
    args: argparse.Namespace, plan: GpuPlan, console: Console, output: OutputMode,
    joblog: Optional[JobLogWriter], resume_filter: Optional[ResumeFilter],
    resume_hint: Optional[str], progress: Optional[ProgressLine],
    cluster: Optional[Cluster] = None,
) -> int:
    """Build the engine's collaborators and run it: the composition root."""
    from ..engine.config import Settings
    from ..engine.loop import Loop
    from ..input.reader import InputSource, count_commands, job_factory
    from ..launch.local import LocalLauncher
    from ..placement.pool import GpuPool
    from ..report.messages import ConsoleReport

    jsonl = args.input == "jsonl"
    make_job = job_factory(jsonl, gpus=args.gpus_per_job, timeout=args.timeout,
                           retries=args.retries, aliases=plan.aliases)
    source = InputSource(0, make_job, continuation=not jsonl)
    local = LocalLauncher(shell=args.shell, output=output)
    launcher: Launcher = local
    on_cluster = None
    if cluster is not None:
        from ..launch.cluster_launcher import ClusterLauncher

        launcher = on_cluster = ClusterLauncher(cluster, local.shell, output, args.kill_grace,
                                                plan.jobs_per_gpu or 1)
    pool = GpuPool(plan.ids, plan.jobs_per_gpu, memory=plan.memory, mig=plan.mig)
    report = ConsoleReport(console, joblog=joblog, progress=progress, resume_hint=resume_hint,
                           status_width=_status_width)
    listeners: List[Listener] = [report]
    keeper = getattr(output, "keeper", None)
    if keeper is not None:
        from ..model.events import JobDone

        def kept(event: Event) -> None:
            # From the start, clients or not: a done job's output joins the
            # finished ones', of which only the latest are kept.
            if type(event) is JobDone:
                keeper.job_done(event.job.id)

        listeners.append(kept)

    def listener(event: Event) -> None:
        for each in listeners:
            each(event)

    settings = Settings(
        kill_grace=args.kill_grace, halt=args.halt_on_failure, backfill=args.backfill,
        skip=resume_filter.skip if resume_filter is not None else None,
        memory_known=bool(plan.memory),
        progress_every=progress.interval if progress is not None else None)
    # A regular file's commands are counted up front (not held), so that the
    # progress line shows the whole queue and an ETA from the start.
    total = None
    if progress is not None:
        total = count_commands(0, continuation=not jsonl)
    loop = Loop(settings, launcher, source, pool, listener, gate=plan.gate,
                owners=local.leaders, total=total)
    loop.serving = args.serve
    if on_cluster is not None:
        from ..model.events import Notice
        from .ray_options import follow_cluster

        on_cluster.on_change = follow_cluster(pool, lambda text: loop.emit(Notice(text, 0)))
    if plan.gate is not None:
        from ..model.events import Notice

        def say(text: str, level: int = 0) -> None:
            loop.emit(Notice(text, level))

        plan.gate.say = say
        if plan.gate.watches_hardware:
            from ..gpus.sampler import Sampler

            assert plan.gate.backend is not None
            loop.sampler = Sampler(plan.gate.backend, loop.call_soon_threadsafe)
    if args.on_finish:
        from ..launch.notify import OnFinish
        from ..model.events import Notice

        # On a cluster too, they run here, where the scheduler runs.
        on_finish = OnFinish(args.on_finish, local, loop,
                             lambda text, level: loop.emit(Notice(text, level)), os.environ)
        listeners.append(on_finish)
        loop.helpers_busy = lambda: on_finish.busy
    control = None
    if not args.no_control:
        control = _control(args, loop, plan, output, pool)
        listeners.append(control.event)
        console.debug(f"control socket {control.listener.path} (simple_gpu_scheduler status)")
    try:
        return loop.run()
    finally:
        if control is not None:
            control.close()


def _control(args: argparse.Namespace, loop: Loop, plan: GpuPlan, output: OutputMode,
             pool: GpuPool) -> Control:
    """The run's control socket: bound now, served from the first client on."""
    from ..control.attach import Control
    from ..control.paths import check_dir, control_dir, listen

    directory = control_dir(args.control_dir)
    try:
        check_dir(directory, create=True)
    except UsageError as exc:
        raise UsageError(f"{exc} (or pass --no-control, or --control-dir DIR)") from None
    name = args.name or str(os.getpid())
    listener = listen(directory, name)

    def make_handlers() -> Handlers:
        from ..control.handlers import Handlers
        from ..engine.steering import Steering
        from ..input.jsonl import Defaults
        from .gpu_options import admitter

        defaults = Defaults(gpus=args.gpus_per_job, aliases=plan.aliases,
                            timeout=args.timeout, retries=args.retries)
        steering = Steering(loop, admitter(args, plan, pool))
        keeper = getattr(output, "keeper", None)
        return Handlers(loop, steering, name, defaults, output, keeper)

    from ..model.events import Notice

    return Control(listener, loop, make_handlers, lambda text: loop.emit(Notice(text, 1)))


def _status_width() -> Optional[int]:
    """The SIGUSR1 table's width: stderr's terminal, or whole commands."""
    from ..report.status import terminal_width  # only on SIGUSR1

    return terminal_width(2)


_say = say
