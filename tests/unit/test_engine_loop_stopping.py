"""The engine's `Loop` stopping jobs: --halt-on-failure, --timeout, the stop
ladder of signals, lingering leftovers and the give-up path, with the scripted
launcher of loop_fakes.py. Signals are posted to the loop (`Loop._signal` on its
thread) except in the one test that sends a real one to this process."""

from __future__ import annotations

import math
import os
import signal
from typing import Dict, Iterator, List, cast

import pytest
from loop_fakes import FakeExecution, Plan, Run, handlers_now, lines, run_loop

from simple_gpu_scheduler.engine import stopping
from simple_gpu_scheduler.engine.config import Settings
from simple_gpu_scheduler.engine.loop import Loop
from simple_gpu_scheduler.model import events as ev
from simple_gpu_scheduler.model.jobs import Exited, Killed, TimedOut

#: Timer slack: how late a fake's timer or the loop's poll may fire.
SLACK = 0.05


@pytest.fixture(autouse=True)
def handlers_restored() -> Iterator[None]:
    before = handlers_now()
    yield
    assert handlers_now() == before


def commands(n: int) -> bytes:
    return lines([f"job {i}" for i in range(1, n + 1)])


def stopping_events(run: Run) -> List[ev.Stopping]:
    return [e for e in run.events if isinstance(e, ev.Stopping)]


def outcome_of(run: Run, job_id: int) -> object:
    (last,) = [e for e in run.recorder.ended() if e.job.id == job_id and not e.retry]
    return last.outcome


def assert_counts_add_up(run: Run) -> None:
    snap = run.recorder.run_ended().snapshot
    assert snap.running == () and snap.queued == 0
    assert snap.succeeded + snap.failed + snap.not_started + snap.skipped == run.source.count
    assert run.launcher.violations == []
    assert all(run.loop.pool.running_on(g) == 0 for g in run.loop.pool.ids)


# --- --halt-on-failure ----------------------------------------------------------------


def halting_jobs() -> Dict[int, List[Plan]]:
    return {1: [Plan(0.003, Exited(1))], 2: [Plan(0.04)]}


def test_halt_soon_drains_after_the_first_final_failure() -> None:
    run = run_loop(commands(5), halting_jobs(), gpus=("0", "1"),
                   settings=Settings(kill_grace=0.05, halt="soon"))
    (drain,) = stopping_events(run)
    assert (drain.level, drain.running, drain.queued) == (1, 1, 3)
    assert drain.why == "job 1 failed and --halt-on-failure is soon"
    assert run.recorder.not_started_ids() == [3, 4, 5]
    job2 = run.launcher.of(2)[0]
    assert job2.terminated == [] and outcome_of(run, 2) == Exited(0)
    assert run.status == 1
    end = run.recorder.run_ended()
    assert end.stopped and end.failed_ids == (1,)
    assert (end.snapshot.succeeded, end.snapshot.failed, end.snapshot.not_started) == (1, 1, 3)
    assert_counts_add_up(run)


def test_halt_soon_waits_for_the_last_retry() -> None:
    plans = {1: [Plan(0.002, Exited(1)), Plan(0.002, Exited(1))], 2: [Plan(0.002)]}
    run = run_loop(commands(3), plans, retries=1, settings=Settings(halt="soon"))
    assert [(i, a, r) for i, a, _, r in run.recorder.attempts_ended()] == [
        (1, 1, True), (1, 2, False)]
    assert run.recorder.not_started_ids() == [2, 3]
    assert run.status == 1


def test_halt_now_terminates_the_running_jobs() -> None:
    run = run_loop(commands(5), halting_jobs(), gpus=("0", "1"),
                   settings=Settings(kill_grace=0.05, halt="now"))
    assert [(s.level, s.running) for s in stopping_events(run)] == [(1, 1), (2, 1)]
    job1, job2 = run.launcher.of(1)[0], run.launcher.of(2)[0]
    assert len(job2.terminated) == 1
    assert job2.terminated[0] - job1.ended_at < SLACK  # type: ignore[operator]
    assert outcome_of(run, 2) == Killed(signal.SIGTERM)
    assert run.recorder.not_started_ids() == [3, 4, 5]
    assert run.status == 1
    assert_counts_add_up(run)


# --- --timeout --------------------------------------------------------------------------


