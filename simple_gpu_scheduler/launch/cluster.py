"""Joining a Ray cluster (``--ray``): the address, Ray's import, and what the
driver knows of the cluster's nodes.

The launcher that runs jobs there is `cluster_launcher`; what runs on the
nodes is `cluster_node` (and, for a driver through Ray Client, `cluster_client`).

Ray is imported only here and in those modules (it costs 0.3 s or more), and
only once ``--ray`` is given.
"""

from __future__ import annotations

import os
import signal

from ..errors import UsageError
from . import cluster_client, cluster_node

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional, Tuple

#: How to install what ``--ray`` needs.
INSTALL = 'pip install "simple_gpu_scheduler[ray]"'
#: Seconds the TCP look at a HOST:PORT address may take.
CONNECT_TIMEOUT = 5.0
#: Ray's messages that are not about our jobs (a node marked dead, a raylet
#: gone) are printed to the driver's stdout by Ray; they are our stderr's,
#: with this in front.
RAY_SAYS = "ray: "
#: The address prefix of Ray Client: the driver is a server on the head, and
#: this process talks to it over gRPC (see `cluster_client`).
CLIENT = "ray://"


class Cluster:
    """What the driver knows of the cluster: nodes, GPUs, labels."""

    def __init__(self, address: str, nodes: List[Dict[str, Any]]) -> None:
        self.address = address
        self.nodes = [n for n in nodes if n.get("Alive")]
        self.labels = cluster_node.node_labels(nodes)

    @property
    def head(self) -> Optional[str]:
        """The head node's id (Ray gives it the resource ``node:__internal_head__``)."""
        for node in self.nodes:
            if "node:__internal_head__" in node.get("Resources", {}):
                return str(node["NodeID"])
        return None

    @property
    def client(self) -> bool:
        """Whether this process joined through Ray Client (``ray://``)."""
        return self.address.startswith(CLIENT)

    @property
    def gpus(self) -> int:
        return int(sum(float(n.get("Resources", {}).get("GPU", 0)) for n in self.nodes))

    def leave(self) -> None:
        import ray

        ray.shutdown()

    @property
    def largest(self) -> int:
        return max((int(float(n.get("Resources", {}).get("GPU", 0))) for n in self.nodes),
                   default=0)


def connect(address: str, say: Callable[[str], None]) -> Cluster:
    """Import Ray and join the cluster at `address` (``auto``, ``HOST:PORT``,
    ``ray://HOST:PORT``) as a driver; UsageError with one line if either fails."""
    # A Ray call from the pump thread after `shutdown` must fail, not quietly
    # start a new local Ray ("auto-connect").
    os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
        import ray._private.worker as ray_worker
    except ImportError:
        raise UsageError(f"--ray needs Ray, which is not installed: {INSTALL}") from None
    if address == "auto" and os.environ.get("RAY_ADDRESS", "").startswith(CLIENT):
        # What `ray.init("auto")` does with it: Ray Client. Named here, so that
        # the launcher knows how the tasks' items come back.
        address = os.environ["RAY_ADDRESS"]
    _reachable(address)
    # Ray prints cluster-wide errors (a node marked dead) to our stdout, which
    # is the jobs' output stream: they go to stderr as our messages instead.
    def to_stderr(data: Any, *args: Any, **kwargs: Any) -> None:  # (data, ignore_prefix)
        lines = data.get("lines", []) if isinstance(data, dict) else [str(data)]
        for line in lines:
            say(RAY_SAYS + str(line))

    ray_worker.print_to_stdstream = to_stderr
    # `ray.init` puts its own SIGTERM handler (sys.exit) in place, and a few
    # others; ours go back afterwards (the engine installs its own later).
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                                               signal.SIGUSR1, signal.SIGCHLD)}
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR",
                 configure_logging=True)
    except Exception as exc:  # ConnectionError, ValueError, RuntimeError ...
        if address.startswith(CLIENT) and ("ray[client]" in str(exc)
                                           or isinstance(exc, ImportError)):
            # Ray without its `client` extra (grpcio): "Ray Client requires pip
            # package `ray[client]`", a ValueError.
            raise UsageError(f"--ray {address}: Ray Client needs grpcio, which is not "
                             f"installed: {INSTALL}") from None
        raise UsageError(f"--ray {address}: cannot join the Ray cluster: {why_of(exc)}"
                         ) from None
    finally:
        for signum, handler in saved.items():
            if handler is not None:
                signal.signal(signum, handler)
    # A node needs Ray, not this package: the node code travels by value.
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(cluster_node)
    ray.cloudpickle.register_pickle_by_value(cluster_client)
    return Cluster(address, ray.nodes())


def _reachable(address: str) -> None:
    """A HOST:PORT that nothing answers on fails in seconds here; Ray would
    retry it for minutes."""
    if address == "auto":
        return
    target = address[len(CLIENT):] if address.startswith(CLIENT) else address
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UsageError(f"--ray {address}: not an address: give auto, HOST:PORT or "
                         "ray://HOST:PORT")
    import socket

    try:
        socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT).close()
    except OSError as exc:
        why = exc.strerror or str(exc) or type(exc).__name__
        raise UsageError(f"--ray {address}: cannot reach the Ray cluster: {why}") from None


def why_of(exc: BaseException) -> str:
    """The line of a Ray error that says what went wrong. Ray Client's errors
    carry the server's traceback: "Initialization failure from server:", the
    trace, and its last line, the one that says why."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].endswith(":") and len(lines) > 1:
        return f"{lines[0]} {lines[-1]}"
    return lines[0]


def node_rows(cluster: Cluster) -> List[Tuple[str, str, int, int]]:
    """(label, node id, GPUs, CPUs) of each live node, for ``--list-gpus --ray``."""
    rows = []
    for node in cluster.nodes:
        node_id = str(node["NodeID"])
        resources = node.get("Resources", {})
        rows.append((cluster.labels.get(node_id, node_id[:8]), node_id,
                     int(float(resources.get("GPU", 0))), int(float(resources.get("CPU", 0)))))
    return sorted(rows)
