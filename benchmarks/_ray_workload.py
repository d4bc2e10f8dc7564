"""W8: many short jobs over a two-node local Ray cluster: ours `--ray` against a plain Ray script.

Decisions
---------
- **The cluster**: `tests/ray_cluster.py`'s `LocalCluster`, two `ray start` nodes on
  this machine with 2 logical GPUs (and 1 CPU) each, so 4 slots, under a temp dir of
  the run; started once for the workload, stopped in a `finally` (TERM, grace, KILL
  to each node's process group), and its `stop` raises when any process of the
  cluster is left: that is a failed run of the workload, not a note.
- **Ours**: `simple_gpu_scheduler --shell /bin/sh --ray ADDRESS < jobs` (`--shell
  /bin/sh`: each line runs as `/bin/sh -c LINE`, like the script's tasks).
- **The reference**: `ray_baseline.py` (next to this file), run with the Python of
  ours' console script (the same Ray, the same interpreter start-up): each line one
  streaming task `num_gpus=1, num_cpus=0, max_retries=0, max_calls=0` (workers
  reused) that runs `/bin/sh -c LINE`, `ray.wait` back-pressure with at most as many
  tasks in flight as the cluster has GPUs. It is the floor Ray allows for this job
  stream; what ours adds over it (a keeper process per job, the job's environment
  and working directory, the engine) is what the ratio shows.
- **Ours through Ray Client** (`--ray ray://HOST:PORT`, a third row, no target): the
  cluster also runs a Ray Client server (`LocalCluster(client=True)`, in `--mode=legacy`,
  see there), and ours joins through it, so the driver is that server and each job's
  start, output and end come back through the run's mailbox actor instead of the
  task's stream (`launch/cluster_client.py`). What the row shows is that feed's cost.
- **Wall time**: spawn to exit of each driver, `import ray` and `ray.init` included
  for both (both are drivers; a scheduler run is one Ray job, so each run starts its
  own workers). The script's own phases (import, init, jobs, shutdown) are noted.
- **Interleaved** like the other workloads (A B, B A, ...), after one untimed
  warm-up driver (4 × `true` by the script): the first driver after a cluster start
  connects slower (0.3-0.5 s instead of 0.03-0.07 s, docs/notes/ray-2.45-findings.md).
- **No "login shell default" row** (ours without `--shell`, `SHELL=/bin/bash`): it
  would add a third of W8's time, ~1.5 minutes, for what W1 and W5 already show (the
  few ms bash costs over sh per job, next to the 0.5 s sleeps here).
- **Skipped, with a note** (not a failure), when ours is not measured or the Python
  of ours' console script cannot import Ray (ours built into a venv, the default:
  the venv has no Ray; use `--ours-from-path` or `--ours-script` where Ray is
  installed), or when that Ray is not the version of the `ray` command that would
  start the cluster.
- `--quick`: 16 × `sleep 0.1`, 1 repetition whatever `--repeat` says, no warm-up
  (the cluster's start is most of its time already).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from _measure import timed_run
from _report import Section, Target, fmt, fmt_ratio, ratio, summarize
from _tools import SH, Tool
from _workloads import Bench, Config, Variant, check, run_interleaved

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
BASELINE = HERE / "ray_baseline.py"
NODES = 2
GPUS_PER_NODE = 2
#: Full and --quick sizes: (jobs, seconds each job sleeps).
FULL = (200, 0.5)
QUICK = (16, 0.1)
WARM_UP = ("true", 4)
#: Seconds a probe (`python -c "import ray"`) may take.
PROBE_TIMEOUT = 120.0
SCRIPT_LABEL = "Ray script (streaming tasks, `max_calls=0`)"


def is_quick(cfg: Config) -> bool:
    """Whether `cfg` is `--quick`'s (Config has no flag; W8 keeps its sizes here)."""
    return cfg == Config.quick(cfg.repeat)


def interpreter_of(script: str) -> str:
    """The Python named on the `#!` line of a console script, or this one."""
    try:
        with open(script, "rb") as f:
            first = f.readline(512).decode(errors="replace")
    except OSError:
        return sys.executable
    words = first[2:].split() if first.startswith("#!") else []
    if words and os.path.basename(words[0]).startswith("python"):
        return words[0]
    return sys.executable


