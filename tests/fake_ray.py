"""A fake Ray: exactly the part of Ray's API that the Ray launcher uses
(`launch.cluster`, `launch.cluster_node`), for fast unit tests without a
cluster. `install` puts it in ``sys.modules`` as ``ray`` and the submodules
the launcher imports.

What it models:

- **nodes** (`Node`): an id, an address, G GPUs, alive or dead
  (`FakeRay.kill_node`); ``ray.nodes()`` lists them as Ray does;
- **streaming-generator tasks** (``ray.remote(num_returns="streaming")``):
  each runs the REAL function (``cluster_node.run_job``) in a thread of this
  process, standing in for a Ray worker, so the real keeper processes start
  and the real shell commands run. Arguments and yielded items are pickled
  on the way, as only values cross between Ray's processes. A task asks
  ``num_gpus`` n (whole GPUs, or a fraction 1/K of one); it is pending until
  some live node has room, then gets that node's lowest free GPU ids, which
  ``ray.get_runtime_context()`` tells the task (per thread), and gives them
  back when its generator returns. Pending tasks are placed in submission
  order, a later one going first when only it fits;
- **the stream** (the generator object ``.remote`` returns): ``next()``
  gives a ref to the next item (it waits for one, as Ray's does), and after
  the last raises StopIteration; a failed task's stream gives, after the
  items it yielded, a ref whose ``ray.get`` raises the task's error.
  ``ray.wait`` counts a stream ready when its next item (or its end, or its
  error) is there;
- **plain tasks** (``ray.remote(f)`` without ``num_returns``, as through
  Ray Client): the same, but ``.remote`` gives a ref to the task's result,
  which ``ray.wait`` counts ready once the task ended and ``ray.get`` gives
  (or raises the task's error, or NodeDiedError);
- **cancel** (``ray.cancel(ref, force=False)``): a pending task never runs;
  a running one gets KeyboardInterrupt thrown into its generator at its next
  yield, a running plain task at its next ``ray.get`` (Ray interrupts the
  worker wherever it is; at the next yield or call is close enough for these
  tests), and whatever a generator yields from then on is dropped; its
  stream (or result) then raises TaskCancelledError;
- **node death** (`FakeRay.kill_node`): the node is no longer Alive, its
  running tasks' streams raise NodeDiedError from their next ``ray.get``
  (the items not read yet are lost with the node), and its actors' calls
  fail with RayActorError. A real node's death kills the task's worker; the
  keeper watches that worker and then runs its own stop ladder. Here the
  worker is this test process, which must live on, so the fake sends the
  keeper SIGTERM instead, which the keeper takes the same way (its own
  ladder). For that the fake reads the keeper's pid from the task's
  ``("started", label, gpus, KEEPER, node)`` item: the one place it knows
  what the launcher's tasks yield;
- **actors** (``ray.remote(cls)``): ``.options(...).remote()`` makes one
  instance on the node its NodeAffinitySchedulingStrategy names (without
  one, on the driver's node, which never dies here; names are unique, as
  Ray's named actors are); ``handle.method.remote(*args)`` runs the method at
  once, in the caller's thread, and returns a ref to its result; an async
  method's coroutine runs on the actor's own event loop (a thread), and
  ``ray.get`` waits for it. A handle pickles as the same actor. A task whose
  node died calls nothing (its worker is dead); a task's call with a
  ``("started", ..., KEEPER, node)`` item tells the fake its keeper, as its
  stream's item does. Every call is recorded (`ActorCall`). ``ray.kill(handle)`` is
  recorded too (`FakeRay.killed`), and the actor's later calls fail.

What it does not model: CPUs and other resources (recorded, never counted:
the launcher asks for none), retries (the launcher asks for none), force
cancel, a driver on a node, object
spilling, timeouts of ``ray.get``, and the order in which a real Ray runs
waiting tasks (none is promised).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pickle
import signal
import sys
import threading
import time
import types
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

if TYPE_CHECKING:
    import pytest

#: How close to a GPU's capacity the fractions booked on it may come.
EPSILON = 1e-9


# --- ray.exceptions --------------------------------------------------------------------


class RayError(Exception):
    """The base of Ray's errors."""


class TaskCancelledError(RayError):
    """The task was cancelled (``ray.cancel``)."""


