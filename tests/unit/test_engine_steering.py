"""What control requests do to a real engine `Loop` (`engine.steering`), with
the scripted launcher of loop_fakes: add, cancel, kill, move, pause, drain,
GPUs removed and added; each request all or nothing; and a hypothesis
property over random request histories: every job is started at most once
per attempt, no GPU is over capacity, and every job ends exactly once."""

from __future__ import annotations

from typing import Callable, Iterator, List, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loop_fakes import Plan, handlers_now, lines, run_loop

from simple_gpu_scheduler.engine.loop import Loop
from simple_gpu_scheduler.engine.steering import Refused, Steering
from simple_gpu_scheduler.model import events as ev
from simple_gpu_scheduler.model.jobs import Job, Killed, NotStarted


@pytest.fixture(autouse=True)
def handlers_restored() -> Iterator[None]:
    before = handlers_now()
    yield
    assert handlers_now() == before


def at(loop: Loop, delay: float, action: Callable[[], None]) -> None:
    """Run `action` on the loop's thread `delay` seconds from now, as a request would."""
    loop.call_at(loop.clock() + delay, action)


def job(command: str = "added", **fields: object) -> Job:
    return Job(0, command.encode(), **fields)  # type: ignore[arg-type]


def done_ids(run_events: List[ev.Event]) -> List[int]:
    return [e.job.id for e in run_events if isinstance(e, ev.JobDone)]


def test_added_jobs_get_ids_after_the_input_and_keep_a_serving_run_alive() -> None:
    added: List[int] = []

    def setup(loop: Loop) -> None:
        loop.serving = True
        steering = Steering(loop)
        at(loop, 0.02, lambda: added.extend(steering.add([job("a"), job("b")])))
        at(loop, 0.05, steering.drain)

    run = run_loop(lines(["one", "two"]), setup=setup)
    assert added == [3, 4]
    assert run.launcher.started_ids() == [1, 2, 3, 4]
    assert run.status == 0
    assert sorted(done_ids(run.events)) == [1, 2, 3, 4]


def test_front_jobs_start_first_and_move_reorders() -> None:
    def setup(loop: Loop) -> None:
        steering = Steering(loop)
        loop.paused = True

        def steer() -> None:
            steering.add([job("x"), job("y")], front=True)  # ids 4, 5: before 1-3
            steering.move(2, "front")
            steering.move(4, "before", 3)
            steering.move(1, "back")
            steering.pause(False)

        at(loop, 0.01, steer)

    run = run_loop(lines(["one", "two", "three"]), setup=setup)
    assert run.launcher.started_ids() == [2, 5, 4, 3, 1]


def test_cancel_and_kill_are_all_or_nothing() -> None:
    problems: List[str] = []

    def setup(loop: Loop) -> None:
        steering = Steering(loop)

        def steer() -> None:
            for request in (lambda: steering.cancel([3, 1]),   # 1 runs: refused
                            lambda: steering.kill([1, 3]),     # 3 is queued: refused
                            lambda: steering.cancel([99])):
                try:
                    request()
                except Refused as exc:
                    problems.append(str(exc))
            steering.cancel([3])
            steering.kill([1])

        at(loop, 0.01, steer)

    plans = {1: [Plan(duration=None)]}
    run = run_loop(lines(["one", "two", "three"]), plans, retries=3, setup=setup)
    assert len(problems) == 3
    assert "job 1 is not queued" in problems[0] and "job 3 is not running" in problems[1]
    assert "there is no job 99" in problems[2]
    assert run.launcher.started_ids() == [1, 2]  # 3 never, and 1 not again
    ended = {e.job.id: e.outcome for e in run.events if isinstance(e, ev.JobDone)}
    assert ended[3] == NotStarted("cancelled") and isinstance(ended[1], Killed)
    assert run.status == 1


