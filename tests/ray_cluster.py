"""A private local Ray cluster of several nodes on this one machine, for the
tests and the benchmarks of the Ray launcher.

Standard library only, and no ``import ray``: the cluster is driven through the
``ray`` command line as subprocesses, so importing this module costs nothing
and works where Ray is not installed (`LocalCluster.start` then says so).

Each node is one ``ray start`` run under its own session (``setsid``), so the
node's raylet, daemons and workers all share one process group whose id is the
pid of that ``ray start``. Stopping a node is a signal to its group, never
``ray stop``, which kills every Ray process of the user on the machine,
including other test sessions' clusters and the user's own.

How the nodes are told apart (they all report the same IP here), the startup
costs and the stop behaviour measured on Ray 2.45 are in
``docs/notes/ray-2.45-findings.md``, section 1.

Usage::

    with LocalCluster(str(tmp_path)) as cluster:
        ray.init(address=cluster.address)
        ...
        cluster.stop_node(1)           # a node "crashes"
    # stop() has checked that no process of the cluster is left

``python3 tests/ray_cluster.py`` starts and stops one and prints the timings.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import IO, Any, Dict, List, Optional, Set, Tuple

#: Ports are handed out in blocks, one block per node. The layout of a block
#: (offsets from its first port); offsets 9-27 are spare.
BLOCK_SIZE = 128
_GCS, _NODE_MANAGER, _OBJECT_MANAGER, _AGENT_LISTEN, _AGENT_GRPC, _RUNTIME_ENV, \
    _METRICS, _DASHBOARD, _CLIENT = range(9)
_WORKERS_FIRST, _WORKERS_LAST = 28, BLOCK_SIZE - 1          # 100 worker ports a node

#: Where the blocks come from: above Ray's default worker-port range (10002-19999,
#: used by any cluster started with default flags) and below the kernel's
#: ephemeral range (read from /proc at start; 32768 on Linux by default), so
#: that an outgoing connection of any process cannot be given one of our ports
#: between our check that it is free and Ray binding it.
PORTS_LOW = 20000
DEFAULT_EPHEMERAL_LOW = 32768

#: Lock files, one per block, held (flock) by the cluster using the block for as
#: long as it runs. A free-port check alone cannot see the ports a running
#: cluster has not bound yet (most of its worker range, until workers start), so
#: two test sessions starting clusters at once could otherwise pick overlapping
#: blocks. Shared by every user of the machine (mode 1777, like /tmp).
LOCK_DIR = os.path.join(tempfile.gettempdir(), "sgsray-ports")

#: Unix socket paths (``<temp dir>/session_<date>_<time>_<usec>_<pid>/sockets/
#: plasma_store``) must fit in 107 bytes; the part after the temp dir is about
#: 62 bytes. A longer temp dir is replaced by a short one made under /tmp.
MAX_TEMP_DIR = 40

#: Output of a component that could not bind one of its ports: the C++ servers
#: (GCS, raylet: "Failed to start the grpc server ... Address already in use")
#: and the Python agents (EADDRINUSE).
_CLASH = re.compile(r"failed to start the grpc server|address already in use|errno 98",
                    re.IGNORECASE)

#: The line `ray start --head` prints for the other nodes: the GCS address, with
#: the IP Ray really uses (it rewrites 127.0.0.1 to the host's IP).
_ADDRESS_LINE = re.compile(r"ray start --address='([^']+)'")

#: Seconds between TERM and KILL when a node is stopped. Worker nodes go in
#: 0.15-2 s; on the head, gcs_server (and, in our runs, the raylet and a daemon
#: or two) ignore TERM for good, so stopping the head always costs this long.
TERM_GRACE = 3.0
#: Seconds a KILLed group may take to be gone before that counts as a failure.
KILL_WAIT = 10.0

#: Run by the Python of the `ray` command: connects as a driver (proving that the
#: address works for `ray.init`) and polls `ray.nodes()` until enough nodes are
#: alive. Prints one marker line with the alive nodes, exits 3 on its deadline.
_WAIT_SCRIPT = r"""
import json, sys, time
import ray
address, want, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
ray.init(address=address, log_to_driver=False, logging_level="ERROR")
while True:
    alive = [{"id": n["NodeID"], "port": n["NodeManagerPort"]} for n in ray.nodes() if n["Alive"]]
    if len(alive) >= want or time.monotonic() > deadline:
        break
    time.sleep(0.1)