class NodeDiedError(RayError):
    """The node that ran the task died."""


class WorkerCrashedError(RayError):
    """The worker process that ran the task died (never raised by the fake)."""


class RayActorError(RayError):
    """The actor died (here: its node did)."""


class OwnerDiedError(RayError):
    """The process that owned the object died (never raised by the fake)."""


class RayTaskError(RayError):
    """The task raised: what Ray's ``ray.get`` raises then. (Ray's own class is
    also made a subclass of the cause's type; the fake keeps the cause as
    ``cause`` instead.)"""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


# --- values ------------------------------------------------------------------------------


class Node:
    """One node of the fake cluster, as a test declares it."""

    def __init__(self, gpus: int, address: str = "10.0.0.7", cpus: int = 8,
                 node_id: Optional[str] = None, port: int = 0) -> None:
        self.gpus = gpus
        self.address = address
        self.cpus = cpus
        #: 56 hex digits, as Ray's; made up from the node's place if not given
        self.node_id = node_id
        self.port = port


class _NodeState:
    """A node while the fake runs: what its GPUs hold."""

    def __init__(self, spec: Node, node_id: str, port: int) -> None:
        self.spec = spec
        self.node_id = node_id
        self.port = port
        self.alive = True
        #: the share of each GPU booked by running tasks (1.0: a whole task's)
        self.used: List[float] = [0.0] * spec.gpus

    def fit(self, need: float) -> Optional[Tuple[int, ...]]:
        """The GPU ids a task asking `need` would get now, or None."""
        if not self.alive:
            return None
        if need <= 0:
            return ()
        if need >= 1:
            assert need == int(need), f"num_gpus {need}: Ray takes whole GPUs or a fraction of one"
            free = [i for i, used in enumerate(self.used) if used <= EPSILON]
            return tuple(free[:int(need)]) if len(free) >= need else None
        for i, used in enumerate(self.used):
            if used + need <= 1 + EPSILON:
                return (i,)
        return None

    def book(self, gpus: Tuple[int, ...], need: float, sign: int) -> None:
        share = need if need < 1 else 1.0
        for gpu in gpus:
            self.used[gpu] += sign * share


class ObjectRef:
    """A value in the object store, or the error ``ray.get`` raises for it;
    or, for an async actor's method, the future of its coroutine."""

    def __init__(self, value: Any = None, error: Optional[BaseException] = None,
                 task: Optional[Task] = None, future: Optional[Any] = None,
                 method: str = "") -> None:
        self.value = value
        self.error = error
        #: the task whose stream gave it, if any
        self.task = task
        #: a concurrent.futures.Future of an async method's call, if it is one
        self.future = future
        #: the name of that method
        self.method = method

    def ready(self) -> bool:
        return self.future is None or self.future.done()


class TaskRef(ObjectRef):
    """The result of a plain (not streaming) task: there once the task ended,
    its return value, or its error."""

    def __init__(self, task: Task) -> None:
        super().__init__()
        self.result_of = task

    def ready(self) -> bool:
        task = self.result_of
        return task.finished or task.error is not None


class Task:
    """One submitted task, and what the tests may look at afterwards."""

    def __init__(self, fake: FakeRay, function: Callable[..., Any], args: Tuple[Any, ...],
                 options: Dict[str, Any], number: int) -> None:
        self.fake = fake
        self.function = function
        #: the arguments as the task gets them (refs resolved, pickled copies)
        self.args = args
        self.options = options
        #: its place in submission order, from 0
        self.number = number
        self.num_gpus = float(options.get("num_gpus") or 0)
        #: "pending", "running" or "done"
        self.state = "pending"
        #: where it ran (None: it never did)
        self.node: Optional[_NodeState] = None
        self.gpus: Tuple[int, ...] = ()
        #: yielded, not read by the driver yet
        self.items: Deque[Any] = deque()
        self.error: Optional[BaseException] = None
        self.error_taken = False
        self.finished = False
        self.cancel_requested = False
        self.died = False
        #: the keeper's pid, from the task's "started" item (see the module docstring)
        self.keeper = 0
        self.thread: Optional[threading.Thread] = None
        self.stream = Stream(self)
        #: a plain task's result (its `TaskRef`, ``ray.get`` of it)
        self.result: Any = None
        self.ref = TaskRef(self)
        self.streaming = options.get("num_returns") == "streaming"
        self.interrupted = False  # a plain task's cancel was raised in it

    @property
    def node_id(self) -> Optional[str]:
        return None if self.node is None else self.node.node_id

    def ready(self) -> bool:
        """Whether the stream's next ``next()`` returns at once."""
        return bool(self.items) or self.finished or self.error is not None

    def __repr__(self) -> str:
        return f"Task({self.number}, {self.state}, node={self.node_id}, gpus={self.gpus})"