def test_a_removed_gpu_takes_nothing_new_and_its_job_finishes() -> None:
    def setup(loop: Loop) -> None:
        steering = Steering(loop)
        at(loop, 0.005, lambda: steering.remove_gpus(["1"]))

    plans = {i: [Plan(duration=0.02)] for i in range(1, 7)}
    run = run_loop(lines([f"j{i}" for i in range(1, 7)]), plans, gpus=("0", "1"), setup=setup)
    on = [e.gpus for e in run.launcher.executions]
    assert on[:2] == [("0",), ("1",)]  # job 2 was on gpu 1 before the removal
    assert all(g == ("0",) for g in on[2:])
    assert run.status == 0


def test_adding_a_gpu_back_and_a_new_one() -> None:
    admitted: List[str] = []

    def admit(ids: object) -> None:
        admitted.extend(ids)  # type: ignore[call-overload]
        for gpu_id in ids:  # type: ignore[attr-defined]
            run_pool[0].add_gpu(gpu_id)

    run_pool: List[object] = []

    def setup(loop: Loop) -> None:
        run_pool.append(loop.pool)
        steering = Steering(loop, admit)
        steering.remove_gpus(["0"])
        at(loop, 0.01, lambda: steering.add_gpus(["7"]))

    plans = {i: [Plan(duration=0.01)] for i in range(1, 5)}
    run = run_loop(lines([f"j{i}" for i in range(1, 5)]), plans, gpus=("0",), setup=setup)
    assert admitted == ["7"]
    assert {e.gpus for e in run.launcher.executions} == {("7",)}


def test_an_impossible_added_job_is_refused_and_nothing_is_added() -> None:
    outcome: List[str] = []

    def setup(loop: Loop) -> None:
        steering = Steering(loop)

        def steer() -> None:
            try:
                steering.add([job("fine"), job("big", gpus=3)])
            except Refused as exc:
                outcome.append(str(exc))

        at(loop, 0.001, steer)

    run = run_loop(lines(["one"]), gpus=("0", "1"), setup=setup)
    assert "job 2 of 2 can never run here" in outcome[0]
    assert run.launcher.started_ids() == [1]


steps = st.lists(st.tuples(
    st.sampled_from(["add", "add_front", "cancel", "kill", "move", "pause", "unpause",
                     "remove", "restore"]),
    st.integers(1, 12), st.integers(1, 12)), min_size=1, max_size=25)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(steps, st.integers(0, 4))
def test_random_request_histories_keep_the_books(
        history: List[Tuple[str, int, int]], inputs: int) -> None:
    refused: List[str] = []

    def setup(loop: Loop) -> None:
        loop.serving = True
        steering = Steering(loop, lambda ids: None)

        def request(op: str, a: int, b: int) -> Callable[[], None]:
            def go() -> None:
                try:
                    if op == "add":
                        steering.add([job(f"a{a}")])
                    elif op == "add_front":
                        steering.add([job(f"f{a}", priority=b % 2)], front=True)
                    elif op == "cancel":
                        steering.cancel([a])
                    elif op == "kill":
                        steering.kill([a])
                    elif op == "move":
                        steering.move(a, "before", b)
                    elif op in ("pause", "unpause"):
                        steering.pause(op == "pause")
                    elif op == "remove":
                        steering.remove_gpus([str(a % 2)])
                    else:
                        steering.add_gpus([str(a % 2)])
                except Refused as exc:
                    refused.append(str(exc))
            return go

        for n, (op, a, b) in enumerate(history):
            at(loop, 0.002 * n, request(op, a, b))

        def finish() -> None:
            steering.pause(False)
            steering.add_gpus(["0", "1"])
            steering.drain()

        at(loop, 0.002 * len(history) + 0.01, finish)

    run = run_loop(lines([f"in{i}" for i in range(inputs)]),
                   {i: [Plan(duration=0.003)] for i in range(1, 40)},
                   gpus=("0", "1"), setup=setup)
    assert run.launcher.violations == []
    started = run.launcher.started_ids()
    assert len(started) == len(set(started))  # no retries here: one attempt each
    done = done_ids(run.events)
    assert len(done) == len(set(done)) == run.source.count  # each job ends once
    snap = run.recorder.run_ended().snapshot
    assert snap.running == () and snap.queued == 0
    assert snap.succeeded + snap.failed + snap.not_started == run.source.count