def test_a_timeout_terminates_the_job_and_the_attempt_timed_out() -> None:
    plans = {1: [Plan(None)], 2: [Plan(0.002)]}
    run = run_loop(commands(2), plans, timeout=0.01)
    job1 = run.launcher.of(1)[0]
    (reached,) = run.recorder.of(ev.TimeoutReached)
    assert reached.job.id == 1  # type: ignore[attr-defined]
    assert len(job1.terminated) == 1 and job1.killed == []
    assert 0.01 <= job1.terminated[0] - job1.started < 0.01 + SLACK
    assert outcome_of(run, 1) == TimedOut(0.01, signal.SIGTERM)
    assert outcome_of(run, 2) == Exited(0)
    # TimeoutReached comes before the attempt's end.
    kinds = [type(e) for e in run.events if getattr(e, "job", None) is job1.job]
    assert kinds == [ev.JobStarted, ev.TimeoutReached, ev.AttemptEnded, ev.JobDone]
    assert run.status == 1 and run.recorder.run_ended().failed_ids == (1,)
    assert_counts_add_up(run)


def test_a_timed_out_job_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    run = run_loop(commands(1), {1: [Plan(None, term="ignore")]}, timeout=0.005,
                   settings=Settings(kill_grace=0.02))
    job1 = run.launcher.of(1)[0]
    assert len(job1.terminated) == 1 and len(job1.killed) == 1
    assert 0.02 <= job1.killed[0] - job1.terminated[0] < 0.02 + SLACK
    assert outcome_of(run, 1) == TimedOut(0.005, signal.SIGKILL)
    assert run.status == 1


def test_a_job_that_ends_in_time_keeps_no_timeout() -> None:
    run = run_loop(commands(2), {1: [Plan(0.002)], 2: [Plan(0.002)]}, timeout=0.01)
    assert run.recorder.of(ev.TimeoutReached) == []
    assert all(e.terminated == [] for e in run.launcher.executions)
    assert run.status == 0


def test_a_timed_out_attempt_is_retried() -> None:
    run = run_loop(commands(1), {1: [Plan(None), Plan(0.001)]}, timeout=0.005, retries=1)
    assert [(i, a, o, r) for i, a, o, r in run.recorder.attempts_ended()] == [
        (1, 1, TimedOut(0.005, signal.SIGTERM), True), (1, 2, Exited(0), False)]
    assert run.status == 0


# --- the stop ladder --------------------------------------------------------------------


def test_drain_lists_every_queued_and_unread_command() -> None:
    plans = {1: [Plan(0.03)], 2: [Plan(0.03)]}
    run = run_loop(commands(12), plans, gpus=("0", "1"), signals=[(0.01, signal.SIGINT)])
    (drain,) = stopping_events(run)
    # 8 read ahead (2 running, 6 queued) and 4 still in the input source.
    assert (drain.level, drain.why, drain.running, drain.queued, drain.grace) == (
        1, "SIGINT received", 2, 10, 0.05)
    assert run.recorder.not_started_ids() == list(range(3, 13))
    assert all(e.terminated == [] for e in run.launcher.executions)
    assert outcome_of(run, 1) == outcome_of(run, 2) == Exited(0)
    assert run.status == 130
    end = run.recorder.run_ended()
    assert end.stopped
    assert (end.snapshot.succeeded, end.snapshot.not_started) == (2, 10)
    assert_counts_add_up(run)


def test_drain_lists_queued_jobs_in_dispatch_order() -> None:
    data = b"".join(b'{"cmd": "j%d", "priority": %d}\n' % (i, p)
                    for i, p in enumerate((0, 5, 1, 3), 1))
    run = run_loop(data, {1: [Plan(0.02)]}, jsonl=True, signals=[(0.005, signal.SIGTERM)])
    assert run.recorder.not_started_ids() == [3, 4, 2]
    assert run.status == 143


