"""The Ray launcher (`launch.cluster`) driven by the real engine `Loop` over a
fake Ray (tests/fake_ray.py). Only Ray is faked: each task is the real
`cluster_node.run_job` in a thread of this process, so the real keepers
start, the real shell jobs run, and the node's agent signals real pids.

The cluster: two nodes of 2 GPUs on one address (two Ray nodes on one
machine), so their labels carry the start of their node ids. Every job gets
a marker variable of its test in its environment: what still runs with it
is found in /proc (and killed at the end of the test). Tests on a real
cluster are elsewhere (tests/ray_cluster.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
)

import fake_ray
import pytest
from loop_fakes import handlers_now, lines, pipe_with

from simple_gpu_scheduler.engine.config import Settings
from simple_gpu_scheduler.engine.loop import Loop
from simple_gpu_scheduler.engine.steering import Steering
from simple_gpu_scheduler.errors import UsageError
from simple_gpu_scheduler.input.reader import InputSource, job_factory
from simple_gpu_scheduler.launch import cluster_client, cluster_launcher, cluster_node
from simple_gpu_scheduler.launch.cluster import connect
from simple_gpu_scheduler.launch.cluster_launcher import ClusterLauncher
from simple_gpu_scheduler.launch.streams import OutputMode, Passthrough, Tagged
from simple_gpu_scheduler.model import events as ev
from simple_gpu_scheduler.model.jobs import Exited, FailedToStart, Job, Killed, Lost

if TYPE_CHECKING:
    from simple_gpu_scheduler.model.jobs import Outcome

ADDRESS = "10.0.0.7"
NODE_A = "a1" * 28
NODE_B = "b2" * 28
LABEL_A = f"{ADDRESS}/a1a1a1a1"
LABEL_B = f"{ADDRESS}/b2b2b2b2"
TWO_NODES = (fake_ray.Node(2, ADDRESS, node_id=NODE_A), fake_ray.Node(2, ADDRESS, node_id=NODE_B))
#: The variable that marks a test's processes (its value is the test's own).
MARK = "SGS_FAKE_RAY_TEST"
#: A run that takes longer than this is hung: the watchdog breaks it.
WATCHDOG = 4.0

Hook = Callable[[Loop, ev.Event], None]


# --- the harness ---------------------------------------------------------------------------


class Hung(Exception):
    """The loop did not finish within the watchdog's time."""


class Run:
    """One finished run over the fake cluster."""

    def __init__(self, loop: Loop, launcher: ClusterLauncher, events: List[ev.Event],
                 status: int) -> None:
        self.loop = loop
        self.launcher = launcher
        self.events = events
        self.status = status

    def of(self, kind: type) -> List[ev.Event]:
        return [e for e in self.events if isinstance(e, kind)]

    def ended(self, job_id: int) -> List[ev.AttemptEnded]:
        return [e for e in self.events if isinstance(e, ev.AttemptEnded) and e.job.id == job_id]

    def started(self, job_id: int) -> List[ev.JobStarted]:
        return [e for e in self.events if isinstance(e, ev.JobStarted) and e.job.id == job_id]

    def outcome(self, job_id: int) -> Outcome:
        (done,) = [e for e in self.events if isinstance(e, ev.JobDone) and e.job.id == job_id]
        return done.outcome


