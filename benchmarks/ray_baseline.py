#!/usr/bin/env python3
"""W8's reference: the shell commands on stdin as plain Ray tasks, one per GPU slot.

usage: python benchmarks/ray_baseline.py ADDRESS [--plain] [--report FILE] < commands

About the least a driver can do to run a stream of shell commands on a Ray
cluster's GPU slots: each line of stdin becomes one task
(`num_gpus=1, num_cpus=0, max_retries=0, max_calls=0`: workers are reused, where
Ray's default for GPU tasks, `max_calls=1`, would start a new worker per task) that
runs `/bin/sh -c LINE` in a session of its own, stdin from /dev/null, and streams
its output back to the driver's stdout and stderr (a streaming generator, as our
scheduler does; with `--plain`, a plain task that returns the output at the end).
`ray.wait` back-pressure keeps at most as many tasks in flight as the cluster has
GPUs. No keeper, no job log, no per-job environment or working directory: those
are what our scheduler adds on top. The tested original is in
docs/notes/ray-2.45-findings.md, section 5.

Exit status 0 when every command exited 0, 1 otherwise. `--report FILE` appends
one JSON line: jobs, failed, slots, the distinct (node, CUDA_VISIBLE_DEVICES)
pairs the jobs saw, and the seconds of `import ray`, `ray.init`, the jobs and
`ray.shutdown` (the interpreter's own start is before the first clock).
"""

from __future__ import annotations

import time

STARTED = time.monotonic()

import argparse
import json
import os
import sys

import ray

IMPORTED = time.monotonic()

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterator, List, Set, Tuple

SHELL = "/bin/sh"
#: Seconds one `ray.wait` waits before it loops (only a bound: a ready task ends it).
WAIT = 5.0


def _where() -> Tuple[str, str]:
    """(node id, CUDA_VISIBLE_DEVICES) of the task running this."""
    node = ray.get_runtime_context().get_node_id()
    return node, os.environ.get("CUDA_VISIBLE_DEVICES", "")


def run_streaming(cmd: str) -> Iterator[Tuple[Any, ...]]:
    """The job as a streaming task: ("out"|"err", bytes) chunks, then ("exit", rc, node,
    gpus)."""
    import selectors
    import subprocess

    proc = subprocess.Popen([SHELL, "-c", cmd], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    sel = selectors.DefaultSelector()
    for name, pipe in (("out", proc.stdout), ("err", proc.stderr)):
        sel.register(pipe, selectors.EVENT_READ, name)
    while sel.get_map():
        for key, _ in sel.select():
            data = os.read(key.fd, 65536)
            if data:
                yield (key.data, data)
            else:
                sel.unregister(key.fileobj)
                key.fileobj.close()
    sel.close()
    yield ("exit", proc.wait(), *_where())


def run_plain(cmd: str) -> Tuple[int, bytes, bytes, str, str]:
    """The job as a plain task: (rc, stdout, stderr, node, gpus) once it has ended."""
    import subprocess

    done = subprocess.run([SHELL, "-c", cmd], start_new_session=True,
                          stdin=subprocess.DEVNULL, capture_output=True)
    return (done.returncode, done.stdout, done.stderr, *_where())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("address", help="HOST:PORT of the cluster's GCS")
    parser.add_argument("--plain", action="store_true",
                        help="plain tasks that return the output at the end (default: "
                        "streaming generators)")
    parser.add_argument("--report", metavar="FILE", help="append one JSON line of timings")
    args = parser.parse_args()
    commands = [line for line in sys.stdin.read().splitlines() if line.strip()]
    out, err = sys.stdout.buffer, sys.stderr.buffer

    began = time.monotonic()
    ray.init(address=args.address, log_to_driver=False, logging_level="ERROR")
    joined = time.monotonic()
    slots = int(ray.cluster_resources().get("GPU", 0))
    options = {"num_gpus": 1, "num_cpus": 0, "max_retries": 0, "max_calls": 0}
    failed = 0
    seen: Set[Tuple[str, str]] = set()
    live: List[Any] = []
    submitted = done = 0
    if args.plain:
        task = ray.remote(**options)(run_plain)
    else:
        task = ray.remote(num_returns="streaming", **options)(run_streaming)
    while done < len(commands):
        while submitted < len(commands) and len(live) < slots:  # back-pressure
            live.append(task.remote(commands[submitted]))
            submitted += 1
        ready, _ = ray.wait(live, num_returns=1, timeout=WAIT)
        for ref in ready:
            if args.plain:
                rc, stdout, stderr, node, gpus = ray.get(ref)
                out.write(stdout)
                err.write(stderr)
                live.remove(ref)
                done += 1
                failed += rc != 0
                seen.add((node, gpus))
                continue
            try:
                item = ray.get(next(ref))
            except StopIteration:
                live.remove(ref)
                done += 1
                continue
            if item[0] == "out":
                out.write(item[1])
            elif item[0] == "err":
                err.write(item[1])
            else:
                failed += item[1] != 0
                seen.add((item[2], item[3]))
    ran = time.monotonic()
    ray.shutdown()
    ended = time.monotonic()
    out.flush()
    if args.report:
        with open(args.report, "a") as report:
            report.write(json.dumps({
                "jobs": len(commands), "failed": failed, "slots": slots,
                "slots_seen": len(seen), "mode": "plain" if args.plain else "streaming",
                "import_s": IMPORTED - STARTED, "init_s": joined - began,
                "run_s": ran - joined, "shutdown_s": ended - ran}) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
