"""What runs on a Ray cluster's nodes: the task of one job attempt, and the
node's agent that signals jobs.

Standard library and Ray only, and nothing else of our package: the driver
sends this module's functions to the nodes by value
(``ray.cloudpickle.register_pickle_by_value``), so a node needs Ray, not
simple_gpu_scheduler. The keeper (`cluster_keeper`) goes as source text.

**The task** (`run_job`) is a streaming generator: what it yields reaches
the driver while it runs, about a millisecond later. It starts the keeper
with the job's environment, its working directory and three pipes (stdout,
stderr, status), and yields, in this order:

- ``("started", node label, gpu ids, keeper pid, node id)``, or ``("failed", reason,
  node label, gpu ids)`` when the job cannot start on this node;
- ``("out", bytes)`` and ``("err", bytes)`` as the job prints;
- ``("ended", exit code, lingering)`` when the job's shell has exited (code
  as `os.waitstatus_to_exitcode`);
- ``("cleared",)`` once nothing of the job is left; or ``("lost", reason)``
  when the keeper vanished and the job's end is unknown;
- and, if the spec's ``tick`` is above 0, ``("tick",)`` after each ``tick``
  seconds without another item (for `cluster_client`: no driver on the
  other side of a stream is noticed by Ray itself, but one behind a mailbox
  is noticed only by looking).

Output printed before the shell's exit comes before ``ended``; what the
job's leftovers print comes before ``cleared``.

**The agent** (`Agent`), one actor per node, sends the keeper SIGUSR1
(terminate the tree) or SIGUSR2 (kill it). The stop ladder stays in the
scheduler, as on one machine, and the task still sees the job's end and
yields its exit status. `ray.cancel` would not do: Ray drops everything a
cancelled task yields, so the exit status would be lost, and its force
variant leaves the job's grandchildren running.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, Generator, Iterator, List, Mapping, Optional, Sequence, Tuple

#: Seconds the task waits, after the job is cleared, for its pipes to end.
PIPE_WAIT = 2.0
#: Bytes one read of a job's output takes (one item to the driver).
CHUNK = 65536


def node_labels(nodes: Sequence[Mapping[str, Any]]) -> Dict[str, str]:
    """Node id -> the label that names the node (``SGS_NODE``, the job log's
    Host): its address, and where several nodes share one address (two Ray
    nodes on one machine) the start of its node id too, ``10.0.0.7/3f9a1c2e``."""
    by_address: Dict[str, List[str]] = {}
    for node in nodes:
        by_address.setdefault(str(node.get("NodeManagerAddress", "?")), []).append(
            str(node["NodeID"]))
    labels: Dict[str, str] = {}
    for address, ids in by_address.items():
        if len(ids) == 1:
            labels[ids[0]] = address
            continue
        size = 8
        while len({i[:size] for i in ids}) < len(ids) and size < max(map(len, ids)):
            size += 4
        for node_id in ids:
            labels[node_id] = f"{address}/{node_id[:size]}"
    return labels


def run_job(spec: Dict[str, Any], keeper_source: str
            ) -> Generator[Tuple[Any, ...], None, None]:
    """One attempt of one job (see the module docstring). `spec`: command
    (bytes), env, cwd, shell, grace, token, labels (node id -> label) and
    tick (seconds; optional)."""
    import ray

    context = ray.get_runtime_context()
    node_id = context.get_node_id()
    gpus = tuple(str(g) for g in context.get_accelerator_ids().get("GPU", ()))
    label = spec["labels"].get(node_id)
    if label is None:  # a node that joined after the driver looked
        label = node_labels(ray.nodes()).get(node_id, node_id[:8])
    env = dict(spec["env"])
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")  # as Ray set it for this task
    env["CUDA_VISIBLE_DEVICES"] = visible if visible is not None else ",".join(gpus)
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    env["SGS_NODE"] = label
    cwd = spec["cwd"]
    if cwd and not os.path.isdir(cwd):
        yield ("failed", f"working directory {cwd} does not exist on {label}", label, gpus)
        return
    grace = float(spec["grace"])
    fds: List[int] = []  # ours to close, until the stream owns them
    stream: Optional[_Stream] = None
    try:
        for _ in range(3):  # stdout, stderr, status
            fds.extend(os.pipe())
        out_r, out_w, err_r, err_w, status_r, status_w = fds
        failed = None
        try:
            with open(os.devnull, "rb") as null:
                starter = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", keeper_source, str(os.getpid()),
                     str(status_w), repr(grace), spec["shell"], spec["token"], spec["command"]],
                    stdin=null, stdout=out_w, stderr=err_w, pass_fds=(status_w,), env=env,
                    cwd=cwd or None)
        except (OSError, ValueError) as exc:
            failed = f"cannot start its keeper on {label}: {exc}"
        stream = _Stream(out_r, err_r, status_r)
        fds = [out_w, err_w, status_w]
        while fds:
            os.close(fds.pop())
        if failed is not None:
            yield ("failed", failed, label, gpus)
            return
        starter.wait()  # the keeper's first process exits at once (see cluster_keeper)
        yield from stream.run(label, gpus, node_id, float(spec.get("tick") or 0))
    except BaseException:
        # `ray.cancel`: the driver stops a job it has not heard of as started
        # this way, and Ray interrupts the task wherever it is (or closes the
        # generator). Whatever is yielded now is dropped, so the keeper's own
        # ladder ends the job, and the task waits for it before it ends (Ray
        # frees the GPUs then).
        if stream is not None:
            stream.stop_keeper(grace + 10.0)
        raise
    finally:
        for fd in fds:
            os.close(fd)
        # Closing the status pipe also tells a keeper still there that nobody
        # watches its job any more: it ends the job (see cluster_keeper).
        if stream is not None:
            stream.close()


class _Stream:
    """The task's side of the three pipes."""

    def __init__(self, out: int, err: int, status: int) -> None:
        self.fds = {status: "status"}
        self.selector = selectors.DefaultSelector()
        for fd in (out, err, status):
            os.set_blocking(fd, False)
        self.selector.register(status, selectors.EVENT_READ)
        #: the output pipes, watched from the keeper's "started" on: what the
        #: job printed must follow the start, which gives it its place
        self.outputs = {out: "out", err: "err"}
        self.status = status
        self.held = b""
        self.keeper = 0
        self.code: Optional[int] = None
        self.ended = False
        self.cleared = False

    def run(self, label: str, gpus: Tuple[str, ...], node_id: str, tick: float = 0.0
            ) -> Iterator[Tuple[Any, ...]]:
        cleared_at: Optional[float] = None
        said = time.monotonic()  # when the last item was given
        while True:
            if tick and time.monotonic() - said >= tick:
                said = time.monotonic()
                yield ("tick",)
            open_outputs = [fd for fd in self.fds if fd != self.status]
            if cleared_at is not None and (not open_outputs
                                           or time.monotonic() > cleared_at + PIPE_WAIT):
                break
            timeout = 0.05 if cleared_at is not None else min(1.0, tick or 1.0)
            events = self.selector.select(timeout)
            if events:
                said = time.monotonic()
            for key, _ in events:
                fd = int(key.fd)
                name = self.fds.get(fd)
                if name is None:
                    continue
                if name != "status":
                    data = self._read(fd)
                    if data:
                        yield (name, data)
                    continue
                for line in self._status_lines():
                    if line is None:  # the keeper is gone
                        if not self.cleared:
                            cleared_at = time.monotonic()
                        continue
                    word, _, rest = line.partition(" ")
                    if word == "started":
                        self.keeper = int(rest.split()[0])
                        self.watch_outputs()
                        yield ("started", label, gpus, self.keeper, node_id)
                    elif word == "error":
                        yield ("failed", f"{rest} (on {label})", label, gpus)
                        self.cleared = True
                        return
                    elif word == "exit":
                        code, lingering = rest.split()
                        self.code = int(code)
                        if lingering == "1":
                            yield from self._drain()
                            self.ended = True
                            yield ("ended", self.code, True)
                    elif word == "cleared":
                        self.cleared = True
                        cleared_at = time.monotonic()
        yield from self._drain()
        if not self.cleared:
            if self.code is None:
                yield ("lost", f"its keeper process on {label} was killed")
                return
            self.cleared = True
        if not self.ended:
            self.ended = True
            yield ("ended", self.code, False)
        yield ("cleared",)

    def _read(self, fd: int) -> bytes:
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return b""
        if not data:
            self.selector.unregister(fd)
            del self.fds[fd]
            os.close(fd)
        return data

    def _drain(self) -> Iterator[Tuple[Any, ...]]:
        """What the job's output pipes hold now."""
        for fd, name in list(self.fds.items()):
            if name == "status":
                continue
            while fd in self.fds:
                data = self._read(fd)
                if not data:
                    break
                yield (name, data)

    def _status_lines(self) -> Iterator[Optional[str]]:
        """Whole lines from the keeper; None once its pipe has ended."""
        try:
            data = os.read(self.status, 4096)
        except BlockingIOError:
            return
        if not data:
            self.selector.unregister(self.status)
            del self.fds[self.status]
            os.close(self.status)
            self.status = -1
            yield None
            return
        self.held += data
        *lines, self.held = self.held.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", "replace")

    def watch_outputs(self) -> None:
        for fd, name in self.outputs.items():
            self.fds[fd] = name
            self.selector.register(fd, selectors.EVENT_READ)
        self.outputs = {}

    def stop_keeper(self, seconds: float) -> None:
        """End the job through its keeper's own ladder (SIGTERM to the keeper,
        whose pid may still be on its way), and wait until the keeper is gone
        (its status pipe ends), at most `seconds`."""
        self.watch_outputs()
        told = False
        deadline = time.monotonic() + seconds
        while self.status >= 0 and time.monotonic() < deadline:
            if self.keeper and not told:
                told = True
                try:
                    os.kill(self.keeper, signal.SIGTERM)
                except OSError:
                    pass
            if not self.selector.select(0.1):
                continue
            for fd in list(self.fds):
                if fd != self.status:
                    self._read(fd)  # drained, so the job never blocks on a full pipe
                    continue
                for line in self._status_lines():
                    if line is not None and line.startswith("started "):
                        self.keeper = int(line.split()[1])

    def close(self) -> None:
        for fd in list(self.fds) + list(self.outputs):
            if fd in self.fds:
                self.selector.unregister(fd)
            os.close(fd)
        self.fds.clear()
        self.outputs.clear()
        self.selector.close()


class Agent:
    """One per node and run: signals the keepers of the run's jobs there."""

    def signal(self, keeper: int, token: str, signum: int) -> bool:
        """`signum` to `keeper` if it is still the keeper of the attempt
        `token` names (its command line says so: a pid may be reused)."""
        try:
            with open(f"/proc/{keeper}/cmdline", "rb") as cmdline:
                args = cmdline.read().split(b"\0")
        except OSError:
            return False
        if token.encode() not in args:
            return False
        try:
            os.kill(keeper, signum)
        except OSError:
            return False
        return True

    def ready(self) -> bool:
        return True
