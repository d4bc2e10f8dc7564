"""Unit tests of GpuPool, the slot book (pure logic), with a property test."""

from __future__ import annotations

from typing import Dict, List, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simple_gpu_scheduler.model.jobs import Job
from simple_gpu_scheduler.placement.pool import GpuPool


def job(gpus: int = 1, on: Tuple[str, ...] = None, id: int = 1) -> Job:  # type: ignore[assignment]
    return Job(id=id, command=b"true", gpus=gpus, on=on)


def test_one_job_per_gpu_by_default() -> None:
    pool = GpuPool(["0", "1"])
    assert pool.total_slots == 2
    first = pool.place(job())
    assert first == ("0",)
    pool.take(first)
    second = pool.place(job())
    assert second == ("1",)
    pool.take(second)
    assert pool.place(job()) is None


def test_place_does_not_book() -> None:
    pool = GpuPool(["0"])
    assert pool.place(job()) == ("0",)
    assert pool.place(job()) == ("0",)
    assert pool.running_on("0") == 0


def test_jobs_per_gpu_spreads_before_doubling_up() -> None:
    pool = GpuPool(["a", "b", "c"], jobs_per_gpu=2)
    got = []
    for _ in range(6):
        gpus = pool.place(job())
        assert gpus is not None
        pool.take(gpus)
        got.append(gpus[0])
    assert got == ["a", "b", "c", "a", "b", "c"]
    assert pool.place(job()) is None


def test_gpus_per_job_gets_distinct_gpus_in_gpus_order() -> None:
    pool = GpuPool(["2", "0", "1"])
    gpus = pool.place(job(gpus=2))
    assert gpus == ("2", "0")
    pool.take(gpus)
    assert pool.place(job(gpus=2)) is None
    assert pool.place(job(gpus=1)) == ("1",)


def test_release_frees_the_slot_again() -> None:
    pool = GpuPool(["0"])
    pool.take(("0",))
    assert pool.place(job()) is None
    pool.release(("0",))
    assert pool.place(job()) == ("0",)


def test_take_beyond_capacity_and_release_beyond_taken_raise() -> None:
    pool = GpuPool(["0"], jobs_per_gpu=1)
    pool.take(("0",))
    with pytest.raises(RuntimeError):
        pool.take(("0",))
    pool.release(("0",))
    with pytest.raises(RuntimeError):
        pool.release(("0",))


def test_ids_are_kept_verbatim() -> None:
    ids = ["GPU-5f3a9c1e-0000-1111-2222-333344445555", "MIG-GPU-5f3a/1/0", "0"]
    pool = GpuPool(ids)
    assert pool.ids == ids
    assert pool.place(job(gpus=3)) == tuple(ids)


def test_jobs_per_gpu_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        GpuPool(["0"], jobs_per_gpu=0)


def test_impossible_names_why() -> None:
    pool = GpuPool(["0", "1"])
    assert pool.impossible(job(gpus=2)) is None
    assert "3 GPUs" in (pool.impossible(job(gpus=3)) or "")
    assert "unknown GPU id 7" in (pool.impossible(job(on=("7",))) or "")
    assert pool.impossible(job(gpus=2, on=("0", "0"))) is not None


def test_on_restricts_the_candidates() -> None:
    pool = GpuPool(["0", "1", "2"])
    pool.take(("1",))
    assert pool.place(job(on=("1",))) is None
    assert pool.place(job(on=("1", "2"))) == ("2",)


# --- the invariant, for any sequence of operations -----------------------------


@st.composite
def scenarios(draw: st.DrawFn) -> Tuple[int, int, List[str], List[Tuple[str, int]]]:
    n_gpus = draw(st.integers(min_value=1, max_value=5))
    ids = [f"g{i}" for i in range(n_gpus)]
    jobs_per_gpu = draw(st.integers(min_value=1, max_value=3))
    ops = draw(st.lists(
        st.tuples(st.sampled_from(["start", "end"]), st.integers(min_value=0, max_value=99)),
        max_size=60))
    return jobs_per_gpu, n_gpus, ids, ops


@settings(max_examples=300, deadline=None)
@given(scenarios(), st.data())
def test_placement_never_exceeds_capacity(scenario: tuple, data: st.DataObject) -> None:
    jobs_per_gpu, n_gpus, ids, ops = scenario
    pool = GpuPool(ids, jobs_per_gpu)
    running: List[Tuple[str, ...]] = []
    for op, n in ops:
        if op == "start":
            wanted = data.draw(st.integers(min_value=1, max_value=n_gpus), label="gpus_per_job")
            gpus = pool.place(job(gpus=wanted))
            count: Dict[str, int] = {g: 0 for g in ids}
            for r in running:
                for g in r:
                    count[g] += 1
            free_gpus = [g for g in ids if count[g] < jobs_per_gpu]
            if gpus is None:
                # It waits only when it really could not fit.
                assert len(free_gpus) < wanted
                continue
            assert len(gpus) == wanted
            assert len(set(gpus)) == wanted, f"a job got one GPU twice: {gpus}"
            assert set(gpus) <= set(free_gpus)
            pool.take(gpus)
            running.append(gpus)
        elif running:
            pool.release(running.pop(n % len(running)))
        for g in ids:
            held = sum(g in r for r in running)
            assert pool.running_on(g) == held
            assert held <= jobs_per_gpu, f"GPU {g} holds {held} > {jobs_per_gpu} jobs"