def ray_version(python: str) -> tuple[Optional[str], str]:
    """(Ray's version, "") when `python` can import Ray, else (None, why not)."""
    try:
        done = subprocess.run([python, "-c", "import ray; print(ray.__version__)"],
                              capture_output=True, text=True, timeout=PROBE_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, str(exc)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return None, lines[-1] if lines else f"exit status {done.returncode}"
    return done.stdout.strip(), ""


def ray_env(tool: Tool) -> dict:
    """The tool's environment without RAY_ADDRESS (every command names its address)
    and without usage stats."""
    env = {k: v for k, v in tool.environ().items() if k != "RAY_ADDRESS"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def _stdin(bench: Bench, name: str, line: str, count: int) -> Path:
    path = bench.tmp / name
    path.write_text(f"{line}\n" * count)
    return path


def _script_phases(report: Path, jobs: int) -> list:
    """Notes from the script's report lines (the timed runs only: `jobs` jobs each)."""
    try:
        runs = [json.loads(line) for line in report.read_text().splitlines() if line]
    except (OSError, ValueError):
        return []
    runs = [r for r in runs if r.get("jobs") == jobs]
    if not runs:
        return []

    def med(key: str) -> float:
        return statistics.median(float(r[key]) for r in runs)

    seen = sorted({int(r["slots_seen"]) for r in runs})
    return [f"{SCRIPT_LABEL}, median of {len(runs)} run(s): `import ray` "
            f"{med('import_s'):.2f} s, `ray.init` {med('init_s'):.2f} s, the jobs "
            f"{med('run_s'):.2f} s, `ray.shutdown` {med('shutdown_s'):.2f} s (the rest of "
            "its wall time is the interpreter's start and exit); its jobs ran on "
            f"{'/'.join(map(str, seen))} distinct (node, GPU) slots of "
            f"{runs[0]['slots']}."]


def _rows(sec: Section, variants: list, ours_label: str, ideal: float) -> None:
    """Table rows, the two targets (on ours' row) and the sanity notes."""
    ref = next((summarize(v.samples) for v in variants if v.label == SCRIPT_LABEL), None)
    ref_med = ref.median if ref else None
    for v in variants:
        st = summarize(v.samples)
        med = st.median if st else None
        cells = []
        if v.label == ours_label:
            to_script, to_ideal = ratio(med, ref_med), ratio(med, ideal)
            found = [Target("W8", "≤ 1.10× the Ray script (ours `--shell /bin/sh`)",
                            fmt_ratio(to_script) if to_script else "script not measured",
                            check(to_script, lambda x: x <= 1.10)),
                     Target("W8", "≤ 1.25× ideal", fmt_ratio(to_ideal),
                            check(to_ideal, lambda x: x <= 1.25))]
            sec.targets += found
            cells = [t.cell() for t in found]
        sec.rows.append([v.label, fmt(med), fmt(st and st.min), fmt(st and st.max),
                         fmt_ratio(ratio(med, ideal)), fmt_ratio(ratio(med, ref_med)),
                         "; ".join(cells) or "—"])
        if st and st.min < ideal * 0.98:
            sec.notes.append(f"{v.label}: faster than the ideal ({st.min:.3f} s): did every "
                             "job run?")
        if v.errors:
            sec.errors += len(v.errors)
            sec.notes.append(f"{v.label}: {len(v.errors)} failed run(s): {v.errors[0]}")


def w8_ray(bench: Bench) -> Section:
    """W8: N × `sleep S` on a 2 × 2-GPU local Ray cluster, ours against the Ray script."""
    cfg = bench.cfg
    n, s = QUICK if is_quick(cfg) else FULL
    reps = 1 if is_quick(cfg) else cfg.repeat
    slots = NODES * GPUS_PER_NODE
    ideal = math.ceil(n / slots) * s
    sec = Section("W8", "a Ray cluster", [
        f"{n} × `sleep {s}` on a local Ray cluster of {NODES} nodes × {GPUS_PER_NODE} "
        f"logical GPUs ({slots} slots), {reps} repetition(s), interleaved"
        f"{'' if is_quick(cfg) else ', after one untimed warm-up driver'}. "
        f"Ideal wall time: {n}/{slots} × {s} s = {ideal:g} s. "
        "Ours: `simple_gpu_scheduler --shell /bin/sh --ray ADDRESS < jobs`; the Ray "
        f"script: `python {BASELINE.relative_to(HERE.parent)} ADDRESS < jobs`, one "
        "streaming task per line (`num_gpus=1, num_cpus=0, max_retries=0, max_calls=0`) "
        "running `/bin/sh -c LINE`, at most one per GPU in flight (`ray.wait`). Wall "
        "time from spawn to exit (`import ray` and `ray.init` included for both); "
        "“× Ray script”: ratio of medians from this run. Method: benchmarks/README.md."],
        ["tool", "median s", "min s", "max s", "× ideal", "× Ray script", "target"])
    ours = bench.tool("ours")
    if ours is None:
        sec.notes += bench.skip_notes(["ours"]) or ["ours: not selected"]
        sec.notes.append("W8 compares ours with the Ray script: nothing ran.")
        return sec
    python = interpreter_of(str(ours.script))
    version, why = ray_version(python)
    if version is None:
        sec.notes.append(f"skipped: Ray cannot be imported by ours' Python {python} ({why}); "
                         "W8 needs ours in an environment with Ray: `--ours-from-path` "
                         "or `--ours-script` there.")
        return sec
    if str(TESTS) not in sys.path:
        sys.path.append(str(TESTS))  # after ours: nothing of the tests shadows a module
    from ray_cluster import LocalCluster, find_ray, python_of

    try:
        cluster_python = python_of(find_ray())
    except RuntimeError as exc:
        sec.notes.append(f"skipped: no `ray` command to start the cluster with ({exc}).")
        return sec
    cluster_version = version if cluster_python == python else ray_version(cluster_python)[0]
    if cluster_version != version:
        sec.notes.append(f"skipped: ours' Python {python} has Ray {version}, but the `ray` "
                         f"command that would start the cluster runs {cluster_python} "
                         f"(Ray {cluster_version}).")
        return sec
    root = tempfile.mkdtemp(prefix="w8-", dir=bench.tmp)
    cluster = LocalCluster(root, gpus_per_node=GPUS_PER_NODE, nodes=NODES, client=True)
    began = time.monotonic()
    try:
        cluster.start()
        bench.log(f"W8: cluster at {cluster.address} up in {time.monotonic() - began:.1f} s")
        sec.notes.append(f"Ray {version}; the cluster (`tests/ray_cluster.py`, "
                         f"{NODES} nodes) started in {time.monotonic() - began:.1f} s.")
        env = ray_env(ours)
        report = Path(root) / "script-report.jsonl"
        script_argv = [python, str(BASELINE), cluster.address, "--report", str(report)]
        if not is_quick(cfg):
            warm = timed_run(script_argv, _stdin(bench, "w8-warm.in", *WARM_UP), env,
                             bench.tmp, cfg.timeout)
            if warm.seconds is None:
                sec.notes.append(f"the warm-up driver failed: {warm.error}")
            else:
                bench.log(f"W8 warm-up: {warm.seconds:.3f} s")
        ours_label = f"{ours.label} `--shell /bin/sh --ray`"
        # And ours through Ray Client (ray://, the mailbox feed), for what that
        # costs: no target of its own (the script runs on a node, as ours above).
        client_label = f"{ours.label} `--shell /bin/sh --ray ray://` (Ray Client)"
        variants = [Variant(ours_label, [str(ours.script), "--shell", SH, "--ray",
                                         cluster.address], env),
                    Variant(SCRIPT_LABEL, script_argv, env),
                    Variant(client_label, [str(ours.script), "--shell", SH, "--ray",
                                           cluster.client_address], env)]
        run_interleaved(bench, "W8", variants, _stdin(bench, "w8.in", f"sleep {s}", n), reps)
        _rows(sec, variants, ours_label, ideal)
        sec.notes += _script_phases(report, n)
    except RuntimeError as exc:
        sec.errors += 1
        sec.notes.insert(0, f"W8 stopped: {exc}")
        bench.log(f"W8: ERROR {exc}")
    finally:
        stopping = time.monotonic()
        try:
            cluster.stop()
            sec.notes.append(f"The cluster stopped in {time.monotonic() - stopping:.1f} s, "
                             "no process of it left (checked by `LocalCluster.stop`).")
        except RuntimeError as exc:
            sec.errors += 1
            sec.notes.append(f"stopping the cluster failed: {exc}")
    return sec