class Stream:
    """The generator object of a streaming task (Ray's ObjectRefGenerator)."""

    def __init__(self, task: Task) -> None:
        self.task = task

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> ObjectRef:
        task = self.task
        with task.fake.changed:
            while not task.ready():
                task.fake.changed.wait()
            if task.items:
                return ObjectRef(task.items.popleft(), task=task)
            if task.error is not None and not task.error_taken:
                task.error_taken = True
                return ObjectRef(error=task.error, task=task)
        raise StopIteration


class NodeAffinitySchedulingStrategy:
    def __init__(self, node_id: str, soft: bool = False) -> None:
        self.node_id = node_id
        self.soft = soft


class RemoteFunction:
    """``ray.remote(**options)(function)``."""

    def __init__(self, fake: FakeRay, function: Callable[..., Any],
                 options: Dict[str, Any]) -> None:
        self._fake = fake
        self._function = function
        self._options = options

    def options(self, **options: Any) -> RemoteFunction:
        return RemoteFunction(self._fake, self._function, {**self._options, **options})

    def remote(self, *args: Any) -> Stream:
        return self._fake.submit(self._function, args, self._options)


class ActorCall:
    """One call of an actor's method, as the fake ran it."""

    def __init__(self, actor: ActorHandle, method: str, args: Tuple[Any, ...]) -> None:
        self.actor = actor
        self.method = method
        self.args = args
        self.result: Any = None
        self.error: Optional[BaseException] = None


class ActorClass:
    """``ray.remote(cls)``."""

    def __init__(self, fake: FakeRay, cls: type, options: Dict[str, Any]) -> None:
        self._fake = fake
        self._cls = cls
        self._options = options

    def options(self, **options: Any) -> ActorClass:
        return ActorClass(self._fake, self._cls, {**self._options, **options})

    def remote(self, *args: Any) -> ActorHandle:
        return self._fake.create_actor(self._cls, args, self._options)


class ActorMethod:
    def __init__(self, actor: ActorHandle, name: str) -> None:
        self._actor = actor
        self._name = name

    def remote(self, *args: Any) -> ObjectRef:
        return self._actor.call(self._name, args)


class ActorHandle:
    """One actor: its instance, its node and its options."""

    def __init__(self, fake: FakeRay, instance: Any, options: Dict[str, Any],
                 node: Optional[_NodeState]) -> None:
        self._fake = fake
        self._instance = instance
        self.options = options
        self.name: Optional[str] = options.get("name")
        self.node = node
        self.dead = False  # ray.kill
        self.cls = type(instance)
        _HANDLES[id(self)] = self
        self._loop: Optional[asyncio.AbstractEventLoop] = None  # an async actor's

    def __getattr__(self, name: str) -> ActorMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return ActorMethod(self, name)

    def __reduce__(self) -> Tuple[Any, Tuple[int]]:
        # A task's arguments are pickled; an actor handle among them is the
        # same actor on the other side, as Ray's handles are.
        return (_handle, (id(self),))

    def call(self, method: str, args: Tuple[Any, ...]) -> ObjectRef:
        fake = self._fake
        fake.check_driver()
        caller: Optional[Task] = getattr(fake.local, "task", None)
        if caller is not None:
            # A task posting its items (to the launcher's mailbox): its keeper
            # is in its "started" (see the module docstring). And a task whose
            # node died is a dead worker: what it calls goes nowhere.
            started = [a for a in args if isinstance(a, tuple) and len(a) == 5
                       and a[0] == "started"]
            with fake.changed:
                if started:
                    caller.keeper = int(started[0][3])
                died = caller.died
            if died:
                if started:
                    _terminate(caller.keeper)  # it started as its node died
                return ObjectRef(None)
        record = ActorCall(self, method, args)
        with fake.changed:
            fake.actor_calls.append(record)
        if self.node is not None and not self.node.alive or self.dead:
            record.error = RayActorError(f"the actor {self.name} is dead")
            return ObjectRef(error=record.error)
        try:
            record.result = getattr(self._instance, method)(*pickle.loads(pickle.dumps(args)))
        except Exception as exc:
            record.error = RayTaskError(exc)
            return ObjectRef(error=record.error)
        if asyncio.iscoroutine(record.result):
            # An async actor: its calls run on its one event loop, as Ray's do.
            return ObjectRef(future=asyncio.run_coroutine_threadsafe(
                record.result, self._event_loop()), method=method)
        return ObjectRef(record.result)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._fake.changed:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, daemon=True,
                                 name=f"fake-ray-actor-{self.name}").start()
            return self._loop