class ClusterEnv:
    """One test's fake cluster, joined with `connect`, and runs of the engine over it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp: Path,
                 nodes: Sequence[fake_ray.Node] = TWO_NODES, feed: str = "stream") -> None:
        self.fake = fake_ray.install(monkeypatch, nodes)
        self.said: List[str] = []
        self.cluster = connect("auto", self.said.append)
        if feed == "mailbox":
            # As if joined through Ray Client: the launcher's tasks post to a
            # mailbox (cluster_feed.MailboxFeed). (`connect` itself would look
            # for a server at the address.)
            self.cluster.address = "ray://10.0.0.7:10001"
        self.feed = feed
        self.tmp = tmp
        self.marker = uuid.uuid4().hex

    def launcher(self, output: Optional[OutputMode] = None, grace: float = 2.0,
                 jobs_per_gpu: int = 1) -> ClusterLauncher:
        env = dict(os.environ, **{MARK: self.marker})
        return ClusterLauncher(self.cluster, "/bin/sh", output or Passthrough(), grace,
                               jobs_per_gpu, base_env=env, cwd=str(self.tmp))

    def run(self, data: bytes, *, jsonl: bool = False, output: Optional[OutputMode] = None,
            grace: float = 2.0, jobs_per_gpu: int = 1, slots: Optional[int] = None,
            retries: int = 0, hooks: Sequence[Hook] = (),
            setup: Optional[Callable[[Loop], None]] = None) -> Run:
        """The real engine over the cluster: a pool of `slots` (the cluster's
        GPUs unless given) ``ray:N`` ids, `jobs_per_gpu` each, as ``--ray`` makes it."""
        from simple_gpu_scheduler.placement.pool import GpuPool

        launcher = self.launcher(output, grace, jobs_per_gpu)
        count = self.cluster.gpus if slots is None else slots
        pool = GpuPool([f"ray:{i}" for i in range(count)], jobs_per_gpu)
        events: List[ev.Event] = []

        def listen(event: ev.Event) -> None:
            events.append(event)
            for hook in hooks:
                hook(loop, event)

        fd = pipe_with(data)
        source = InputSource(fd, job_factory(jsonl, retries=retries), continuation=not jsonl)
        loop = Loop(Settings(kill_grace=grace), launcher, source, pool, listen)
        if setup is not None:
            setup(loop)

        def hung() -> None:
            raise Hung(f"the loop did not end within {WATCHDOG}s")

        dog = threading.Timer(WATCHDOG, lambda: loop.call_soon_threadsafe(hung))
        dog.start()
        try:
            status = loop.run()
        except BaseException:
            # What is left goes, so that the launcher's pump thread can end.
            self.kill_processes()
            launcher.finish()
            raise
        finally:
            dog.cancel()
            os.close(fd)
            # The loop's wake-up pipe stays open, as in the real program: the
            # launcher's helper threads may still write to it.
        return Run(loop, launcher, events, status)

    def processes(self) -> List[int]:
        """This test's live processes (keepers, jobs, what jobs left)."""
        return marked_pids(self.marker)

    def task_of(self, job_id: int) -> List[fake_ray.Task]:
        return [t for t in self.fake.tasks if t.args[0]["env"]["SGS_JOB_ID"] == str(job_id)]

    def kill_processes(self) -> None:
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def cleanup(self) -> None:
        self.kill_processes()
        self.fake.join(3.0)


def marked_pids(marker: str) -> List[int]:
    """Live (not zombie) processes whose environment holds ``MARK=marker``."""
    needle = f"{MARK}={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # gone meanwhile
        if needle in environ and state not in (b"Z", b"X"):
            found.append(int(entry))
    return found


def wait_until(condition: Callable[[], bool], seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def when(loop: Loop, condition: Callable[[], bool], action: Callable[[], None]) -> None:
    """Once `condition` holds, `action` on the loop's thread (looked at every 10 ms)."""

    def look() -> None:
        if condition():
            action()
        else:
            loop.call_at(loop.time() + 0.01, look)

    loop.call_at(loop.time(), look)


def placed(loop: Loop, job_id: int) -> bool:
    """Whether the engine has been told the job's attempt is placed on a node."""
    record = loop.state.records.get(job_id)
    return record is not None and bool(getattr(record.execution, "placed", False))


def jsonl(*specs: Mapping[str, object]) -> bytes:
    return "".join(json.dumps(s) + "\n" for s in specs).encode()


def wait_for_all(n: int) -> str:
    """A job that writes what it sees to env.<job id>, then waits until `n`
    jobs have (so that `n` run at once)."""
    return ('printf "%s %s %s\\n" "$SGS_JOB_ID" "$SGS_NODE" "$CUDA_VISIBLE_DEVICES"'
            f' > env.$SGS_JOB_ID; while set -- env.*; [ $# -lt {n} ]; do sleep 0.01; done')


def seen_by_jobs(tmp: Path) -> Dict[str, Tuple[str, str]]:
    """Job id -> (SGS_NODE, CUDA_VISIBLE_DEVICES), as `wait_for_all` jobs wrote them."""
    seen: Dict[str, Tuple[str, str]] = {}
    for path in tmp.glob("env.*"):
        job_id, node, devices = path.read_text().split()
        seen[job_id] = (node, devices)
    return seen


@pytest.fixture(params=["stream", "mailbox"])
def feed(request: pytest.FixtureRequest) -> str:
    """How the tasks' items come back: their streams (a driver on a node), or
    the run's mailbox (through Ray Client)."""
    return str(request.param)


@pytest.fixture
def make_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, feed: str
             ) -> Iterator[Callable[[Sequence[fake_ray.Node]], ClusterEnv]]:
    """A `ClusterEnv` of the nodes given (one a test), with each `feed`; what
    it left is killed at the end."""
    before = handlers_now()
    made: List[ClusterEnv] = []

    def make(nodes: Sequence[fake_ray.Node]) -> ClusterEnv:
        made.append(ClusterEnv(monkeypatch, tmp_path, nodes, feed))
        return made[-1]

    yield make
    for cluster_env in made:
        cluster_env.cleanup()
    # `connect` puts back what Ray's init replaced, and the loop its own.
    assert handlers_now() == before