def test_second_signal_terminates_and_kills_what_ignores_sigterm() -> None:
    plans = {1: [Plan(None)], 2: [Plan(None, term="ignore")]}
    run = run_loop(commands(3), plans, gpus=("0", "1"), settings=Settings(kill_grace=0.03),
                   signals=[(0.005, signal.SIGINT), (0.01, signal.SIGTERM)])
    assert [(s.level, s.why, s.running, s.grace) for s in stopping_events(run)] == [
        (1, "SIGINT received", 2, 0.03), (2, "SIGTERM received again", 2, 0.03)]
    job1, job2 = run.launcher.of(1)[0], run.launcher.of(2)[0]
    assert len(job1.terminated) == 1 and job1.killed == []
    assert outcome_of(run, 1) == Killed(signal.SIGTERM)
    assert len(job2.terminated) == 1 and len(job2.killed) == 1
    assert 0.03 <= job2.killed[0] - job2.terminated[0] < 0.03 + SLACK
    assert outcome_of(run, 2) == Killed(signal.SIGKILL)
    assert run.recorder.not_started_ids() == [3]
    assert run.status == 130  # the first signal names the status
    assert_counts_add_up(run)


def test_third_signal_kills_at_once() -> None:
    plans = {1: [Plan(None, term="ignore")], 2: [Plan(None, term="ignore")]}
    run = run_loop(commands(2), plans, gpus=("0", "1"), settings=Settings(kill_grace=10.0),
                   signals=[(0.003, signal.SIGINT), (0.006, signal.SIGINT),
                            (0.009, signal.SIGINT)])
    assert [s.level for s in stopping_events(run)] == [1, 2, 3]
    assert stopping_events(run)[2].why == "SIGINT received again"
    for execution in run.launcher.executions:
        assert len(execution.killed) == 1
        assert execution.killed[0] - run.began < 0.009 + SLACK  # not after the 10 s grace
    assert outcome_of(run, 1) == outcome_of(run, 2) == Killed(signal.SIGKILL)
    assert run.status == 130


def test_a_hang_up_only_drains() -> None:
    plans = {1: [Plan(0.02)]}
    run = run_loop(commands(2), plans, signals=[(0.003, signal.SIGHUP), (0.006, signal.SIGHUP)])
    assert [s.level for s in stopping_events(run)] == [1]
    assert run.launcher.of(1)[0].terminated == []
    assert run.status == 129


def test_sigterm_after_a_hang_up_climbs_the_ladder() -> None:
    plans = {1: [Plan(None)]}
    run = run_loop(commands(1), plans, signals=[(0.003, signal.SIGHUP), (0.006, signal.SIGTERM)])
    assert [(s.level, s.why) for s in stopping_events(run)] == [
        (1, "SIGHUP received"), (2, "SIGTERM received again")]
    assert outcome_of(run, 1) == Killed(signal.SIGTERM)
    assert run.status == 129


def test_a_real_signal_reaches_the_loop_through_its_handler() -> None:
    caught: List[int] = []

    def ours(signum: int, frame: object) -> None:
        caught.append(signum)

    previous = signal.signal(signal.SIGINT, ours)
    try:
        def send(execution: FakeExecution) -> None:
            reactor = execution.launcher.reactor
            reactor.call_at(reactor.time() + 0.003, lambda: os.kill(os.getpid(), signal.SIGINT))

        run = run_loop(commands(3), {1: [Plan(0.02)]}, on_start={1: send})
        assert signal.getsignal(signal.SIGINT) is ours  # restored after the run
    finally:
        signal.signal(signal.SIGINT, previous)
    assert caught == []
    assert [s.level for s in stopping_events(run)] == [1]
    assert run.recorder.not_started_ids() == [2, 3]
    assert run.status == 130


# --- lingering leftovers ----------------------------------------------------------------


def test_a_lingering_job_keeps_its_gpu_until_cleared_and_is_terminated_at_once() -> None:
    plans = {1: [Plan(0.003, linger=0.03, term="ignore")], 2: [Plan(0.002)]}
    run = run_loop(commands(2), plans)
    job1, job2 = run.launcher.of(1)[0], run.launcher.of(2)[0]
    assert job1.ended_at is not None and job1.cleared_at is not None
    assert job1.cleared_at - job1.ended_at >= 0.03
    (lingering,) = run.recorder.of(ev.Lingering)
    assert lingering.job.id == 1  # type: ignore[attr-defined]
    assert len(job1.terminated) == 1 and job1.terminated[0] - job1.ended_at < SLACK
    # The attempt ended when its main process did; its GPU went on only when cleared.
    (ended1,) = [e for e in run.recorder.ended() if e.job.id == 1]
    assert run.recorder.time_of(ended1) < job1.cleared_at
    assert ended1.outcome == Exited(0)
    assert job2.started >= job1.cleared_at and job2.gpus == ("0",)
    assert run.status == 0
    assert_counts_add_up(run)


