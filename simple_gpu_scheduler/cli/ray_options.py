"""``--ray [ADDRESS]``: the same command stream on a Ray cluster.

The options about this machine's GPUs (which ids, who else uses them, their
locks) do not apply there: Ray places each job on a node and gives it GPUs,
so they are refused with a reason rather than silently ignored. The run's
pool is the cluster's GPU slots, ``ray:0`` and on, one per GPU the cluster
has, following the nodes that join or die (`follow_cluster`).
"""

from __future__ import annotations

import argparse

from ..errors import UsageError

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Callable, List, Tuple

    from ..launch.cluster import Cluster
    from ..placement.pool import GpuPool
    from ..report.console import Console
    from .gpu_options import GpuPlan

#: Options about this machine's GPUs, refused with --ray: (flag, dest).
LOCAL_ONLY = (
    ("--gpus", "gpus"), ("--max-gpu-memory", "max_gpu_memory"),
    ("--max-gpu-util", "max_gpu_util"), ("--only-idle", "only_idle"),
    ("--gpu-memory", "gpu_memory"), ("--lock-dir", "lock_dir"), ("--no-lock", "no_lock"),
)


def add_ray_argument(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("running on a Ray cluster")
    group.add_argument(
        "--ray", nargs="?", const="auto", metavar="ADDRESS",
        help="run each job as a Ray task on the cluster at ADDRESS (auto, the default: "
        "RAY_ADDRESS or the cluster running on this machine; the head's HOST:PORT, from a "
        "machine of the cluster; or ray://HOST:PORT, the head's Ray Client server, from "
        "anywhere), "
        "asking for --gpus-per-job GPUs, or 1/K of one with --jobs-per-gpu K, and no CPU; "
        'needs pip install "simple_gpu_scheduler[ray]". With --list-gpus: the nodes '
        "and their GPUs")


def check_ray_args(args: argparse.Namespace) -> None:
    """Usage errors for options that mean nothing on a cluster."""
    for flag, dest in LOCAL_ONLY:
        if getattr(args, dest, None):
            why = ("the cluster's GPUs are used" if flag == "--gpus"
                   else "it is about this machine's GPUs")
            raise UsageError(f"{flag} does not go with --ray: {why}; Ray gives each job "
                             "its GPUs on the node it picks")
    if (args.jobs_per_gpu or 1) > 1 and args.gpus_per_job > 1:
        raise UsageError("--jobs-per-gpu and --gpus-per-job 2 or more do not go together "
                         "with --ray: on a cluster a job shares one GPU or has whole ones")


def join(args: argparse.Namespace, console: Console) -> Tuple[Cluster, GpuPlan]:
    """Join the cluster; the run's plan: one pool slot per GPU of the cluster."""
    from ..launch.cluster import connect
    from .gpu_options import GpuPlan

    cluster = connect(args.ray, console.line)
    if cluster.gpus < 1:
        raise UsageError(f"--ray {args.ray}: the Ray cluster has no GPUs (start its nodes "
                         "with ray start --num-gpus N)")
    ids = tuple(f"ray:{i}" for i in range(cluster.gpus))
    console.info(f"Ray cluster at {cluster.address}: {len(cluster.nodes)} node(s), "
                 f"{cluster.gpus} GPU(s)")
    return cluster, GpuPlan(ids, args.jobs_per_gpu)


def list_cluster(args: argparse.Namespace, console: Console) -> int:
    """``--list-gpus --ray``: each live node, its label, id and GPUs, on stdout."""
    import sys

    from ..launch.cluster import connect, node_rows

    cluster = connect(args.ray, console.line)
    rows: List[Tuple[str, ...]] = [
        (label, node_id, str(gpus), str(cpus)) for label, node_id, gpus, cpus in
        node_rows(cluster)]
    head = ("NODE", "NODE_ID", "GPUS", "CPUS")
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    for row in (head, *rows):
        sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "\n")
    sys.stdout.flush()
    console.info(f"{len(rows)} node(s), {cluster.gpus} GPU(s) at {cluster.address}; "
                 "NODE is what SGS_NODE and the job log's Host say")
    cluster.leave()
    return 0


def follow_cluster(pool: GpuPool, say: Callable[[str], None]) -> Callable[[Cluster], None]:
    """What the run does when nodes join or die: one pool slot per GPU the
    cluster has now. A slot past the count takes no new job (what runs there
    goes on: a job on a dead node is lost anyway); a slot comes back, or is
    added, when GPUs join."""

    def resized(now: Cluster) -> None:
        for index in range(max(now.gpus, len(pool.ids))):
            slot = f"ray:{index}"
            if index < now.gpus:
                pool.add_gpu(slot)  # new, or back
            else:
                pool.set_removed(slot, True)
        say(f"the Ray cluster has {len(now.nodes)} node(s) and {now.gpus} GPU(s) now")

    return resized