@pytest.fixture
def env(make_env: Callable[[Sequence[fake_ray.Node]], ClusterEnv]) -> ClusterEnv:
    """The two nodes of 2 GPUs on one address."""
    return make_env(TWO_NODES)


# --- joining the cluster --------------------------------------------------------------------


def test_connect_joins_and_knows_the_live_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    before = handlers_now()
    nodes = (*TWO_NODES, fake_ray.Node(4, "10.0.0.8"))
    fake = fake_ray.install(monkeypatch, nodes)
    fake.nodes[2].alive = False
    cluster = connect("auto", lambda line: None)
    assert fake.inits == [{"address": "auto", "log_to_driver": False, "logging_level": "ERROR",
                           "configure_logging": True}]
    assert handlers_now() == before  # Ray's SIGTERM handler went again
    assert os.environ["RAY_ENABLE_AUTO_CONNECT"] == "0"
    assert fake.pickled_by_value == [cluster_node, cluster_client]
    assert [n["NodeID"] for n in cluster.nodes] == [NODE_A, NODE_B]
    assert (cluster.gpus, cluster.largest) == (4, 2)
    assert cluster.labels == {NODE_A: LABEL_A, NODE_B: LABEL_B,
                              fake.nodes[2].node_id: "10.0.0.8"}


