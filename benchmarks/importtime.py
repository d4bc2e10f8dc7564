#!/usr/bin/env python3
"""W5's start-up, module by module: `python -X importtime` on a one-job run.

Runs `echo true | SCRIPT --gpus 0 [--shell /bin/sh]` under `-X importtime`
`--runs` times for each console script given (default: the venvs `run.py`
builds under `--venv-dir`, ours and 0.1.4) and prints, per module, the median
self and cumulative microseconds (nesting as Python prints it), then the total
and the modules only one of the two imports. Run `benchmarks/run.py` once first
so the venvs exist. Standard library only; a diagnostic, not a benchmark table.

    python benchmarks/importtime.py
    python benchmarks/importtime.py --runs 9 --script ours=/path/to/simple_gpu_scheduler
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")
DEFAULT_VENVS = Path(tempfile.gettempdir()) / "simple_gpu_scheduler-bench-venvs"


def one_run(script: str, shell: bool) -> list:
    """[(module, self µs, cumulative µs, depth)] of one `echo true | script` run."""
    python = str(Path(script).parent / "python")
    argv = [python, "-X", "importtime", script, "--gpus", "0"]
    if shell:
        argv += ["--shell", "/bin/sh"]
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    done = subprocess.run(argv, input=b"true\n", capture_output=True, env=env, cwd="/",
                          timeout=60)
    if done.returncode != 0:
        raise SystemExit(f"{script}: exit {done.returncode}: {done.stderr[-500:]!r}")
    rows = []
    for line in done.stderr.decode(errors="replace").splitlines():
        m = LINE.match(line)
        if m:
            rows.append((m.group(4), int(m.group(1)), int(m.group(2)), len(m.group(3))))
    return rows


def summarize(name: str, runs: list) -> dict:
    """Print the per-module table of one tool; return module -> median self µs."""
    selfs: dict = {}
    cums: dict = {}
    for rows in runs:
        for mod, s, c, _ in rows:
            selfs.setdefault(mod, []).append(s)
            cums.setdefault(mod, []).append(c)
    totals = [sum(s for _, s, _, _ in rows) for rows in runs]
    print(f"## {name}: {len(runs[0])} modules, sum of self times "
          f"{statistics.median(totals) / 1000:.1f} ms (median of {len(runs)} runs)\n")
    print("| self µs | cumulative µs | module |\n|---:|---:|---|")
    for mod, _, _, depth in runs[0]:
        indent = "\u00a0\u00a0" * (depth - 1)
        print(f"| {statistics.median(selfs[mod]):.0f} | {statistics.median(cums[mod]):.0f} "
              f"| {indent}{mod} |")
    print()
    return {mod: statistics.median(v) for mod, v in selfs.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--venv-dir", default=str(DEFAULT_VENVS))
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--script", action="append", default=[], metavar="NAME=PATH",
                   help="a console script to measure (repeatable); default: ours and 0.1.4 "
                   "from --venv-dir")
    args = p.parse_args()
    tag = f"py{sys.version_info[0]}.{sys.version_info[1]}"
    scripts = [s.split("=", 1) for s in args.script] or [
        ["ours", str(Path(args.venv_dir) / f"ours-{tag}" / "bin" / "simple_gpu_scheduler")],
        ["0.1.4", str(Path(args.venv_dir) / f"orig-{tag}" / "bin" / "simple_gpu_scheduler")]]
    medians = {}
    for name, script in scripts:
        if not Path(script).exists():
            print(f"{name}: {script} is missing (run benchmarks/run.py first)\n")
            continue
        runs = [one_run(script, shell=name != "0.1.4") for _ in range(args.runs)]
        medians[name] = summarize(name, runs)
    if len(medians) == 2:
        (a, ma), (b, mb) = medians.items()
        for x, mx, my in ((a, ma, mb), (b, mb, ma)):
            only = sorted(set(mx) - set(my))
            print(f"- only {x}: {sum(mx[m] for m in only) / 1000:.2f} ms: {', '.join(only)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
