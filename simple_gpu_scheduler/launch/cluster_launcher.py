"""The Ray launcher (``--ray``): each job attempt as a Ray task on whichever
node of the cluster Ray picks.

The engine is the same as on one machine. Its pool counts the cluster's GPU
slots (``ray:0`` ... one per GPU of the cluster, each shared by
``--jobs-per-gpu`` jobs), so it never hands Ray more tasks than the cluster
has room for: input order and priorities hold (Ray keeps no order among
waiting tasks), and a ten-million-line stream is never submitted at once.
Ray picks the node and its GPUs; the task says which (`cluster_node`), and
this launcher tells the engine that the job is `placed`. Every `LOOK_EVERY`
seconds the pump looks at the nodes, and `on_change` resizes the slots.

What a task says (its start, its output, its end) comes back by one of two
feeds (`cluster_feed`): the task's own stream, or, through Ray Client, which
runs no streaming tasks, a mailbox actor the tasks post to.

Threads: the engine's thread submits tasks and sends signals (Ray's calls
are thread-safe, and neither waits for the cluster). One pump thread waits
on the feed, writes job output where it goes (our stdout and stderr, the
``--tag`` copies, the ``--log-dir`` files; a slow reader downstream holds up
the pump, never the engine), and posts each job's start, end and clearing
to the engine's thread.

Stopping: `terminate` and `kill` go to the node's agent actor, which signals
the job's keeper, which signals the job's whole tree; the task then reports
the job's end as usual. A task not yet started on a node is cancelled
through Ray instead. See `cluster_node` and `cluster_keeper`.
"""

from __future__ import annotations

import os
import signal
import time

from ..errors import LaunchError
from ..model.jobs import FailedToStart, Killed, Lost, outcome_from_returncode
from ..report.console import write_fd
from . import cluster_feed, cluster_node
from .cluster import why_of
from .local import job_environment

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

    from ..model.jobs import Job, Outcome
    from .base import LauncherEvents, Reactor
    from .cluster import Cluster
    from .copier import Copy
    from .streams import JobStreams, OutputMode

#: Seconds between the pump's looks at the cluster's nodes (one joined, one died).
LOOK_EVERY = 5.0
#: Seconds a job's end waits for the last of its ``--tag`` output to be copied.
OUTPUT_WAIT = 0.5

class ClusterExecution:
    """One attempt of a job: a Ray task, and once a node runs it, a keeper there."""

    placed = False

    def __init__(self, launcher: ClusterLauncher, job: Job, token: str, ref: Any) -> None:
        self.job = job
        self.token = token
        self.ref = ref
        self._launcher = launcher
        #: the node's label and the GPU ids it gave the job, once placed
        self.host = ""
        self.gpus: Tuple[str, ...] = ()
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.node = ""
        self.keeper = 0
        self.last_signal: Optional[int] = None
        #: where its output goes (the pump thread's)
        self.streams: Optional[JobStreams] = None
        self.copies: List[Copy] = []
        self.outcome: Optional[Outcome] = None
        self.reported = False  # `ended` was said
        self.cleared = False  # the node said so; `cleared` waits for the copies
        self.done = False  # `cleared` was said
        self.output_timer: Any = None

    def terminate(self) -> None:
        self._launcher.signal(self, signal.SIGTERM)

    def kill(self) -> None:
        self._launcher.signal(self, signal.SIGKILL)

    def __repr__(self) -> str:
        return f"ClusterExecution(job={self.job.id}, host={self.host!r})"