def test_leftovers_that_die_on_sigterm_free_the_gpu_at_once() -> None:
    plans = {1: [Plan(0.002, linger=math.inf)], 2: [Plan(0.002)]}
    run = run_loop(commands(2), plans, settings=Settings(kill_grace=10.0))
    job1, job2 = run.launcher.of(1)[0], run.launcher.of(2)[0]
    assert job1.killed == [] and job1.cleared_at is not None
    assert job1.cleared_at - job1.ended_at < SLACK  # type: ignore[operator]
    assert job2.started >= job1.cleared_at
    assert run.status == 0


def test_leftovers_that_ignore_sigterm_are_killed_after_the_grace() -> None:
    plans = {1: [Plan(0.002, linger=math.inf, term="ignore")], 2: [Plan(0.002)]}
    run = run_loop(commands(2), plans, settings=Settings(kill_grace=0.02))
    job1, job2 = run.launcher.of(1)[0], run.launcher.of(2)[0]
    assert len(job1.killed) == 1
    assert 0.02 <= job1.killed[0] - job1.terminated[0] < 0.02 + SLACK
    assert job2.started >= job1.cleared_at  # type: ignore[operator]
    assert run.status == 0


def test_the_kill_level_also_kills_lingering_leftovers() -> None:
    plans = {1: [Plan(0.002, linger=math.inf, term="ignore")]}
    run = run_loop(commands(1), plans, settings=Settings(kill_grace=10.0),
                   signals=[(0.005, signal.SIGINT), (0.007, signal.SIGINT),
                            (0.009, signal.SIGINT)])
    job1 = run.launcher.of(1)[0]
    assert len(job1.terminated) == 1 and len(job1.killed) == 1
    assert job1.killed[0] - run.began < 0.009 + SLACK
    assert outcome_of(run, 1) == Exited(0)
    assert run.status == 130


# --- giving up after SIGKILL ------------------------------------------------------------


