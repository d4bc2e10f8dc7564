"""The SIGUSR1 status table, derived from a snapshot of the run's state."""

from __future__ import annotations

from simple_gpu_scheduler.engine.state import RunState
from simple_gpu_scheduler.model.jobs import Exited, Job
from simple_gpu_scheduler.report.status import status_table

# --- status_table ----------------------------------------------------------------------


def new_state(started_at: float) -> RunState:
    state = RunState()
    state.started_at = started_at
    return state


def make_state() -> RunState:
    state = new_state(100.0)
    state.job_started(Job(3, b"python train.py --lr 0.1"), ("0",), when=120.0)
    state.job_started(Job(4, b"x" * 300), ("1", "2"), when=149.0)
    state.record(Job(1, b"true"), Exited(0))
    state.record(Job(2, b"false"), Exited(1))
    for job in (Job(5, b"a"), Job(6, b"b")):
        state.add(job)
    return state


def test_status_table_lists_running_jobs_and_counts() -> None:
    lines = status_table(make_state().snapshot(now=150.0))
    assert lines[0] == "status after 50s: 2 running, 1 succeeded, 1 failed, 2 queued"
    assert lines[1].split() == ["JOB", "GPU", "TIME", "COMMAND"]
    row3 = lines[2].split(None, 4)
    assert row3 == ["3", "gpu", "0", "30s", "python train.py --lr 0.1"]
    row4 = lines[3].split(None, 4)
    assert row4[:4] == ["4", "gpu", "1,2", "1.0s"]
    assert len(lines) == 4


def test_status_table_cuts_long_commands_to_the_width() -> None:
    lines = status_table(make_state().snapshot(now=150.0), width=80)
    assert all(len(line) <= 80 for line in lines[1:]), lines
    assert "..." in lines[3] and lines[3].endswith("x")  # cut in the middle


def test_status_table_when_idle_and_input_ended() -> None:
    state = new_state(0.0)
    state.input_open = False
    lines = status_table(state.snapshot(now=5.0))
    assert lines == ["status after 5.0s: 0 running, 0 succeeded, 0 failed, 0 queued, input ended"]


def test_snapshot_is_ordered_by_job_id() -> None:
    snap = make_state().snapshot(now=150.0)
    assert [r.job_id for r in snap.running] == [3, 4]
    snap = snap.replace(running=snap.running[::-1])
    assert [line.split()[0] for line in status_table(snap)[2:]] == ["4", "3"]


def test_status_table_shows_names_in_a_column_of_their_own() -> None:
    state = new_state(100.0)
    state.job_started(Job(3, b"python train.py --lr 0.1", name="lr=0.1"), ("0",), when=120.0)
    state.job_started(Job(4, b"python eval.py"), ("1",), when=120.0)
    state.job_started(Job(5, b"true", name="n" * 100 + "\n"), ("2",), when=120.0)
    lines = status_table(state.snapshot(now=150.0), width=100)
    assert lines[1].split() == ["JOB", "GPU", "TIME", "NAME", "COMMAND"]
    assert lines[2].split(None, 5) == ["3", "gpu", "0", "30s", "lr=0.1", "python train.py --lr 0.1"]
    assert lines[3].split(None, 4) == ["4", "gpu", "1", "30s", "python eval.py"]
    name = lines[4].split()[4]
    assert len(name) == 32 and "..." in name and name.endswith("\\x0a"), name
    assert lines[3].index("python") == lines[2].index("python")  # the column lines up
    assert all(len(line) <= 100 for line in lines)


def test_snapshot_with_a_total_counts_what_is_not_read_yet_as_queued() -> None:
    state = new_state(0.0)
    state.total = 10
    state.read = 3
    state.job_started(Job(1, b"a"), ("0",), when=0.0)
    state.add(Job(3, b"c"))
    snap = state.snapshot(now=1.0)
    assert (snap.queued, snap.total) == (1 + 7, 10)
    state.input_open = False  # ended (or drained): nothing more is coming
    assert state.snapshot(now=1.0).queued == 1
