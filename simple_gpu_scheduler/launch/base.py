"""What the engine asks of a launcher, and what a launcher may ask of the engine.

A launcher starts a job on given GPUs and says when and how it ended. The
interface knows nothing of pids or process groups, so the same engine drives
a local process group (`launch.local`) and, later, a task on another machine:

- ``start(job, gpus) -> Execution`` starts the job, or raises `LaunchError`
  with a one-line reason;
- ``execution.terminate()`` / ``execution.kill()`` end the job's whole tree
  (the engine's stop ladder decides when);
- ``execution.host`` names where it runs;
- the launcher tells the engine, on the engine's thread, through the
  `LauncherEvents` it was attached to: ``ended(execution, outcome, lingering)``
  when the job's main process is gone (`lingering`: it left processes behind),
  then ``cleared(execution)`` once nothing of it is left, so its GPUs can go to
  the next job.

A cluster's launcher (`launch.ray`) hands a job to the cluster, which picks
the node and its GPUs: its execution starts with ``placed = False`` and the
launcher calls ``placed(execution)`` once a node runs the job, with
``execution.gpus`` and ``execution.host`` set; its ``refuses(job)`` says why
a job can never run on any node (the engine's pool counts only the
cluster's GPU slots). A local execution is placed from the start.

The engine offers a launcher its `Reactor`: file descriptors to watch, timers,
and a thread-safe way to run code on the engine's thread.
"""

from __future__ import annotations

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Callable, Protocol, Tuple

    from ..model.jobs import Job, Outcome

    class Cancellable(Protocol):
        def cancel(self) -> None: ...

    class Reactor(Protocol):
        """The engine's loop, as its collaborators see it."""

        def add_reader(self, fd: int, callback: Callable[[], None]) -> None: ...

        def remove_reader(self, fd: int) -> None: ...

        def add_writer(self, fd: int, callback: Callable[[], None]) -> None: ...

        def remove_writer(self, fd: int) -> None: ...

        def call_at(self, deadline: float, callback: Callable[[], None]) -> Cancellable: ...

        def call_soon_threadsafe(self, callback: Callable[[], None]) -> None: ...

        def time(self) -> float: ...

    class Execution(Protocol):
        """One running attempt of a job."""

        job: Job
        gpus: Tuple[str, ...]
        #: where it runs, for messages and the job log's Host column
        host: str
        #: when it started: monotonic (durations) and wall clock (the job log)
        started: float
        started_wall: float
        #: whether it runs on its GPUs already (False: a cluster's node will
        #: say so, through `LauncherEvents.placed`)
        placed: bool

        def terminate(self) -> None: ...

        def kill(self) -> None: ...

    class LauncherEvents(Protocol):
        def ended(self, execution: Execution, outcome: Outcome, lingering: bool) -> None: ...

        def cleared(self, execution: Execution) -> None: ...

        def placed(self, execution: Execution) -> None: ...

    class Launcher(Protocol):
        def attach(self, reactor: Reactor, events: LauncherEvents) -> None: ...

        def start(self, job: Job, gpus: Tuple[str, ...]) -> Execution: ...

        def finish(self) -> None:
            """The run is over: let job output that is still on its way arrive."""

        def close(self) -> None:
            """Last resort at exit: kill whatever of our jobs is still there."""


from ..errors import LaunchError  # noqa: E402  (part of the protocol; defined low)

__all__ = ["LaunchError"]
