#!/usr/bin/env python3
"""Benchmark simple_gpu_scheduler against xargs, GNU parallel and the original 0.1.4.

Standard library only. Run `python benchmarks/run.py` (full sizes, a few minutes)
or `python benchmarks/run.py --quick` (tiny sizes, seconds).

Method
------
Every tool gets the same commands on stdin and runs each one as `sh -c LINE`
with CUDA_VISIBLE_DEVICES set to its slot (see `_tools.py` for the exact command
lines). The reference is `xargs -P K --process-slot-var=CUDA_VISIBLE_DEVICES`
with one `sh -c` per command: it is about the least work any such tool can do,
so its time is the near-limit baseline. Ours runs with `--shell /bin/sh` in
every like-for-like row; W1 and W5 add rows of their own, "login shell default",
for ours without `--shell` and with `SHELL=/bin/bash` (each line as `bash -c`),
with, in W1, `xargs -P ... bash -c` as their reference.

Runs are interleaved: a repetition runs every tool once (A B C D), and the next
repetition rotates the order (B C D A, C D A B, ...), so slow drifts of the
machine (other load, thermal state, page cache) fall on all tools alike and no
tool always runs first or last. Each table gives the median, min and max over
the repetitions, and ratios of medians measured in the same run:

- "× xargs": the tool's median over xargs' median (W1, W2): 1.00× is as fast as
  xargs, 2.00× takes twice as long.
- "× ideal" (W2): median over the ideal wall time ceil(N/K) × sleep.
- "× 0.1.4" (W3, W4, W5): over the original simple-gpu-scheduler 0.1.4.
- "× ours (W1 setup)" (W6): ours with `--tag --joblog` over ours without them.

The two schedulers are installed into throw-away virtual environments
(`--venv-dir`, reused between runs; ours is reinstalled whenever its source
changes) and run through the environment's console script, so ours and 0.1.4
are measured the same way. A tool that cannot be found or installed is skipped
with a note in the output; so is one that fails a pre-flight check (8 jobs that
print their CUDA_VISIBLE_DEVICES, each a valid slot).

W7 (a long queue of jobs added to a `--serve` run) compares ours with task-spooler
(`tsp`), not with the tools above: see `_queue_workload.py`.
W8 (200 × `sleep 0.5` on a two-node local Ray cluster) compares ours `--ray` with a
plain Ray script, `ray_baseline.py`: see `_ray_workload.py`.

The targets of the issue are checked for our scheduler and listed at the end.
They were set for a 2-core machine.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _queue_workload import w7_queue  # noqa: E402
from _ray_workload import w8_ray  # noqa: E402
from _report import load_average, machine_lines, targets_section  # noqa: E402
from _scheduler_workloads import w3_stream, w4_idle  # noqa: E402
from _tools import ALL_TOOLS, ORIG_SPEC, discover, parse_tools  # noqa: E402
from _workloads import Bench, Config, w1_throughput, w2_dispatch, w5_one_job, w6_features  # noqa: E402

WORKLOADS = {"W1": w1_throughput, "W2": w2_dispatch, "W3": w3_stream, "W4": w4_idle,
             "W5": w5_one_job, "W6": w6_features, "W7": w7_queue, "W8": w8_ray}

REPO = Path(__file__).resolve().parent.parent
DEFAULT_VENVS = Path(tempfile.gettempdir()) / "simple_gpu_scheduler-bench-venvs"


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """The command line, with `tool_keys` and `workload_keys` resolved and checked."""
    p = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description="Compare simple_gpu_scheduler with xargs -P, GNU parallel and the "
        "original 0.1.4 on eight workloads; print markdown tables (median, min, max, ratios).",
        epilog="Workloads: W1 throughput, W2 dispatch, W3 memory on a long stream + SIGINT, "
        "W4 idle CPU, W5 one job, W6 --tag/--joblog, W7 a long queue of added jobs (ours "
        "and task-spooler's tsp, when installed, whatever --tools says), W8 a two-node "
        "local Ray cluster (ours --ray and a plain Ray script; needs Ray in ours' Python). "
        "Tools: xargs, parallel, orig (0.1.4), ours.")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes (seconds, not minutes): a smoke test, not a measurement")
    p.add_argument("--tools", default=",".join(ALL_TOOLS),
                   help="comma-separated tools to run (default: %(default)s)")
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help="comma-separated workloads to run (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=None,
                   help="repetitions per workload (default: 3, or 2 with --quick; "
                   "W5 always takes 20, or 3 with --quick; W8 1 with --quick)")
    p.add_argument("--out", metavar="FILE", help="also write the markdown to FILE")
    p.add_argument("--venv-dir", default=str(DEFAULT_VENVS),
                   help="where the throw-away virtual environments live (default: %(default)s)")
    p.add_argument("--orig-spec", default=ORIG_SPEC,
                   help="what pip installs as the original (default: %(default)s; a wheel "
                   "path works offline)")
    p.add_argument("--ours-from-path", action="store_true",
                   help="run the simple_gpu_scheduler installed in this Python environment "
                   "instead of building a venv (fast and offline; used by the test)")
    p.add_argument("--ours-script", metavar="PATH",
                   help="run this simple_gpu_scheduler executable as ours (no venv)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every run on stderr")
    args = p.parse_args(argv)
    try:
        args.tool_keys = parse_tools(args.tools)
    except ValueError as exc:
        p.error(str(exc))
    args.workload_keys = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in args.workload_keys if w not in WORKLOADS]
    if unknown:
        p.error(f"unknown workload(s) {', '.join(unknown)} (choose from {', '.join(WORKLOADS)})")
    if args.repeat is not None and args.repeat < 1:
        p.error("--repeat must be at least 1")
    return args


def make_config(args: argparse.Namespace) -> Config:
    """Full or --quick sizes, with --repeat applied."""
    if args.quick:
        return Config.quick(args.repeat or 2)
    return Config(repeat=args.repeat or 3)


def header(args: argparse.Namespace, argv: Sequence[str], notes: dict) -> str:
    """Title, reproduce command, machine, and how each tool runs (or why it was skipped)."""
    command = " ".join(["python benchmarks/run.py", *map(shlex.quote, argv)])
    lines = ["# simple_gpu_scheduler benchmarks", "", f"Reproduce: `{command}`", "",
             "Machine:", *machine_lines(REPO), "",
             "Tools (every command runs as `sh -c LINE`, except in the W1 and W5 rows "
             "marked “login shell default”: see their notes):"]
    lines += [f"- {key}: {notes[key]}" for key in args.tool_keys]
    if args.quick:
        lines += ["", "**--quick: tiny sizes, the numbers are not meaningful.**"]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the chosen workloads; 0 when every timed run succeeded, 1 otherwise."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[bench {time.monotonic() - started:6.1f}s] {message}", file=sys.stderr,
              flush=True)

    def detail(message: str) -> None:
        if args.verbose:
            log(message)

    with tempfile.TemporaryDirectory(prefix="sgs-bench-") as tmp:
        tools, notes = discover(args.tool_keys, args, REPO, Path(tmp), log)
        skipped = {k: v for k, v in notes.items() if k not in {t.key for t in tools}}
        bench = Bench(tools, skipped, make_config(args), Path(tmp), detail)
        parts = [header(args, argv, notes)]
        print(parts[0], flush=True)
        targets, errors = [], 0
        for key in args.workload_keys:
            log(f"running {key}")
            section = WORKLOADS[key](bench)
            targets += section.targets
            errors += section.errors
            parts.append(section.markdown())
            print(parts[-1], flush=True)
        parts.append(targets_section(targets)
                     + f"\nLoad average (1 min) at the end: {load_average()}.\n")
        print(parts[-1], flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(parts))
    log(f"done in {time.monotonic() - started:.0f} s")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