def test_ray_messages_about_the_cluster_are_said_as_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_ray.install(monkeypatch, TWO_NODES)
    said: List[str] = []
    connect("auto", said.append)
    # As Ray's error-listener thread calls it (ray/_private/worker.py), for a
    # message about the cluster (a node marked dead): ours, on stderr.
    fake.module._private.worker.print_to_stdstream(
        {"lines": ["a raylet died"], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    assert said == ["ray: a raylet died"]


NO_RAY = "Could not find any running Ray instance.\nMore text."
NO_GRPC = "Ray Client requires pip package `ray[client]`. If you ..."


@pytest.mark.parametrize("address, refusal, why", [
    ("auto", NO_RAY, "cannot join the Ray cluster: Could not find any running Ray instance."),
    ("127.0.0.1:{port}", NO_RAY,
     "cannot join the Ray cluster: Could not find any running Ray instance."),
    # Ray without its `client` extra.
    ("ray://127.0.0.1:{port}", NO_GRPC,
     'Ray Client needs grpcio, which is not installed: pip install "simple_gpu_scheduler[ray]"'),
])
def test_connect_says_in_one_line_why_it_cannot_join(monkeypatch: pytest.MonkeyPatch,
                                                     address: str, refusal: str,
                                                     why: str) -> None:
    with socket.socket() as server:
        # A HOST:PORT must answer a TCP connect before ray.init is tried.
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = address.format(port=server.getsockname()[1])
        fake = fake_ray.install(monkeypatch, TWO_NODES)
        fake.refused[address] = refusal
        with pytest.raises(UsageError) as info:
            connect(address, lambda line: None)
    assert str(info.value) == f"--ray {address}: {why}"
    assert not fake.initialized


def test_auto_with_a_ray_client_address_in_ray_address_joins_through_ray_client(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        fake = fake_ray.install(monkeypatch, TWO_NODES)
        address = f"ray://127.0.0.1:{server.getsockname()[1]}"
        monkeypatch.setenv("RAY_ADDRESS", address)
        cluster = connect("auto", lambda line: None)
    assert cluster.client and cluster.address == address
    assert fake.inits[0]["address"] == address


# --- node labels -------------------------------------------------------------------------------


@pytest.mark.parametrize("nodes,labels", [
    # One node an address: the address.
    ([("10.0.0.1", "0123abcd" + "0" * 48), ("10.0.0.2", "0123abcd" + "1" * 48)],
     ["10.0.0.1", "10.0.0.2"]),
    # Two on one address: its id's first 8 digits too.
    ([(ADDRESS, NODE_A), (ADDRESS, NODE_B)], [LABEL_A, LABEL_B]),
    # Prefixes grow, 4 digits at a time, until they tell the address's nodes apart.
    ([(ADDRESS, "abcdef01" + "2345" + "0" * 44), (ADDRESS, "abcdef01" + "6789" + "0" * 44)],
     [f"{ADDRESS}/abcdef012345", f"{ADDRESS}/abcdef016789"]),
    ([(ADDRESS, "abcdef012345" + "aaaa" + "0" * 40),
      (ADDRESS, "abcdef012345" + "bbbb" + "0" * 40), ("10.0.0.9", "abcdef012345" + "c" * 44)],
     [f"{ADDRESS}/abcdef012345aaaa", f"{ADDRESS}/abcdef012345bbbb", "10.0.0.9"]),
    # The length is per address: all of its nodes get the same.
    ([(ADDRESS, "11111111" + "a" * 48), (ADDRESS, "11111111" + "b" * 48),
      (ADDRESS, "22222222" + "c" * 48)],
     [f"{ADDRESS}/11111111aaaa", f"{ADDRESS}/11111111bbbb", f"{ADDRESS}/22222222cccc"]),
])
def test_node_labels(nodes: Sequence[Tuple[str, str]], labels: Sequence[str]) -> None:
    rows = [{"NodeID": node_id, "NodeManagerAddress": address, "Alive": True}
            for address, node_id in nodes]
    assert cluster_node.node_labels(rows) == {
        node_id: label for (_, node_id), label in zip(nodes, labels)}


# --- jobs and their outcomes -------------------------------------------------------------------


def test_jobs_run_and_their_ends_come_back_as_outcomes(env: ClusterEnv) -> None:
    run = env.run(lines(["exit 0", "exit 3", "kill -KILL $$"]))
    assert [run.outcome(i) for i in (1, 2, 3)] == [Exited(0), Exited(3), Killed(signal.SIGKILL)]
    assert run.status == 1
    assert sorted(run.loop.state.failed_ids) == [2, 3]
    assert env.fake.join(3.0) == []
    assert all(t.state == "done" for t in env.fake.tasks) and len(env.fake.tasks) == 3
    assert env.fake.shutdowns == 1  # the run left the cluster
    assert wait_until(lambda: env.processes() == [])  # the keepers exit after "cleared"


def test_the_engine_is_told_where_ray_placed_each_job_and_the_job_sees_it(
        env: ClusterEnv) -> None:
    run = env.run(lines([wait_for_all(4)] * 4))
    assert run.status == 0
    seen = seen_by_jobs(env.tmp)
    places: List[Tuple[str, Tuple[str, ...]]] = []
    for job_id in range(1, 5):
        (task,) = env.task_of(job_id)
        assert task.node_id is not None
        label, gpus = env.cluster.labels[task.node_id], tuple(str(g) for g in task.gpus)
        places.append((label, gpus))
        (started,) = run.started(job_id)
        assert (started.host, started.gpus) == (label, gpus)
        (ended,) = run.ended(job_id)
        assert (ended.host, ended.gpus, ended.outcome) == (label, gpus, Exited(0))
        assert seen[str(job_id)] == (label, ",".join(gpus))
    # Four at once: every GPU of the cluster.
    assert sorted(places) == [(LABEL_A, ("0",)), (LABEL_A, ("1",)), (LABEL_B, ("0",)),
                              (LABEL_B, ("1",))]
    # One agent a node, on that node, started at its first job.
    agents = [a for a in env.fake.actors if a.cls is cluster_node.Agent]
    assert sorted(a.node.node_id for a in agents) == [NODE_A, NODE_B]
    for agent in agents:
        strategy = agent.options["scheduling_strategy"]
        assert (strategy.node_id, strategy.soft) == (agent.node.node_id, False)
        assert agent.options["num_cpus"] == 0


def test_no_more_tasks_are_submitted_than_the_pool_has_slots(env: ClusterEnv) -> None:
    run = env.run(lines(["sleep 0.05"] * 8))
    assert run.status == 0 and len(env.fake.tasks) == 8
    # At each submission: the tasks submitted before it whose end the driver
    # had not read yet (their last item, from their stream or the mailbox, or
    # their error).
    number_of = {task.args[0]["token"]: task.number for task in env.fake.tasks}
    last = ("cleared", "failed", "lost")
    unfinished: List[int] = []
    at_submission: List[int] = []
    for entry in env.fake.log:
        if entry[0] == "submit":
            at_submission.append(len(unfinished))
            unfinished.append(entry[1])
        elif entry[0] == "got" and entry[1] == "take":
            for token, items in entry[2].items():
                if any(item[0] in last for item in items):
                    unfinished.remove(number_of[token])
        elif entry[0] == "read" and (isinstance(entry[2], BaseException)
                                     or entry[2][0] in last) and entry[1] in unfinished:
            unfinished.remove(entry[1])
    assert max(at_submission) == 3  # all 4 slots used, never a 5th task


def test_jobs_per_gpu_asks_ray_for_a_share_of_one_gpu(
        make_env: Callable[[Sequence[fake_ray.Node]], ClusterEnv]) -> None:
    # Two nodes of one GPU each (four jobs at once are enough).
    env = make_env((fake_ray.Node(1, ADDRESS, node_id=NODE_A),
                    fake_ray.Node(1, ADDRESS, node_id=NODE_B)))
    run = env.run(lines([wait_for_all(4)] * 4), jobs_per_gpu=2)
    assert run.status == 0
    tasks = env.fake.tasks
    assert [(t.options["num_gpus"], t.options["num_cpus"], t.options["max_retries"])
            for t in tasks] == [(0.5, 0, 0)] * 4
    # Two jobs on the GPU of each node, at once, and each job is told its GPU.
    assert Counter((t.node_id, t.gpus) for t in tasks) == {(NODE_A, (0,)): 2, (NODE_B, (0,)): 2}
    seen = seen_by_jobs(env.tmp)
    for job_id in range(1, 5):
        (task,) = env.task_of(job_id)
        assert task.node_id is not None
        assert seen[str(job_id)] == (env.cluster.labels[task.node_id], str(task.gpus[0]))


@pytest.mark.parametrize("tagged", [False, True])
def test_job_output_reaches_our_streams_tagged_with_node_and_gpu(
        env: ClusterEnv, capfd: pytest.CaptureFixture[str], tagged: bool) -> None:
    output = Tagged() if tagged else Passthrough()
    run = env.run(lines(["echo hello; echo oops >&2; echo bye"]), output=output)
    assert run.status == 0
    prefix = f"[1|{LABEL_A} gpu 0] " if tagged else ""
    out, err = capfd.readouterr()
    assert out == f"{prefix}hello\n{prefix}bye\n"
    assert err == f"{prefix}oops\n"


def test_output_printed_before_the_keeper_says_started_is_tagged_too(
        env: ClusterEnv, capfd: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The race made sure: the keeper says "started" a moment after the job starts.
    source = cluster_launcher._keeper_source()
    line = '        self.say(f"started {os.getpid()} {self.job}")'
    assert line in source
    monkeypatch.setattr(cluster_launcher, "_keeper_source", lambda: source.replace(
        line, "        time.sleep(0.3)\n" + line))
    run = env.run(lines(["echo early"]), output=Tagged())
    assert run.status == 0
    out, _ = capfd.readouterr()
    assert out == f"[1|{LABEL_A} gpu 0] early\n"


def test_a_job_that_cannot_start_on_its_node_fails_to_start(env: ClusterEnv) -> None:
    run = env.run(jsonl({"cmd": "true", "cwd": str(env.tmp / "nowhere")}), jsonl=True)
    (ended,) = run.ended(1)
    assert ended.outcome == FailedToStart(
        f"working directory {env.tmp / 'nowhere'} does not exist on {LABEL_A}")
    assert run.started(1) == [] and run.status == 1


# --- stopping ------------------------------------------------------------------------------------


#: Traps TERM (exit 7), and leaves a background and a setsid process running.
TRAPPED = ("sleep 300 & setsid sleep 300 & trap 'exit 7' TERM; touch ready; "
           "while :; do sleep 0.02; done")


def test_terminate_goes_through_the_agent_and_ends_the_job_and_all_it_left(
        env: ClusterEnv) -> None:
    running: List[int] = []

    def setup(loop: Loop) -> None:
        def stop() -> None:
            running.extend(env.processes())
            Steering(loop).kill([1])

        when(loop, lambda: (env.tmp / "ready").exists() and placed(loop, 1), stop)

    run = env.run(lines([TRAPPED]), setup=setup)
    assert run.outcome(1) == Exited(7)  # its own exit, not "killed"
    assert len(running) >= 4  # the keeper, the shell and its two sleeps
    (task,) = env.fake.tasks
    (call,) = [c for c in env.fake.actor_calls if c.method == "signal"]
    # SIGUSR1 asks the keeper to terminate the tree; SIGKILL was never needed.
    assert call.actor.node.node_id == task.node_id
    assert (call.args[0], call.args[2], call.result) == (task.keeper, signal.SIGUSR1, True)
    assert wait_until(lambda: env.processes() == [])


def test_a_job_that_leaves_a_process_lingers_until_the_ladder_ends_it(env: ClusterEnv) -> None:
    left: List[int] = []

    def look(loop: Loop, event: ev.Event) -> None:
        if isinstance(event, ev.Lingering):
            left.extend(env.processes())

    run = env.run(lines(["sleep 300 & exit 0"]), hooks=[look])
    kinds = [type(e) for e in run.events if getattr(e, "job", None) is not None]
    assert ev.Lingering in kinds
    assert kinds.index(ev.Lingering) < kinds.index(ev.JobDone)
    assert run.outcome(1) == Exited(0) and run.status == 0
    assert left  # the sleep (and its keeper) were still there
    assert [c.args[2] for c in env.fake.actor_calls if c.method == "signal"] == [signal.SIGUSR1]
    assert wait_until(lambda: env.processes() == [])


def test_a_task_still_waiting_for_gpus_is_cancelled_and_never_runs(env: ClusterEnv) -> None:
    # A pool of 5 slots over 4 GPUs: the fifth task waits in Ray.
    hold = "while [ ! -e go ]; do sleep 0.01; done"
    fake = env.fake

    def setup(loop: Loop) -> None:
        when(loop, lambda: len(fake.tasks) == 5 and fake.tasks[4].state == "pending",
             lambda: Steering(loop).kill([5]))

    def release(loop: Loop, event: ev.Event) -> None:
        if isinstance(event, ev.AttemptEnded) and event.job.id == 5:
            (env.tmp / "go").touch()

    run = env.run(lines([hold] * 4 + ["touch ran"]), slots=5, setup=setup, hooks=[release])
    assert run.outcome(5) == Killed(signal.SIGTERM)
    assert run.started(5) == []
    assert fake.cancels == [(4, False)]
    assert fake.tasks[4].node is None and not (env.tmp / "ran").exists()
    assert [run.outcome(i) for i in range(1, 5)] == [Exited(0)] * 4


#: Runs until its node dies the first time; the second attempt says where it ran.
TWICE = ('if [ -e first ]; then echo "$SGS_NODE" > second; exit 0; fi; '
         'echo "$SGS_NODE" > first; exec sleep 300')


def test_a_dead_node_loses_the_attempt_and_the_retry_runs_on_the_other(
        env: ClusterEnv) -> None:
    dead: List[str] = []

    def setup(loop: Loop) -> None:
        def kill() -> None:
            node_id = env.fake.tasks[0].node_id
            assert node_id is not None
            dead.append(node_id)
            env.fake.kill_node(node_id)

        when(loop, lambda: (env.tmp / "first").exists() and placed(loop, 1), kill)

    run = env.run(lines([TWICE]), retries=1, setup=setup)
    first, second = run.ended(1)
    lost_on = env.cluster.labels[dead[0]]
    assert first.outcome == Lost(f"its node {lost_on} died")
    assert lost_on in first.outcome.describe()
    assert first.retry and first.host == lost_on
    other = ({LABEL_A, LABEL_B} - {lost_on}).pop()
    assert (second.outcome, second.host, second.retry) == (Exited(0), other, False)
    assert [s.host for s in run.started(1)] == [lost_on, other]
    assert (env.tmp / "first").read_text().strip() == lost_on
    assert (env.tmp / "second").read_text().strip() == other
    assert run.status == 0 and not env.fake.node(dead[0]).alive
    # The first attempt's job went with its keeper's own ladder.
    assert wait_until(lambda: env.processes() == [])


# --- what the cluster refuses ---------------------------------------------------------------------


def test_refuses_what_no_node_can_run(env: ClusterEnv) -> None:
    launcher = env.launcher()
    assert launcher.refuses(Job(1, b"true", gpus=2)) is None
    assert launcher.refuses(Job(1, b"true", gpus=3)) == (
        "it needs 3 GPUs on one node, and the largest node of the cluster has 2")
    assert "names GPUs (on)" in str(launcher.refuses(Job(1, b"true", on=("ray:0",))))
    assert "declares mem" in str(launcher.refuses(Job(1, b"true", mem=1 << 30)))
    shared = env.launcher(jobs_per_gpu=2)
    assert shared.refuses(Job(1, b"true")) is None
    assert "shares GPUs" in str(shared.refuses(Job(1, b"true", gpus=2)))


@pytest.mark.parametrize("spec", [{"gpus": 3}, {"on": ["ray:0"]}, {"mem": "1GiB"}])
def test_a_refused_job_fails_without_a_task_and_the_others_run(
        env: ClusterEnv, spec: Mapping[str, object]) -> None:
    run = env.run(jsonl({"cmd": "touch refused", **spec}, {"cmd": "touch ran"}), jsonl=True)
    (ended,) = run.ended(1)
    assert isinstance(ended.outcome, FailedToStart)
    assert ended.outcome.reason.startswith("it can never run here: ")
    assert run.outcome(2) == Exited(0) and (env.tmp / "ran").exists()
    assert len(env.fake.tasks) == 1 and not (env.tmp / "refused").exists()


def test_a_cluster_that_goes_away_ends_the_run_with_every_job_reported(
        env: ClusterEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    # Ray's own calls fail from some moment on (the GCS gone): the jobs then
    # running are lost, those after them cannot start, and the run ends
    # instead of waiting forever for streams nobody reads.
    real_wait = env.fake.module.wait
    broken: List[bool] = []

    def wait(*args: Any, **kwargs: Any) -> Any:
        if broken:
            raise ConnectionError("GCS unreachable")
        return real_wait(*args, **kwargs)

    monkeypatch.setattr(env.fake.module, "wait", wait)

    def setup(loop: Loop) -> None:
        when(loop, lambda: (env.tmp / "ready").exists() and placed(loop, 1),
             lambda: broken.append(True))

    run = env.run(lines(["touch ready; exec sleep 300", "true"]), slots=1, setup=setup)
    (first,) = run.ended(1)
    assert first.outcome == Lost("the Ray cluster went away: GCS unreachable")
    (second,) = run.ended(2)
    assert second.outcome == FailedToStart("the Ray cluster went away: GCS unreachable")
    assert run.status == 1
    env.kill_processes()


def test_the_slots_follow_the_cluster_when_a_node_dies(
        env: ClusterEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    from simple_gpu_scheduler.cli.ray_options import follow_cluster

    monkeypatch.setattr(cluster_launcher, "LOOK_EVERY", 0.05)
    said: List[str] = []

    def setup(loop: Loop) -> None:
        launcher = loop.launcher
        assert isinstance(launcher, ClusterLauncher)
        launcher.on_change = follow_cluster(loop.pool, said.append)
        when(loop, lambda: placed(loop, 1), lambda: env.fake.kill_node(NODE_B))
        # Ends the job once the run has seen the cluster shrink.
        when(loop, lambda: bool(said), lambda: (env.tmp / "go").touch())

    run = env.run(lines(["while [ ! -e go ]; do sleep 0.02; done"]), setup=setup)
    assert said == ["the Ray cluster has 1 node(s) and 2 GPU(s) now"]
    pool = run.loop.pool
    assert [pool.gpu(f"ray:{i}").removed for i in range(4)] == [False, False, True, True]
    assert run.launcher.cluster.largest == 2 and run.launcher.cluster.gpus == 2