print("SGSRAY-NODES " + json.dumps(alive), flush=True)
ray.shutdown()
sys.exit(0 if len(alive) >= want else 3)
"""


class PortClash(Exception):
    """A node could not bind one of its ports (someone else took it)."""


class LocalCluster:
    """A private Ray cluster of `nodes` nodes on this machine (node 0 is the head),
    each with `gpus_per_node` logical GPUs and `cpus_per_node` CPUs.

    Everything it writes goes under `root`: the ``ray start`` outputs
    (``ray-start-<attempt>-node<i>.log``), the wait script's output and Ray's
    temp dir ``<root>/ray`` (or a short one under /tmp if that path is too long
    for Ray's Unix sockets; then it is removed again by `stop`).
    """

    def __init__(self, root: str, gpus_per_node: int = 2, nodes: int = 2,
                 cpus_per_node: int = 1, node_ips: Optional[Dict[int, str]] = None,
                 client: bool = False) -> None:
        if nodes < 1:
            raise ValueError("a cluster needs at least the head node")
        #: node index -> the address that node reports (``--node-ip-address``;
        #: 127.0.0.2 works, 127.0.0.1 is rewritten to the host's). A node of an
        #: address of its own is one no driver here attaches to: a driver joins
        #: through a node of its own machine's address, and if that node dies
        #: the driver dies with it. So a test that stops a node stops one of these,
        #: and is not the last node started: a driver takes the address the last
        #: `ray start` on the machine recorded in the session directory.
        self.node_ips = dict(node_ips or {})
        #: Whether to run a Ray Client server beside the head (`client_address`).
        #: Not the one ``ray start --head --ray-client-server-port`` starts: that
        #: proxy forks a server per client from a thread of its gRPC server, and
        #: with Ray 2.60 and grpcio 1.85 here the fork dies every time (ray-project/
        #: ray#63202; "Starting Ray client server failed", empty logs). This one
        #: runs in --mode=legacy: one server, a driver of the cluster, that every
        #: client talks to; what a client does through it is the same.
        self.client = client
        self.root = os.path.abspath(root)
        self.gpus_per_node = gpus_per_node
        self.nodes = nodes
        self.cpus_per_node = cpus_per_node
        #: Node ids (as `ray.nodes()` and `get_runtime_context().get_node_id()`
        #: give them), index-aligned with the nodes; filled in by `start`.
        self.node_ids: List[str] = []
        #: The first port of each node's block; filled in by `start`.
        self.port_blocks: List[int] = []
        self._address: Optional[str] = None
        self._groups: List[int] = []            # every group ever started, for `leftovers`
        self._node_groups: List[int] = []       # the current attempt's, one per node
        # Groups seen empty. pid_max is often 32768 and the suite starts many
        # processes, so a number may come back as some unrelated process's new
        # group (a scheduler job under setsid, say): once ours is empty it can
        # never fill again, so it is never signalled or counted after that.
        self._gone: Set[int] = set()
        self._locks: List[IO[bytes]] = []
        self._tried_blocks: Set[int] = set()
        self._temp_dir: Optional[str] = None
        self._own_temp_dir = False               # made by us under /tmp: removed by stop()
        self._ray: Optional[str] = None
        self._started = False
        self._stopped = False

    # --- the public interface ---------------------------------------------------

    @property
    def address(self) -> str:
        """``IP:PORT`` of the head's GCS, for ``ray.init(address=...)`` and ``--ray``."""
        if self._address is None:
            raise RuntimeError("the cluster is not started")
        return self._address

    @property
    def client_address(self) -> str:
        """``ray://IP:PORT`` of the Ray Client server (with ``client=True``)."""
        if not self.client or self._address is None:
            raise RuntimeError("the cluster is not started with a Ray Client server")
        host = self._address.rsplit(":", 1)[0]
        return f"ray://{host}:{self.port_blocks[0] + _CLIENT}"

    def start(self, timeout: float = 90.0) -> None:
        """Start the head, then the other nodes; return once all of them are alive.

        `timeout` applies to each attempt: a port clash (another program took a
        port between our check and Ray binding it) is retried once with new
        ports. Any failure stops whatever was started and raises RuntimeError
        with the output of the ``ray start`` runs.
        """
        if self._started:
            raise RuntimeError("a LocalCluster is started only once")
        self._started = True
        self._ray = find_ray()
        os.makedirs(self.root, exist_ok=True)
        temp = os.path.join(self.root, "ray")
        if len(temp.encode()) > MAX_TEMP_DIR:
            temp = tempfile.mkdtemp(prefix="sgsray", dir="/tmp")
            self._own_temp_dir = True
        self._temp_dir = temp
        try:
            for attempt in (1, 2):
                try:
                    self._attempt(attempt, timeout)
                    return
                except PortClash as clash:
                    # Throw away this attempt's nodes and ports; keep the groups in
                    # self._groups so that leftovers() and stop() still check them.
                    for group in self._node_groups:
                        self._end_group(group, graceful=False)
                    self._release_ports()
                    if attempt == 2:
                        raise RuntimeError(f"port clash twice in a row:\n{clash}") from None
        except BaseException as failure:
            # Also on KeyboardInterrupt: never leave half a cluster running. KILL
            # at once: nothing of a failed start is worth a graceful stop.
            for group in self._groups:
                self._end_group(group, graceful=False)
            try:
                self.stop()
            except RuntimeError as left:
                raise RuntimeError(f"{failure}\n\nand then stopping it failed: {left}"
                                   ) from failure
            raise

    def node_groups(self) -> List[int]:
        """The process-group id of each node (index 0 is the head): the pid of its
        ``ray start``, shared by its raylet, daemons and workers."""
        return list(self._node_groups)

    def stop_node(self, index: int) -> None:
        """Stop one non-head node, as a crash would: TERM to its group, up to
        `TERM_GRACE` seconds for it to go, then KILL; returns once no live process
        of the group is left (RuntimeError if some survive KILL)."""
        if not 1 <= index < len(self._node_groups):
            raise ValueError(f"no non-head node {index} (nodes 1..{len(self._node_groups) - 1})")
        left = self._end_group(self._node_groups[index])
        if left:
            raise RuntimeError(f"node {index} survived SIGKILL:\n" + "\n".join(left))

    def stop(self) -> None:
        """Stop every node, the others first and then the head (TERM, grace, KILL),
        and check that no process of any of the cluster's groups is left
        (RuntimeError listing them otherwise). Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        # Non-head nodes first: with the head gone they would only log
        # reconnection attempts while they wait for their turn.
        for group in reversed(self._groups):
            self._end_group(group)
        left = self.leftovers()
        self._release_ports()
        if left:
            # Keep the temp dir: it has the logs of whatever is still running.
            raise RuntimeError("processes of the Ray cluster are left:\n" + "\n".join(left))
        if self._own_temp_dir and self._temp_dir:
            shutil.rmtree(self._temp_dir, ignore_errors=True)

    def leftovers(self) -> List[str]:
        """``"pid comm args"`` of every live (not zombie) process in one of the
        cluster's process groups, including those of a failed start attempt."""
        groups = set(self._groups) - self._gone
        found = []
        for pid, pgid, _state in _processes():
            if pgid in groups:
                found.append(_describe(pid))
        return found

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _end_group(self, group: int, graceful: bool = True) -> List[str]:
        """Stop one of our groups (TERM first if `graceful`, else KILL at once),
        unless it was seen empty before; what survived."""
        if group in self._gone:
            return []
        left = _stop_group(group) if graceful else _kill_now(group)
        if not left:
            self._gone.add(group)
        return left

    # --- starting ---------------------------------------------------------------

    def _attempt(self, attempt: int, timeout: float) -> None:
        """One try at starting every node and waiting for them; PortClash if a
        node could not bind a port, RuntimeError on any other failure."""
        deadline = time.monotonic() + timeout
        assert self._temp_dir is not None
        self._node_groups = []
        self._address = None
        self.port_blocks = self._reserve_ports(self.nodes)
        known_sessions = set(glob.glob(os.path.join(self._temp_dir, "session_*")))
        wait_log = os.path.join(self.root, f"ray-wait-{attempt}.log")
        outputs: List[str] = []
        waiter: Optional[subprocess.Popen[bytes]] = None
        try:
            for index in range(self.nodes):
                log = os.path.join(self.root, f"ray-start-{attempt}-node{index}.log")
                outputs.append(log)
                rc = self._run_ray_start(index, log, deadline, known_sessions)
                if rc != 0:
                    what = (f"did not finish within {timeout}s" if rc == -signal.SIGKILL
                            else f"failed (exit status {rc})")
                    raise RuntimeError(f"`ray start` of node {index} {what}:\n"
                                       + self._report(outputs))
                if index == 0:
                    self._address = self._head_address(_read(log))
                    if self._address is None:
                        raise RuntimeError("could not find the head's address in the output "
                                           "of `ray start --head`:\n" + self._report(outputs))
                    # The wait script imports Ray and connects (1.5-2 s) while the
                    # other nodes start, instead of after them.
                    outputs.append(wait_log)
                    waiter = self._start_waiter(wait_log, deadline)
            assert waiter is not None
            alive = self._finish_waiter(waiter, wait_log, deadline)
        finally:
            if waiter is not None:
                _kill_group(waiter.pid, signal.SIGKILL)
                waiter.wait()
        if alive is None or len(alive) < self.nodes:
            # An agent that could not bind its port takes its raylet down with it
            # ("The raylet exited immediately because one Ray agent failed"),
            # possibly after `ray start` has returned.
            clash = self._clash_in_logs(known_sessions)
            if clash is not None:
                raise PortClash(clash)
            raise RuntimeError(f"only {len(alive or [])} of {self.nodes} Ray nodes came up "
                               f"within {timeout}s:\n" + self._report(outputs))
        # Every node has its own node-manager port: that tells them apart.
        by_port = {entry["port"]: entry["id"] for entry in alive}
        self.node_ids = [by_port.get(block + _NODE_MANAGER, "") for block in self.port_blocks]
        if self.client:
            self._start_client(attempt, deadline)

    def _start_client(self, attempt: int, deadline: float) -> None:
        """Start the Ray Client server (see `client`), in a session of its own
        like a node's, and return once it listens."""
        assert self._ray is not None
        log = os.path.join(self.root, f"ray-client-{attempt}.log")
        port = self.port_blocks[0] + _CLIENT
        host = self.address.rsplit(":", 1)[0]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [python_of(self._ray, self._node_groups[0]), "-m", "ray.util.client.server",
                 f"--address={self.address}", f"--host={host}", f"--port={port}",
                 "--mode=legacy"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=ray_env(),
                start_new_session=True, cwd=self.root)
        self._groups.append(proc.pid)
        while True:
            try:
                socket.create_connection((host, port), 1.0).close()
                return
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Ray Client server did not start:\n{_read(log)}")
            time.sleep(0.1)

    def _arguments(self, index: int) -> List[str]:
        """The ``ray start`` command line of node `index`."""
        assert self._ray is not None and self._temp_dir is not None
        block = self.port_blocks[index]
        args = [self._ray, "start"]
        if index == 0:
            args += ["--head", f"--port={block + _GCS}", f"--temp-dir={self._temp_dir}",
                     "--include-dashboard=false",
                     # The headless dashboard.py that runs anyway gets a port of ours
                     # too, should some Ray version make it listen (2.45 does not).
                     f"--dashboard-port={block + _DASHBOARD}"]
        else:
            # --temp-dir is refused on a non-head node: it uses the head's session dir.
            args += [f"--address={self.address}"]
            if index in self.node_ips:
                args += [f"--node-ip-address={self.node_ips[index]}"]
        args += [
            f"--num-gpus={self.gpus_per_node}", f"--num-cpus={self.cpus_per_node}",
            "--disable-usage-stats", "--object-store-memory=200000000",
            f"--node-manager-port={block + _NODE_MANAGER}",
            f"--object-manager-port={block + _OBJECT_MANAGER}",
            f"--min-worker-port={block + _WORKERS_FIRST}",
            f"--max-worker-port={block + _WORKERS_LAST}",
            f"--dashboard-agent-listen-port={block + _AGENT_LISTEN}",
            f"--dashboard-agent-grpc-port={block + _AGENT_GRPC}",
            f"--runtime-env-agent-port={block + _RUNTIME_ENV}",
            f"--metrics-export-port={block + _METRICS}",
            # Not --ray-client-server-port: on a minimal install `ray start` then
            # fails ("Ray Client requires pip package `ray[client]`").
        ]
        return args

    def _run_ray_start(self, index: int, log: str, deadline: float,
                       known_sessions: Set[str]) -> int:
        """Run node `index`'s ``ray start`` in a new session, output to `log`;
        its exit status. While it runs, the new session's logs are watched for a
        port clash: Ray's own start-up only gives up on one after 30-36 s."""
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                self._arguments(index), stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, env=ray_env(), start_new_session=True,
                # Workers run in the directory of `ray start`: the cluster's own,
                # never the repository or the caller's directory, so that a job
                # that depends on its working directory fails in the tests unless
                # the launcher passes one.
                cwd=self.root)
        self._groups.append(proc.pid)
        self._node_groups.append(proc.pid)
        while True:
            try:
                return proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
            clash = self._clash_in_logs(known_sessions)
            if clash is not None or time.monotonic() > deadline:
                _kill_group(proc.pid, signal.SIGKILL)
                proc.wait()
                if clash is not None:
                    raise PortClash(f"node {index}: {clash}\n" + _tail(log)) from None
                return -signal.SIGKILL

    def _clash_in_logs(self, known_sessions: Set[str]) -> Optional[str]:
        """The first line of this attempt's Ray logs that reports a port in use."""
        assert self._temp_dir is not None
        for session in glob.glob(os.path.join(self._temp_dir, "session_*")):
            if session in known_sessions:
                continue
            for path in glob.glob(os.path.join(session, "logs", "*")):
                if os.path.isfile(path) and not path.endswith(".txt"):
                    for line in _read(path).splitlines():
                        if _CLASH.search(line):
                            return line.strip()
        return None

    def _head_address(self, output: str) -> Optional[str]:
        """The GCS address from the output of ``ray start --head``, or from the
        ``ray_current_cluster`` file Ray writes into its temp dir."""
        found = _ADDRESS_LINE.findall(output)
        if found:
            return str(found[-1])
        assert self._temp_dir is not None
        written = _read(os.path.join(self._temp_dir, "ray_current_cluster")).strip()
        return written or None

    def _start_waiter(self, log: str, deadline: float) -> subprocess.Popen[bytes]:
        """Start the wait script (a driver of the cluster, in a session of its own),
        which returns once `self.nodes` nodes are alive or `deadline` passes."""
        assert self._ray is not None
        budget = max(deadline - time.monotonic(), 1.0)
        with open(log, "wb") as out:
            return subprocess.Popen(
                [python_of(self._ray, self._node_groups[0]), "-c", _WAIT_SCRIPT, self.address,
                 str(self.nodes), str(budget)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=ray_env(), start_new_session=True, cwd=self.root)

    def _finish_waiter(self, waiter: subprocess.Popen[bytes], log: str, deadline: float
                       ) -> Optional[List[Dict[str, Any]]]:
        """Wait for the wait script; the alive nodes it reported (None if none)."""
        try:
            # A bad address makes ray.init retry for minutes: the deadline is ours
            # (plus a little for the script's own last poll and ray.shutdown).
            waiter.wait(timeout=max(deadline - time.monotonic(), 0.0) + 5.0)
        except subprocess.TimeoutExpired:
            pass
        for line in _read(log).splitlines():
            if line.startswith("SGSRAY-NODES "):
                nodes: List[Dict[str, Any]] = json.loads(line.split(" ", 1)[1])
                return nodes
        return None

    def _report(self, logs: List[str]) -> str:
        return "\n".join(f"--- {path}:\n{_tail(path)}" for path in logs)

    # --- ports --------------------------------------------------------------------

    def _reserve_ports(self, count: int) -> List[int]:
        """`count` blocks of BLOCK_SIZE ports, each locked for this cluster and
        free right now, picked at random (so that concurrent sessions rarely even
        try the same block)."""
        high = _ephemeral_low()
        candidates = list(range(PORTS_LOW, high - BLOCK_SIZE + 1, BLOCK_SIZE))
        random.shuffle(candidates)
        others = _ports_of_other_rays()
        blocks: List[int] = []
        for base in candidates:
            if len(blocks) == count:
                break
            if base in self._tried_blocks or others.intersection(range(base, base + BLOCK_SIZE)):
                continue                          # some other Ray node's, bound or not yet
            available, lock = _lock_block(base)
            if not available:
                continue                          # another cluster holds it
            if not all(_port_free(port) for port in range(base, base + BLOCK_SIZE)):
                if lock is not None:
                    lock.close()
                continue
            if lock is not None:
                self._locks.append(lock)
            blocks.append(base)
        # A retry after a clash takes other blocks: the clashing port's owner may
        # hold it without our check seeing it (not yet bound, or an odd socket).
        self._tried_blocks.update(blocks)
        if len(blocks) < count:
            raise RuntimeError(f"found only {len(blocks)} free blocks of {BLOCK_SIZE} ports "
                               f"between {PORTS_LOW} and {high} (need {count})")
        return blocks

    def _release_ports(self) -> None:
        for lock in self._locks:
            lock.close()                         # closing the file drops its flock
        self._locks = []


# --- helpers ----------------------------------------------------------------------


def find_ray() -> str:
    """The `ray` command: the one next to this interpreter (a pyenv shim found
    first on PATH costs time on every call and may pick another Python), else
    the one on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "ray")
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("ray")
    if found is None:
        raise RuntimeError("the `ray` command is not installed "
                           f"(neither next to {sys.executable} nor on PATH)")
    return found


def python_of(ray: str, group: Optional[int] = None) -> str:
    """The Python interpreter whose Ray the `ray` command runs.

    This interpreter if `ray` is its own; else the one running the Python
    daemons of process group `group` (a started node: Ray launches them with
    its own ``sys.executable``, so that one has Ray for certain, even when
    `ray` is a pyenv shim, a shell script); else the ``#!`` line of `ray`
    when it names a Python; else this interpreter."""
    if os.path.dirname(ray) == os.path.dirname(sys.executable):
        return sys.executable
    for pid, pgid, _state in (_processes() if group is not None else []):
        if pgid != group:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0", 1)[0].decode(errors="replace")
        except OSError:
            continue
        # argv[0], not /proc/PID/exe: that resolves a virtualenv's python
        # symlink to the base interpreter, which lacks the venv's packages.
        if os.path.isabs(argv0) and os.path.basename(argv0).startswith("python"):
            return argv0
    try:
        with open(ray, "rb") as f:
            first = f.readline(512).decode(errors="replace")
    except OSError:
        return sys.executable
    if first.startswith("#!"):
        words = first[2:].split()
        if words and os.path.basename(words[0]).startswith("python"):
            return words[0]
    return sys.executable


def ray_env() -> Dict[str, str]:
    """The caller's environment without usage stats. RAY_ADDRESS is dropped: every
    command here names its address, and `ray start --head` must not join another
    cluster."""
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    return env


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return min(int(f.read().split()[0]), 65536)
    except (OSError, ValueError, IndexError):
        return DEFAULT_EPHEMERAL_LOW


def _port_free(port: int) -> bool:
    """Whether nothing has TCP `port` bound, on IPv4 or IPv6 (Ray's servers listen
    on both). Without SO_REUSEADDR, so a port in TIME_WAIT counts as taken too."""
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue                              # no IPv6 on this machine
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRNOTAVAIL:
                continue                          # IPv6 present but not configured
            return False
        finally:
            sock.close()
    return True


#: A port in the command line of a Ray process (``--node_manager_port=26380``,
#: ``--gcs-address=192.0.2.2:26379``, ``--min_worker_port=27000``...).
_PORT_ARG = re.compile(r"-[a-z_-]*port[= ](\d+)\b|-[a-z_-]*address[= ][^\s:]+:(\d+)\b")
_WORKER_RANGE = re.compile(r"--min_worker_port=(\d+) --max_worker_port=(\d+)")


def _ports_of_other_rays() -> Set[int]:
    """Every port named on the command line of a running raylet or gcs_server,
    whoever started it, with each raylet's whole worker-port range. Neither the
    bind check nor our lock files can see the ports a Ray node started some other
    way (a fixed-port cluster of another session, the user's own) will bind
    later: its workers' ports, bound only as workers start."""
    ports: Set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() not in ("raylet", "gcs_server"):
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ports.update(int(a or b) for a, b in _PORT_ARG.findall(args))
        for low, high in _WORKER_RANGE.findall(args):
            ports.update(range(int(low), int(high) + 1))
    return ports


def _lock_block(base: int) -> Tuple[bool, Optional[IO[bytes]]]:
    """Whether the block at `base` is ours to use, and its locked lock file: (False,
    None) if another cluster holds it, (True, None) if locking is impossible here
    (then only the port check protects)."""
    try:
        if not os.path.isdir(LOCK_DIR):
            os.makedirs(LOCK_DIR, exist_ok=True)
            os.chmod(LOCK_DIR, 0o1777)
        # Read-only: flock works on any open file, and a lock file another user
        # created (mode 0644 through their umask) can still be opened for reading.
        fd = os.open(os.path.join(LOCK_DIR, f"block-{base}.lock"), os.O_RDONLY | os.O_CREAT, 0o666)
    except OSError:
        return True, None
    lock = os.fdopen(fd, "rb")
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        return False, None
    return True, lock


def _processes() -> List[Tuple[int, int, str]]:
    """(pid, pgid, state) of every process but zombies (and dead ones)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue                              # gone meanwhile
        # The command name (field 2) may hold spaces and parentheses: split after
        # the last ")". Then: state, ppid, pgrp.
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) >= 3 and fields[0] not in ("Z", "X"):
            found.append((int(entry), int(fields[2]), fields[0]))
    return found


def _live_in_group(pgid: int) -> List[int]:
    return [pid for pid, group, _state in _processes() if group == pgid]


def _describe(pid: int) -> str:
    """``"pid comm args"`` of a process (args cut to 300 characters)."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        comm, args = "?", "(gone)"
    return f"{pid} {comm} {args[:300]}"


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass                                      # the group is empty already
    except PermissionError:
        # Only when the pgid was reused by another user's process after our
        # group had emptied: nothing of ours is in it.
        pass


def _wait_group_empty(pgid: int, timeout: float) -> List[int]:
    """Poll until `pgid` has no live process or `timeout` passes; those left."""
    deadline = time.monotonic() + timeout
    interval = 0.02
    while True:
        left = _live_in_group(pgid)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(interval)
        interval = min(interval * 1.5, 0.1)


def _kill_now(pgid: int) -> List[str]:
    """KILL at once (a failed start attempt), up to KILL_WAIT s: what is left."""
    _kill_group(pgid, signal.SIGKILL)
    return [_describe(pid) for pid in _wait_group_empty(pgid, KILL_WAIT)]


def _stop_group(pgid: int) -> List[str]:
    """TERM, up to TERM_GRACE s, KILL, up to KILL_WAIT s: what is still left."""
    if not _live_in_group(pgid):
        return []
    _kill_group(pgid, signal.SIGTERM)
    if not _wait_group_empty(pgid, TERM_GRACE):
        return []
    return _kill_now(pgid)


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(4 << 20).decode(errors="replace")
    except OSError:
        return ""


def _tail(path: str, lines: int = 40) -> str:
    return "\n".join(_read(path).splitlines()[-lines:])


# --- python3 tests/ray_cluster.py -------------------------------------------------


def main(argv: Optional[List[str]] = None) -> int:
    """Start a cluster in a temporary directory, print its address and groups,
    optionally stop one node, stop it, print the timings and any leftovers."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--gpus", type=int, default=2, help="GPUs per node")
    parser.add_argument("--root", help="directory for the cluster (default: a new temp dir)")
    parser.add_argument("--stop-node", action="store_true",
                        help="stop the last node with stop_node() before stop()")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (the logs)")
    args = parser.parse_args(argv)
    root = args.root or tempfile.mkdtemp(prefix="sgsray-main-")
    cluster = LocalCluster(root, gpus_per_node=args.gpus, nodes=args.nodes)
    began = time.monotonic()
    cluster.start()
    started = time.monotonic()
    print(f"address      {cluster.address}")
    print(f"node groups  {cluster.node_groups()}")
    print(f"node ids     {cluster.node_ids}")
    print(f"port blocks  {cluster.port_blocks}")
    print(f"start        {started - began:.2f} s")
    if args.stop_node and args.nodes > 1:
        cluster.stop_node(args.nodes - 1)
        print(f"stop_node    {time.monotonic() - started:.2f} s")
    stopping = time.monotonic()
    left: List[str] = []
    try:
        cluster.stop()
    except RuntimeError as error:
        left = [str(error)]
    print(f"stop         {time.monotonic() - stopping:.2f} s")
    # Checked here on the raw groups too, not only through stop()'s own check.
    raw = [_describe(pid) for group in cluster._groups for pid in _live_in_group(group)]
    print(f"left         {left or raw or 'nothing'}")
    if not args.root and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if left or raw else 0


if __name__ == "__main__":
    sys.exit(main())