class ClusterLauncher:
    """Runs jobs as Ray tasks (see the module docstring)."""

    def __init__(self, cluster: Cluster, shell: str, output: OutputMode, grace: float,
                 jobs_per_gpu: int, base_env: Optional[Mapping[str, str]] = None,
                 cwd: Optional[str] = None) -> None:
        import threading

        import ray

        self._ray = ray
        self.cluster = cluster
        self.shell = shell
        self._output = output
        self._grace = grace
        self._jobs_per_gpu = jobs_per_gpu
        env = dict(os.environ if base_env is None else base_env)
        # Set by Ray on the node for each task; and never a Ray variable of ours.
        for name in ("CUDA_VISIBLE_DEVICES", "RAY_ADDRESS", "RAY_ENABLE_AUTO_CONNECT"):
            env.pop(name, None)
        self._base_env = env
        self._cwd = cwd if cwd is not None else os.getcwd()
        self._run = f"{os.getpid()}-{int(time.time())}"
        self._reactor: Optional[Reactor] = None
        self._events: Optional[LauncherEvents] = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        #: the running tasks (their refs -> execution), the pump's to wait on
        self._live: Dict[Any, ClusterExecution] = {}
        self._closing = False
        #: why the cluster cannot be used any more (the pump met an error of Ray's)
        self._dead: Optional[str] = None
        self._pump_done = threading.Event()
        self._agents: Dict[str, Any] = {}
        #: called on the engine's thread when the cluster's nodes or GPUs change
        #: (the composition root resizes the run's pool of slots)
        self.on_change: Optional[Callable[[Cluster], None]] = None
        self._next_look = time.monotonic() + LOOK_EVERY
        #: ``--tag`` copies that may still be running, for `finish` (the pump's)
        self._copies: List[Copy] = []
        self._keeper = ray.put(_keeper_source())
        # Each feed's tasks ask for no CPU: the nodes' CPU counts must not cap
        # GPU jobs. No Ray retries: --retries decides. And Ray's default for a
        # GPU task is a new worker process each time (about 0.5 s a job): they
        # reuse workers; nothing a job does stays in the worker, it runs in
        # the keeper's process tree.
        self._feed: cluster_feed.Feed = (
            cluster_feed.MailboxFeed(ray, cluster.head) if cluster.client
            else cluster_feed.StreamFeed(ray))
        self._agent = ray.remote(cluster_node.Agent)

    # --- the Launcher protocol ------------------------------------------------

    def attach(self, reactor: Reactor, events: LauncherEvents) -> None:
        from .. import threads

        self._reactor = reactor
        self._events = events
        threads.start(self._pump)

    def refuses(self, job: Job) -> Optional[str]:
        """Why `job` can never run on this cluster, or None."""
        if job.on is not None:
            return "it names GPUs (on), but with --ray the cluster's nodes pick the GPUs"
        if job.mem is not None:
            return "it declares mem, which --ray does not place by (use --jobs-per-gpu)"
        if job.gpus > 1 and self._jobs_per_gpu > 1:
            return (f"it needs {job.gpus} GPUs and --jobs-per-gpu {self._jobs_per_gpu} "
                    "shares GPUs: on a cluster a job shares one GPU or has whole ones")
        largest = self.cluster.largest
        if job.gpus > largest:
            return (f"it needs {job.gpus} GPUs on one node, and the largest node of the "
                    f"cluster has {largest}")
        return None

    def start(self, job: Job, gpus: Tuple[str, ...]) -> ClusterExecution:
        assert self._reactor is not None, "attach first"
        if job.invalid:
            raise LaunchError(job.invalid)
        if self._dead is not None:
            raise LaunchError(self._dead)
        env = job_environment(self._base_env, job, ())
        del env["CUDA_VISIBLE_DEVICES"]  # Ray sets it on the node, for the GPUs it gives
        token = f"sgs-{self._run}-{job.id}-{job.attempts}"
        spec = {"command": job.command, "env": env, "cwd": job.cwd or self._cwd,
                "shell": self.shell, "grace": self._grace, "token": token,
                "labels": self.cluster.labels, "tick": self._feed.tick}
        share = 1.0 / self._jobs_per_gpu if self._jobs_per_gpu > 1 else float(job.gpus)
        try:
            ref = self._feed.submit(share, spec, self._keeper)
        except Exception as exc:  # the cluster went away under us
            raise LaunchError(f"Ray did not take the task: {why_of(exc)}") from None
        execution = ClusterExecution(self, job, token, ref)
        with self._lock:
            self._live[ref] = execution
        self._wake.set()
        return execution

    def finish(self) -> None:
        """Let the last copies of job output arrive (a slow reader downstream
        still gets every line), then leave the cluster."""
        for copy in self._copies:
            copy.finish()
        self._copies = []
        self._stop_pump()
        # Gone with our leaving too, but not through a Ray Client server that
        # keeps its drivers' named actors (--mode=legacy).
        for actor in list(self._agents.values()):
            try:
                self._ray.kill(actor)
            except Exception:
                pass
        self._feed.close()
        try:
            self._ray.shutdown()
        except Exception:
            pass  # leaving a cluster that went away

    def close(self) -> None:
        """Kill what still runs (only after an error: the engine waits for every
        job to be cleared). Its keeper also ends it when our worker goes."""
        for execution in list(self._live.values()):
            if not execution.done:
                self.signal(execution, signal.SIGKILL)

    # --- stopping -------------------------------------------------------------

    def signal(self, execution: ClusterExecution, signum: int) -> None:
        """`signum` to the job's whole tree on its node, through the node's agent."""
        if execution.done or execution.outcome is not None and not execution.reported:
            return
        execution.last_signal = signum
        if not execution.keeper:
            # Not started on a node yet (or its start is on its way): Ray's
            # cancel. A task still waiting for GPUs then never starts; one
            # just started ends its job with the keeper's own ladder.
            try:
                self._ray.cancel(execution.ref, force=False)
            except Exception:
                pass
            return
        agent = self._agent_on(execution.node)
        relay = signal.SIGUSR1 if signum == signal.SIGTERM else signal.SIGUSR2
        try:
            agent.signal.remote(execution.keeper, execution.token, int(relay))
        except Exception:
            pass  # the node is gone: the task's stream says so

    def _agent_on(self, node: str) -> Any:
        """The node's agent actor, started at the first job placed there (it is
        ready in about a second; a signal sent earlier waits for it)."""
        with self._lock:  # the pump's thread and the engine's both ask
            agent = self._agents.get(node)
            if agent is None:
                from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

                # A name shows whose it is (`ray list actors`); but a Ray Client
                # server in --mode=legacy keeps a named actor of a client that
                # went away for as long as the server runs.
                name = None if self.cluster.client else f"sgs-agent-{self._run}-{node[:16]}"
                agent = self._agents[node] = self._agent.options(
                    name=name, num_cpus=0, max_restarts=-1,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
                ).remote()
            return agent

    # --- the pump thread ------------------------------------------------------

    def _pump(self) -> None:
        try:
            while True:
                if time.monotonic() >= self._next_look:
                    self._look()
                with self._lock:
                    tokens = {ex.token: ref for ref, ex in self._live.items()}
                    # A task not heard of as started yet (just submitted): look
                    # again soon.
                    soon = any(not ex.keeper for ex in self._live.values())
                if not tokens:
                    if self._closing:
                        return
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
                posts: List[Tuple[Any, ...]] = []
                for ref, item in self._feed.take(tokens, soon):
                    if ref not in self._live:
                        continue  # dropped (its output could not be handled)
                    try:
                        self._take(ref, item, posts)
                    except Exception as exc:  # ours, about one job: that attempt fails
                        self._drop(ref, f"its output could not be handled: {why_of(exc)}",
                                   posts)
                if posts:
                    self._post(posts)
        except Exception as exc:  # Ray's own calls fail: the cluster is gone for us
            if not self._closing:
                self._dead = f"the Ray cluster went away: {why_of(exc)}"
                posts = []
                with self._lock:
                    refs = list(self._live)
                for ref in refs:
                    self._drop(ref, self._dead, posts)
                self._post(posts)
        finally:
            self._pump_done.set()

    def _look(self) -> None:
        """Whether nodes joined or died since the last look: the slots follow."""
        self._next_look = time.monotonic() + LOOK_EVERY
        from .cluster import Cluster

        now = Cluster(self.cluster.address, self._ray.nodes())
        before = self.cluster
        if (now.gpus, now.largest, len(now.nodes)) != (before.gpus, before.largest,
                                                       len(before.nodes)):
            self._post([("cluster", now)])

    def _drop(self, ref: Any, why: str, posts: List[Tuple[Any, ...]]) -> None:
        """Give up on one task: its attempt is lost, and cleared. The task is
        cancelled: it ends its job through the keeper's own ladder (and does
        not wait, unwatched, on output nobody reads)."""
        with self._lock:
            execution = self._live.pop(ref, None)
        if execution is None or execution.cleared:
            return
        try:
            self._ray.cancel(ref, force=False)
        except Exception:
            pass  # the cluster is gone too
        self._feed.forget(execution.token)
        if execution.outcome is None:
            execution.outcome = Lost(why)
        if execution.streams is not None:
            execution.streams.close_writers()
        execution.cleared = True
        posts.append(("cleared", execution))

    def _stop_pump(self) -> None:
        self._closing = True
        self._wake.set()
        self._pump_done.wait(5.0)

    def _post(self, posts: List[Tuple[Any, ...]]) -> None:
        assert self._reactor is not None
        self._reactor.call_soon_threadsafe(lambda: self._deliver(posts))

    def _take(self, ref: Any, item: Tuple[Any, ...], posts: List[Tuple[Any, ...]]) -> None:
        """One item of one task (see `cluster_feed`), on the pump thread."""
        execution = self._live[ref]
        kind = item[0]
        if kind in ("out", "err"):
            self._write(execution, kind, item[1])
            return
        if kind == "started":
            _, execution.host, gpus, keeper, execution.node = item
            self._placed(execution, tuple(gpus))
            # Only now, with the node's agent there: a signal seeing the keeper
            # must find the agent too.
            execution.keeper = keeper
            posts.append(("placed", execution))
            return
        if kind == "ended":
            execution.outcome = outcome_from_returncode(item[1])
            if item[2]:
                posts.append(("ended", execution, execution.outcome, True))
            return
        # The first end known is the one: an error of Ray's after the job's
        # own exit (its node going while the task said goodbye) changes nothing.
        if execution.outcome is not None:
            pass
        elif kind == "failed":
            _, reason, execution.host, gpus = item
            execution.gpus = tuple(gpus)
            execution.outcome = FailedToStart(reason)
        elif kind == "lost":
            execution.outcome = Lost(item[1])
        elif kind == "error":
            execution.outcome = self._failure(execution, item[1])
        elif kind == "gone":
            execution.outcome = Killed(execution.last_signal or signal.SIGKILL)
        if kind in ("cleared", "failed", "lost", "error", "gone"):
            with self._lock:
                self._live.pop(ref, None)
            if execution.streams is not None:
                execution.streams.close_writers()
            if kind != "gone" or not execution.cleared:
                posts.append(("cleared", execution))
            execution.cleared = True

    def _placed(self, execution: ClusterExecution, gpus: Tuple[str, ...]) -> None:
        execution.gpus = gpus
        execution.started = time.monotonic()
        execution.started_wall = time.time()
        if execution.node:
            self._agent_on(execution.node)
        job = execution.job
        try:
            streams = self._output.streams(job.id, gpus, job.attempts, job.name,
                                           host=execution.host)
        except OSError as exc:
            # No log file: the job runs anyway, its output goes to ours.
            write_fd(2, f"simple_gpu_scheduler: job {job.id}: cannot open its log file: "
                   f"{exc.strerror}: {exc.filename}\n".encode())
            return
        execution.streams = streams
        if streams.copies:
            reactor = self._reactor
            assert reactor is not None
            execution.copies = streams.start_copies(
                lambda: reactor.call_soon_threadsafe(lambda: self._copied(execution)))
            self._copies = [c for c in self._copies if not c.join(0)] + execution.copies

    def _write(self, execution: ClusterExecution, kind: str, data: bytes) -> None:
        streams = execution.streams
        fd = None if streams is None else (streams.out if kind == "out" else streams.err)
        if fd is None:
            write_fd(1 if kind == "out" else 2, data)
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError:
            pass  # a full disk under --log-dir: the job goes on

    def _failure(self, execution: ClusterExecution, exc: Exception) -> Outcome:
        """What a Ray error says of the attempt."""
        from ray import exceptions as rex

        if isinstance(exc, rex.TaskCancelledError):
            return Killed(execution.last_signal or signal.SIGTERM)
        where = f" {execution.host}" if execution.host else ""
        if isinstance(exc, rex.NodeDiedError):
            return Lost(f"its node{where} died")
        if isinstance(exc, (rex.WorkerCrashedError, rex.RayActorError)):
            return Lost(f"its Ray worker on{where or ' the node'} died")
        if isinstance(exc, rex.OwnerDiedError):
            return Lost("Ray lost the task")
        # A task's own error says "ray::run_job() (pid=...)" first: its cause
        # is what explains.
        return Lost(f"Ray: {why_of(getattr(exc, 'cause', None) or exc)}")

    # --- on the engine's thread -----------------------------------------------

    def _deliver(self, posts: List[Tuple[Any, ...]]) -> None:
        assert self._events is not None and self._reactor is not None
        for post in posts:
            kind, execution = post[0], post[1]
            if kind == "cluster":
                self.cluster = post[1]
                if self.on_change is not None:
                    self.on_change(self.cluster)
            elif kind == "placed":
                execution.placed = True
                self._events.placed(execution)
            elif kind == "ended":
                execution.reported = True
                self._events.ended(execution, post[2], post[3])
            elif kind == "cleared":
                if all(copy.join(0) for copy in execution.copies):
                    self._clear(execution)
                else:
                    self._wait_for_copies(execution)

    def _wait_for_copies(self, execution: ClusterExecution) -> None:
        """The job is cleared on its node; its last ``--tag`` lines may still be
        on their way here: wait for them, a little."""
        assert self._reactor is not None
        execution.output_timer = self._reactor.call_at(
            self._reactor.time() + OUTPUT_WAIT, lambda: self._clear(execution))

    def _copied(self, execution: ClusterExecution) -> None:
        if execution.cleared and all(copy.join(0) for copy in execution.copies):
            self._clear(execution)

    def _clear(self, execution: ClusterExecution) -> None:
        assert self._events is not None
        if execution.done or not execution.cleared:
            return
        if execution.output_timer is not None:
            execution.output_timer.cancel()
        if not execution.reported:
            execution.reported = True
            outcome = execution.outcome or Killed(execution.last_signal or signal.SIGKILL)
            self._events.ended(execution, outcome, False)
        execution.done = True
        self._events.cleared(execution)


def _keeper_source() -> str:
    from . import cluster_keeper

    path = cluster_keeper.__file__
    assert path is not None
    with open(path, encoding="utf-8") as source:
        return source.read()