class RuntimeContext:
    """``ray.get_runtime_context()``: it answers for the task of the calling
    thread (the driver: the first node, no GPUs)."""

    def __init__(self, fake: FakeRay) -> None:
        self._fake = fake

    def _task(self) -> Optional[Task]:
        return getattr(self._fake.local, "task", None)

    def get_node_id(self) -> str:
        task = self._task()
        node = self._fake.nodes[0] if task is None or task.node is None else task.node
        return node.node_id

    def get_accelerator_ids(self) -> Dict[str, List[str]]:
        task = self._task()
        return {"GPU": [] if task is None else [str(g) for g in task.gpus]}


# --- the fake cluster ------------------------------------------------------------------------


def _node_id(index: int) -> str:
    return hashlib.sha256(f"fake-ray-node-{index}".encode()).hexdigest()[:56]


def _ray_sigterm(signum: int, frame: object) -> None:
    sys.exit(1)


def _print_to_stdstream(data: Any, ignore_prefix: bool) -> None:
    """Ray's printer of cluster messages (the launcher replaces it). Ray 2.45
    calls it from its error-listener thread as ``print_to_stdstream({"lines":
    [...], "pid": "raylet", "is_err": False}, ignore_prefix=False)``."""
    for line in data.get("lines", []) if isinstance(data, dict) else [str(data)]:
        sys.stdout.write(f"{line}\n")