@pytest.fixture
def quick_give_up(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(stopping, "GIVE_UP", 0.02)
    return 0.02


def test_a_job_that_survives_sigkill_is_given_up_and_its_gpu_freed(quick_give_up: float
                                                                     ) -> None:
    plans = {1: [Plan(None, term="ignore", kill="never")], 2: [Plan(0.002)]}
    run = run_loop(commands(2), plans, gpus=("0", "1"), settings=Settings(kill_grace=0.01),
                   signals=[(0.003, signal.SIGINT), (0.005, signal.SIGINT)])
    job1 = run.launcher.of(1)[0]
    (gave_up,) = run.recorder.of(ev.GaveUp)
    assert (gave_up.job.id, gave_up.gpus, gave_up.where) == (  # type: ignore[attr-defined]
        1, ("0",), job1.host)
    assert len(job1.killed) == 1
    assert run.recorder.time_of(gave_up) - job1.killed[0] >= quick_give_up
    # Its main process never ended: the attempt ends here, killed, once.
    assert [(i, o) for i, _, o, _ in run.recorder.attempts_ended() if i == 1] == [
        (1, Killed(signal.SIGKILL))]
    assert job1.cleared_at is None and run.launcher.closed == 1
    assert run.status == 130
    assert_counts_add_up(run)


def test_lingering_leftovers_that_survive_sigkill_are_given_up(quick_give_up: float) -> None:
    plans = {1: [Plan(0.002, linger=math.inf, term="ignore", kill="never")],
             2: [Plan(0.002)]}
    run = run_loop(commands(2), plans, settings=Settings(kill_grace=0.01))
    job1, job2 = run.launcher.of(1)[0], run.launcher.of(2)[0]
    (gave_up,) = run.recorder.of(ev.GaveUp)
    assert len(job1.killed) == 1 and job1.cleared_at is None
    # One AttemptEnded, when the main process ended; none at the give-up.
    assert [(i, o) for i, _, o, _ in run.recorder.attempts_ended()] == [
        (1, Exited(0)), (2, Exited(0))]
    assert job2.gpus == ("0",) and job2.started >= run.recorder.time_of(gave_up)
    assert run.status == 0
    assert_counts_add_up(run)


def test_a_timed_out_job_that_survives_sigkill_frees_its_gpu(quick_give_up: float) -> None:
    plans = {1: [Plan(None, term="ignore", kill="never")], 2: [Plan(0.001)]}
    run = run_loop(commands(2), plans, timeout=0.005, settings=Settings(kill_grace=0.01))
    (gave_up,) = run.recorder.of(ev.GaveUp)
    job2 = run.launcher.of(2)[0]
    assert job2.started >= run.recorder.time_of(gave_up)
    assert run.status == 1 and run.recorder.run_ended().failed_ids == (1,)
    assert_counts_add_up(run)


def test_a_timed_out_job_given_up_on_still_timed_out(quick_give_up: float) -> None:
    plans = {1: [Plan(None, term="ignore", kill="never")]}
    run = run_loop(commands(1), plans, timeout=0.005, settings=Settings(kill_grace=0.01))
    assert outcome_of(run, 1) == TimedOut(0.005, signal.SIGKILL)


# --- a stop while a failed attempt lingers before its retry ----------------------------


def final_ids(run: Run) -> List[int]:
    """The jobs that ended for good, by the events: a last attempt, or not started."""
    ids = [i for i, _, _, retry in run.recorder.attempts_ended() if not retry]
    return sorted(ids + run.recorder.not_started_ids())


def drain_now(execution: FakeExecution) -> None:
    """On the loop's thread, right after `cleared`: a Ctrl-C in the same turn."""
    loop = cast(Loop, execution.launcher.events)
    loop._signal(signal.SIGINT)


def test_a_drain_right_after_a_retry_was_queued_lists_it_as_not_started() -> None:
    plans = {1: [Plan(0.002, Exited(1)), Plan(0.002)]}
    run = run_loop(commands(2), plans, retries=1, on_clear={1: drain_now})
    assert [(i, a, r) for i, a, _, r in run.recorder.attempts_ended()] == [(1, 1, True)]
    assert run.recorder.not_started_ids() == [1, 2]
    assert final_ids(run) == [1, 2]
    snap = run.recorder.run_ended().snapshot
    assert (snap.failed, snap.not_started) == (0, 2)
    assert run.status == 130
    assert_counts_add_up(run)


def test_a_drain_while_a_failed_attempt_lingers_before_its_retry() -> None:
    plans = {1: [Plan(0.002, Exited(1), linger=0.02, term="ignore"), Plan(0.002)]}
    run = run_loop(commands(1), plans, retries=1, signals=[(0.008, signal.SIGINT)])
    assert [(i, a, r) for i, a, _, r in run.recorder.attempts_ended()] == [(1, 1, True)]
    assert run.status == 130
    assert_counts_add_up(run)
    # Every command read ends for good exactly once, as the events tell it.
    assert final_ids(run) == [1]


# --- a lost GPU that makes queued jobs impossible, with --halt-on-failure --------------


class _GateThatLooksAtNothing:
    """The GPU gate's part the loop calls, with no hardware: locks always ours."""

    def due(self) -> bool:
        return False

    def lock(self, pool: object, gpus: object) -> None:
        return None

    def next_check(self) -> float:
        return 1e18

    def job_ended(self, pool: object) -> None:
        pass

    def unlock_unused(self, pool: object, gpus: object) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_lost_gpu_with_halt_counts_each_queued_job_once() -> None:
    from loop_fakes import FakeLauncher, Recorder, pipe_with

    from simple_gpu_scheduler.input.reader import InputSource, job_factory
    from simple_gpu_scheduler.placement.pool import GpuPool

    launcher = FakeLauncher({1: [Plan(0.2)]})
    recorder = Recorder(launcher)
    source = InputSource(pipe_with(b"a\nb\nc\n"), job_factory(False, gpus=2))
    pool = GpuPool(["0", "1"], 1)
    loop = Loop(Settings(kill_grace=0.05, halt="soon"), launcher, source, pool, recorder,
                 gate=_GateThatLooksAtNothing())  # type: ignore[arg-type]
    recorder.loop = loop
    launcher.on_start[1] = lambda execution: loop.call_at(
        loop.time() + 0.05, lambda: pool.mark_lost("1", "fell off the bus"))
    status = loop.run()
    assert status == 1
    assert loop.state.queued == 0
    # Job 2 fails (impossible now), the halt drains, job 3 is not started: once each.
    assert loop.state.failed_ids == [2] and loop.state.not_started_ids == [3]
