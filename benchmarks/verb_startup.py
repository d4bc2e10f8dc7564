"""A client verb's start-up against a one-job run's (W5), interleaved A/B.

The live-control issue asks that ``simple_gpu_scheduler status`` cost no more
than a one-job run, so that ``watch simple_gpu_scheduler status`` and scripts
that call ``add`` in a loop stay cheap. This runs, N times each and
interleaved: ``status`` against a ``--serve`` run started here, a one-job run
(``echo true | simple_gpu_scheduler --gpus 0 --shell /bin/sh``), and, when
given, another executable's one-job run (0.1.4's, from the benchmark venvs).

    python benchmarks/verb_startup.py [--runs 100] [--sgs PATH] [--orig PATH]

Medians and minimums in ms; a private control and lock directory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from typing import Dict, List


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--sgs", default=shutil.which("simple_gpu_scheduler") or "")
    parser.add_argument("--orig", help="another scheduler for the one-job row (0.1.4)")
    args = parser.parse_args()
    private = tempfile.mkdtemp(prefix="sgs-verb-startup-")
    env = dict(os.environ, SGS_CONTROL_DIR=os.path.join(private, "control"),
               SGS_LOCK_DIR=os.path.join(private, "locks"))
    server = subprocess.Popen([args.sgs, "--gpus", "0", "--serve", "--name", "bench",
                               "--shell", "/bin/sh"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 10
        while subprocess.run([args.sgs, "status"], env=env, capture_output=True).returncode:
            if time.monotonic() > deadline:
                raise SystemExit("the --serve run never answered")
        commands = {
            "status": [args.sgs, "status"],
            "one-job run": [args.sgs, "--gpus", "0", "--shell", "/bin/sh"],
        }
        if args.orig:
            commands["one-job run (--orig)"] = [args.orig, "--gpus", "0"]
        times: Dict[str, List[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, command in commands.items():
                started = time.perf_counter()
                subprocess.run(command, input=b"true\n", env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
                times[name].append((time.perf_counter() - started) * 1000)
        for name, values in times.items():
            print(f"{name:22s} median {statistics.median(values):6.1f} ms   "
                  f"min {min(values):6.1f} ms")
    finally:
        subprocess.run([args.sgs, "drain"], env=env, capture_output=True)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(private, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