class FakeRay:
    """The fake cluster and its API; `install` makes a ``ray`` module of it."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.nodes = [_NodeState(spec, spec.node_id or _node_id(i), spec.port or 6380 + i)
                      for i, spec in enumerate(nodes)]
        assert len({n.node_id for n in self.nodes}) == len(self.nodes), "node ids must differ"
        #: guards everything below; notified whenever a stream may have become ready
        self.changed = threading.Condition()
        self.tasks: List[Task] = []
        self.pending: List[Task] = []
        #: in order: ("submit", task number) and ("read", task number, item or
        #: error) for each ``ray.get`` of a stream's ref; of a plain task's
        #: result, ("read", number, error or ("returned", value)); and for each
        #: ``ray.get`` by the driver of an async actor's call, ("got", method, value)
        self.log: List[Tuple[Any, ...]] = []
        self.initialized = False
        #: the keyword arguments of each ``ray.init``
        self.inits: List[Dict[str, Any]] = []
        self.shutdowns = 0
        #: address -> the message of the ConnectionError ``ray.init`` raises for it
        self.refused: Dict[str, str] = {}
        self.pickled_by_value: List[types.ModuleType] = []
        #: (task number, force) of each ``ray.cancel``
        self.cancels: List[Tuple[int, bool]] = []
        self.actors: List[ActorHandle] = []
        self.actor_calls: List[ActorCall] = []
        #: the actors ``ray.kill`` was given, in order
        self.killed: List[ActorHandle] = []
        #: the task a thread runs (for the runtime context)
        self.local = threading.local()
        self.module = self._make_modules()

    # --- what tests call ----------------------------------------------------------------

    def node(self, node_id: str) -> _NodeState:
        (node,) = [n for n in self.nodes if n.node_id == node_id]
        return node

    def kill_node(self, node_id: str) -> None:
        """The node dies (see the module docstring)."""
        keepers = []
        with self.changed:
            node = self.node(node_id)
            node.alive = False
            for task in self.tasks:
                if task.node is node and task.state == "running":
                    task.died = True
                    task.items.clear()
                    task.error = NodeDiedError(
                        f"the node {node_id} running the task died")
                    if task.keeper:
                        keepers.append(task.keeper)
            self.changed.notify_all()
        for pid in keepers:
            _terminate(pid)

    def join(self, seconds: float) -> List[Task]:
        """Wait up to `seconds` for every task's thread to end; those still running."""
        deadline = time.monotonic() + seconds
        for task in list(self.tasks):
            if task.thread is not None:
                task.thread.join(max(0.0, deadline - time.monotonic()))
        return [t for t in self.tasks if t.thread is not None and t.thread.is_alive()]

    # --- the API --------------------------------------------------------------------------

    def check_driver(self) -> None:
        """Driver calls need ``ray.init`` (the launcher sets
        RAY_ENABLE_AUTO_CONNECT=0); a task's own calls do not."""
        if not self.initialized and getattr(self.local, "task", None) is None:
            raise RuntimeError("Ray has not been started yet: call ray.init() first")

    def init(self, address: Optional[str] = None, **kwargs: Any) -> None:
        self.inits.append({"address": address, **kwargs})
        if address in self.refused:
            raise ConnectionError(self.refused[address])
        if self.initialized:
            raise RuntimeError("Maybe you called ray.init twice by accident?")
        # As Ray does: its own SIGTERM handler (the launcher puts ours back).
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _ray_sigterm)
        self.initialized = True

    def shutdown(self) -> None:
        self.initialized = False
        self.shutdowns += 1

    def ray_nodes(self) -> List[Dict[str, Any]]:
        self.check_driver()
        rows = []
        for node in self.nodes:
            resources: Dict[str, float] = {"CPU": float(node.spec.cpus)}
            if node.spec.gpus:  # Ray lists only the resources a node has
                resources["GPU"] = float(node.spec.gpus)
            rows.append({"NodeID": node.node_id, "NodeManagerAddress": node.spec.address,
                         "NodeManagerPort": node.port, "Alive": node.alive,
                         "Resources": resources})
        return rows

    def put(self, value: Any) -> ObjectRef:
        self.check_driver()
        return ObjectRef(pickle.loads(pickle.dumps(value)))

    def get(self, ref: ObjectRef, timeout: Optional[float] = None) -> Any:
        """(`timeout` is taken and ignored.) In a cancelled plain task, the
        KeyboardInterrupt of its cancel (see the module docstring)."""
        self.check_driver()
        task = getattr(self.local, "task", None)
        if task is not None and task.cancel_requested and not task.interrupted:
            task.interrupted = True
            raise KeyboardInterrupt
        if not isinstance(ref, ObjectRef):
            raise TypeError(f"the fake's ray.get takes one ObjectRef, not {type(ref).__name__}")
        if isinstance(ref, TaskRef):
            task = ref.result_of
            with self.changed:
                while not ref.ready():
                    self.changed.wait()
                self.log.append(("read", task.number, task.error if task.error is not None
                                 else ("returned", task.result)))
            if task.error is not None:
                raise task.error
            return task.result
        if ref.future is not None:
            try:
                # A copy, as every value from another process is.
                value = pickle.loads(pickle.dumps(ref.future.result()))
            except Exception as exc:
                raise RayTaskError(exc) from None
            if task is None:  # the driver's
                with self.changed:
                    # Its own copy: the driver may change what it got.
                    self.log.append(("got", ref.method, pickle.loads(pickle.dumps(value))))
            return value
        if ref.task is not None:
            with self.changed:
                self.log.append(("read", ref.task.number,
                                 ref.error if ref.error is not None else ref.value))
        if ref.error is not None:
            raise ref.error
        return ref.value

    def wait(self, refs: Sequence[Any], num_returns: int = 1,
             timeout: Optional[float] = None) -> Tuple[List[Any], List[Any]]:
        self.check_driver()
        refs = list(refs)
        if not 0 < num_returns <= len(refs):
            raise ValueError("num_returns must be at least 1 and at most the number of refs")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.changed:
            while True:
                ready = [r for r in refs if _ready(r)]
                left = None if deadline is None else deadline - time.monotonic()
                if len(ready) >= num_returns or (left is not None and left <= 0):
                    break
                self.changed.wait(left)
        ready = ready[:num_returns]
        taken = {id(r) for r in ready}
        return ready, [r for r in refs if id(r) not in taken]

    def cancel(self, ref: Any, force: bool = False) -> None:
        self.check_driver()
        if force:
            raise NotImplementedError("the fake does not model force-cancel")
        task = ref.result_of if isinstance(ref, TaskRef) else ref.task
        with self.changed:
            self.cancels.append((task.number, force))
            if task.state == "pending":
                self.pending.remove(task)
                task.state = "done"
                task.finished = True
                task.error = TaskCancelledError("the task was cancelled before it ran")
            elif task.state == "running":
                task.cancel_requested = True
            self.changed.notify_all()

    def kill(self, actor: ActorHandle) -> None:
        """``ray.kill(actor)``: recorded in `killed`; its later calls fail."""
        self.check_driver()
        with self.changed:
            self.killed.append(actor)
            actor.dead = True

    def remote(self, *args: Any, **options: Any) -> Any:
        """``ray.remote(f)``, ``ray.remote(cls)`` and ``ray.remote(**options)(f)``."""
        if args:
            (target,) = args
            assert not options
            if isinstance(target, type):
                return ActorClass(self, target, {})
            return RemoteFunction(self, target, {})

        def decorate(target: Any) -> Any:
            if isinstance(target, type):
                return ActorClass(self, target, options)
            return RemoteFunction(self, target, options)

        return decorate

    def submit(self, function: Callable[..., Any], args: Tuple[Any, ...],
               options: Dict[str, Any]) -> Stream:
        self.check_driver()
        values = tuple(self.get(a) if isinstance(a, ObjectRef) else a for a in args)
        with self.changed:
            task = Task(self, function, pickle.loads(pickle.dumps(values)), options,
                        len(self.tasks))
            self.tasks.append(task)
            self.log.append(("submit", task.number))
            self.pending.append(task)
            placed = self._place()
        self._start(placed)
        return task.stream if task.streaming else task.ref

    def create_actor(self, cls: type, args: Tuple[Any, ...],
                     options: Dict[str, Any]) -> ActorHandle:
        self.check_driver()
        strategy = options.get("scheduling_strategy")
        # Without a node named: on the driver's node, which the fake never
        # kills (a real driver dies with its node, and the run with it).
        node: Optional[_NodeState] = None
        if isinstance(strategy, NodeAffinitySchedulingStrategy):
            node = self.node(strategy.node_id)
        with self.changed:
            name = options.get("name")
            if name is not None and any(a.name == name for a in self.actors):
                raise ValueError(f"The name {name} is already taken by another actor")
            handle = ActorHandle(self, cls(*args), options, node)
            self.actors.append(handle)
        return handle

    # --- running tasks -------------------------------------------------------------------

    def _place(self) -> List[Task]:
        """Start what fits (called with the lock held); the tasks to start."""
        placed = []
        for task in list(self.pending):
            for node in self.nodes:
                gpus = node.fit(task.num_gpus)
                if gpus is None:
                    continue
                node.book(gpus, task.num_gpus, +1)
                task.node, task.gpus, task.state = node, gpus, "running"
                self.pending.remove(task)
                placed.append(task)
                break
        return placed

    def _start(self, tasks: List[Task]) -> None:
        for task in tasks:
            task.thread = threading.Thread(target=self._run, args=(task,), daemon=True,
                                           name=f"fake-ray-task-{task.number}")
            task.thread.start()

    def _run(self, task: Task) -> None:
        """One task in its "worker" (this thread)."""
        # A worker runs its task with no signal blocked; the processes the task
        # starts (the keeper, the job) get this thread's signal mask.
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        self.local.task = task
        error: Optional[BaseException] = None
        thrown = False
        try:
            if not task.streaming:
                task.result = task.function(*task.args)
                raise StopIteration
            stream = task.function(*task.args)
            while True:
                if task.cancel_requested and not thrown:
                    thrown = True
                    item = stream.throw(KeyboardInterrupt())
                else:
                    item = next(stream)
                self._yielded(task, item)
        except StopIteration:
            pass
        except BaseException as exc:  # the task's error: its stream raises it
            error = exc
        if task.cancel_requested:
            error = TaskCancelledError("the task was cancelled")
        elif error is not None:
            error = RayTaskError(error)
        with self.changed:
            task.state = "done"
            task.finished = True
            if task.error is None:  # a dead node's error stays
                task.error = error
            assert task.node is not None
            task.node.book(task.gpus, task.num_gpus, -1)
            placed = self._place()
            self.changed.notify_all()
        self._start(placed)

    def _yielded(self, task: Task, item: Any) -> None:
        value = pickle.loads(pickle.dumps(item))
        started = isinstance(value, tuple) and len(value) == 5 and value[0] == "started"
        orphan = 0
        with self.changed:
            if started:
                task.keeper = int(value[3])
            if task.died:
                orphan = task.keeper if started else 0  # it started as its node died
            elif not task.cancel_requested:  # a cancelled task's items are dropped
                task.items.append(value)
            self.changed.notify_all()
        if orphan:
            _terminate(orphan)

    # --- the modules -----------------------------------------------------------------------

    def _make_modules(self) -> types.ModuleType:
        ray = types.ModuleType("ray")
        ray.__dict__.update(
            init=self.init, shutdown=self.shutdown, nodes=self.ray_nodes, put=self.put,
            get=self.get, wait=self.wait, cancel=self.cancel, remote=self.remote,
            kill=self.kill,
            get_runtime_context=lambda: RuntimeContext(self), ObjectRef=ObjectRef)
        private = types.ModuleType("ray._private")
        worker = types.ModuleType("ray._private.worker")
        worker.__dict__["print_to_stdstream"] = _print_to_stdstream
        private.__dict__["worker"] = worker
        cloudpickle = types.ModuleType("ray.cloudpickle")
        cloudpickle.__dict__["register_pickle_by_value"] = self.pickled_by_value.append
        util = types.ModuleType("ray.util")
        strategies = types.ModuleType("ray.util.scheduling_strategies")
        strategies.__dict__["NodeAffinitySchedulingStrategy"] = NodeAffinitySchedulingStrategy
        util.__dict__["scheduling_strategies"] = strategies
        exceptions = types.ModuleType("ray.exceptions")
        for cls in (RayError, TaskCancelledError, NodeDiedError, WorkerCrashedError,
                    RayActorError, OwnerDiedError):
            exceptions.__dict__[cls.__name__] = cls
        ray.__dict__.update(_private=private, cloudpickle=cloudpickle, util=util,
                            exceptions=exceptions)
        return ray

    def submodules(self) -> Dict[str, types.ModuleType]:
        ray = self.module
        private, util = ray.__dict__["_private"], ray.__dict__["util"]
        return {"ray": ray, "ray._private": private,
                "ray._private.worker": private.__dict__["worker"],
                "ray.cloudpickle": ray.__dict__["cloudpickle"], "ray.util": util,
                "ray.util.scheduling_strategies": util.__dict__["scheduling_strategies"],
                "ray.exceptions": ray.__dict__["exceptions"]}


