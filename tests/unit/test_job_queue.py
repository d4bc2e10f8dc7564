"""The queue of waiting jobs (`engine.queue`): start order by priority, then
queue order; front, back, before and removal, checked against a plain list
model by hypothesis. (That a change costs the same with 100,000 queued is
measured in benchmarks/, W7: tests assert behaviour, not timings.)"""

from __future__ import annotations

from typing import List, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simple_gpu_scheduler.engine.queue import JobQueue
from simple_gpu_scheduler.engine.state import JobRecord
from simple_gpu_scheduler.model.jobs import Job


def record(job_id: int, priority: int = 0) -> JobRecord:
    return JobRecord(Job(job_id, b"true", priority=priority))


def ids(queue: JobQueue) -> List[int]:
    return [r.job.id for r in queue]


def test_priority_first_then_queue_order_and_front_goes_first_of_its_priority() -> None:
    queue = JobQueue()
    records = {i: record(i, p) for i, p in [(1, 0), (2, 5), (3, 0), (4, -1), (5, 5)]}
    for r in records.values():
        queue.push(r)
    assert ids(queue) == [4, 1, 3, 2, 5]
    late = record(6, 5)
    queue.push(late, front=True)
    assert ids(queue) == [4, 1, 3, 6, 2, 5]
    queue.remove(records[4])
    assert ids(queue) == [1, 3, 6, 2, 5] and len(queue) == 5
    queue.remove(records[1])
    queue.insert_before(records[1], records[2])  # takes job 2's priority
    assert ids(queue) == [3, 6, 1, 2, 5] and records[1].job.priority == 5
    assert queue.first() is records[3]


def test_removing_while_iterating_at_the_record_yielded_is_safe() -> None:
    queue = JobQueue()
    for i in range(1, 6):
        queue.push(record(i))
    seen = []
    for r in queue:
        seen.append(r.job.id)
        if r.job.id % 2:
            queue.remove(r)
    assert seen == [1, 2, 3, 4, 5] and ids(queue) == [2, 4]


operations = st.lists(st.tuples(
    st.sampled_from(["push", "front", "remove", "before", "back"]),
    st.integers(0, 30), st.integers(-2, 2), st.integers(0, 30)), max_size=80)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_the_queue_agrees_with_a_sorted_list_model(ops: List[Tuple[str, int, int, int]]) -> None:
    queue = JobQueue()
    made = {}
    #: the model: (priority, position) per queued id; positions are floats
    model = {}
    counter = [0.0]

    def position(front: bool, priority: int) -> float:
        same = [pos for (p, pos) in model.values() if p == priority]
        counter[0] += 1
        if front:
            return (min(same) if same else 0.0) - 1.0
        return (max(same) if same else 0.0) + 1.0

    for op, a, priority, b in ops:
        if op in ("push", "front"):
            if a in made and made[a] in queue:
                continue
            made[a] = record(a, priority)
            queue.push(made[a], front=op == "front")
            model[a] = (priority, position(op == "front", priority))
        elif a in model:
            r = made[a]
            if op == "remove":
                queue.remove(r)
                del model[a]
            elif op == "back":
                queue.remove(r)
                queue.push(r)
                del model[a]
                model[a] = (r.job.priority, position(False, r.job.priority))
            elif op == "before" and b in model and b != a:
                queue.remove(r)
                del model[a]
                other_p, other_pos = model[b]
                before = [pos for (p, pos) in model.values() if p == other_p and pos < other_pos]
                low = max(before) if before else other_pos - 1.0
                queue.insert_before(r, made[b])
                model[a] = (other_p, (low + other_pos) / 2)
        expected = [i for i, _ in sorted(model.items(), key=lambda kv: kv[1])]
        assert ids(queue) == expected
        assert len(queue) == len(model)



def test_finished_rows_are_bounded_by_count_and_by_command_bytes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from simple_gpu_scheduler.engine import state as state_module
    from simple_gpu_scheduler.engine.state import RunState
    from simple_gpu_scheduler.model.jobs import Exited

    monkeypatch.setattr(state_module, "FINISHED_KEPT", 5)
    monkeypatch.setattr(state_module, "FINISHED_BYTES", 1000)
    run = RunState()
    for i in range(1, 9):
        run.record(run.add(Job(i, b"x")).job, Exited(0))
    assert [r.id for r in run.finished] == [4, 5, 6, 7, 8] and run.forgotten == 3
    assert sorted(run.finished_by_id) == [4, 5, 6, 7, 8]
    # 997 bytes: with rows 5-8 that is 1001, over the budget: row 5 goes too.
    run.record(run.add(Job(9, b"y" * 997)).job, Exited(0))
    assert [r.id for r in run.finished] == [6, 7, 8, 9] and run.forgotten == 5
    assert run.finished_by_id[9].command == b"y" * 997 and 5 not in run.finished_by_id