#: Every actor handle made, by id, for unpickling (`ActorHandle.__reduce__`).
_HANDLES: Dict[int, ActorHandle] = {}


def _handle(key: int) -> ActorHandle:
    return _HANDLES[key]


def _ready(ref: Any) -> bool:
    """Whether ``ray.wait`` counts `ref` ready: a stream with its next item (or
    end) there, a plain task that ended, a value."""
    return ref.task.ready() if isinstance(ref, Stream) else ref.ready()


def _terminate(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        pass  # gone already


def install(monkeypatch: pytest.MonkeyPatch, nodes: Sequence[Node]) -> FakeRay:
    """A fake cluster of `nodes`, importable as ``ray`` until the test ends."""
    fake = FakeRay(nodes)
    for name, module in fake.submodules().items():
        monkeypatch.setitem(sys.modules, name, module)
    # Set and then removed: monkeypatch undoes both, so what `connect` sets
    # in os.environ (setdefault) goes at the end of the test. And the task
    # threads share os.environ: a CUDA_VISIBLE_DEVICES there would be taken
    # by `run_job` for the one Ray set for its task.
    for name in ("CUDA_VISIBLE_DEVICES", "RAY_ENABLE_AUTO_CONNECT", "RAY_USAGE_STATS_ENABLED",
                 "RAY_ADDRESS"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return fake
