"""GpuPool: memory packing, per-job requirements, outside availability (pure)."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simple_gpu_scheduler.model.jobs import Job
from simple_gpu_scheduler.placement.pool import GpuPool

GiB = 2**30


def job(n: int = 1, gpus: int = 1, mem: Optional[int] = None,
        on: Optional[Tuple[str, ...]] = None) -> Job:
    return Job(id=n, command=b"true", gpus=gpus, mem=mem, on=on)


def test_plain_jobs_keep_the_old_behaviour() -> None:
    pool = GpuPool(["0", "1"])
    assert pool.place(job()) == ("0",)
    pool.take(["0"])
    assert pool.place(job()) == ("1",)
    pool.take(["1"])
    assert pool.place(job()) is None
    pool.release(["0"])
    assert pool.place(job()) == ("0",)


def test_without_jobs_per_gpu_memory_decides_and_others_go_alone() -> None:
    pool = GpuPool(["0"], jobs_per_gpu=None, memory={"0": 80 * GiB})
    small = [job(i, mem=20 * GiB) for i in range(5)]
    for j in small[:4]:
        assert pool.place(j) == ("0",)
        pool.take(["0"], j)
    assert pool.place(small[4]) is None  # 4 x 20 GiB fill 80 GiB
    assert pool.place(job(9)) is None  # a job without mem needs the GPU alone
    for j in small[:4]:
        pool.release(["0"], j)
    plain = job(9)
    pool.take(["0"], plain)
    assert pool.place(job(10, mem=GiB)) is None  # nothing joins a job that has it alone
    pool.release(["0"], plain)
    assert pool.place(job(10, mem=GiB)) == ("0",)


def test_jobs_per_gpu_still_caps_memory_packing() -> None:
    pool = GpuPool(["0"], jobs_per_gpu=2, memory={"0": 80 * GiB})
    for i in range(2):
        pool.take(["0"], job(i, mem=GiB))
    assert pool.place(job(3, mem=GiB)) is None


def test_jobs_without_mem_share_by_jobs_per_gpu() -> None:
    pool = GpuPool(["0"], jobs_per_gpu=2, memory={"0": 80 * GiB})
    pool.take(["0"], job(1))
    assert pool.place(job(2, mem=70 * GiB)) == ("0",)
    pool.take(["0"], job(2, mem=70 * GiB))
    assert pool.place(job(3)) is None


def test_unknown_memory_size_makes_mem_jobs_take_a_gpu_alone() -> None:
    pool = GpuPool(["0"], jobs_per_gpu=None)
    pool.take(["0"], job(1, mem=GiB))
    assert pool.place(job(2, mem=GiB)) is None
    assert pool.impossible(job(3, mem=10**15)) is None  # size unknown: not impossible


def test_hardware_free_memory_counts_for_new_jobs_but_reservations_stay() -> None:
    pool = GpuPool(["0"], jobs_per_gpu=None, memory={"0": 80 * GiB})
    pool.observe("0", total=80 * GiB, external=50 * GiB)  # someone else holds 50 GiB
    assert pool.place(job(1, mem=40 * GiB)) is None
    assert pool.place(job(1, mem=40 * GiB), ideal=True) == ("0",)  # would fit if they left
    assert pool.place(job(1, mem=30 * GiB)) == ("0",)
    pool.take(["0"], job(1, mem=30 * GiB))
    # Our job has not allocated anything yet: its 30 GiB stay booked all the same.
    pool.observe("0", total=80 * GiB, external=0)
    assert pool.place(job(2, mem=60 * GiB)) is None
    assert pool.place(job(2, mem=50 * GiB)) == ("0",)


def test_gpu_memory_option_below_the_real_size_caps_declarations() -> None:
    pool = GpuPool(["0"], jobs_per_gpu=None, memory={"0": 40 * GiB})
    pool.observe("0", total=80 * GiB, external=0)
    assert pool.place(job(1, mem=41 * GiB)) is None
    assert "40.0GiB" in (pool.impossible(job(1, mem=41 * GiB)) or "")


def test_impossible_jobs_are_named() -> None:
    pool = GpuPool(["0", "1"], jobs_per_gpu=None, memory={"0": 16 * GiB, "1": 24 * GiB})
    assert pool.impossible(job(gpus=3)) == "it needs 3 GPUs and only 2 can be used"
    assert "unknown GPU id 7" in (pool.impossible(job(on=("0", "7"))) or "")
    assert "24.0GiB" in (pool.impossible(job(mem=30 * GiB)) or "")
    assert "16.0GiB" in (pool.impossible(job(mem=20 * GiB, on=("0",))) or "")
    assert pool.impossible(job(mem=20 * GiB)) is None
    assert pool.impossible(job(gpus=2, mem=20 * GiB)) is not None  # GPU 0 is too small


def test_on_restricts_placement() -> None:
    pool = GpuPool(["0", "1", "2"])
    assert pool.place(job(on=("2",))) == ("2",)
    pool.take(["2"])
    assert pool.place(job(on=("2",))) is None
    assert pool.place(job(on=("1", "2"))) == ("1",)


def test_mig_instances_are_never_combined() -> None:
    pool = GpuPool(["0", "MIG-a", "MIG-b"], mig={"MIG-a", "MIG-b"})
    assert "MIG instances cannot be combined" in (pool.impossible(job(gpus=2)) or "")
    pool2 = GpuPool(["0", "1", "MIG-a"], mig={"MIG-a"})
    assert pool2.impossible(job(gpus=2)) is None
    assert pool2.place(job(gpus=2)) == ("0", "1")
    pool2.take(["0"])
    assert pool2.place(job(gpus=2)) is None  # not 1 + MIG-a
    assert pool2.place(job()) == ("1",)


def test_unavailable_and_lost_gpus() -> None:
    pool = GpuPool(["0", "1"])
    pool.set_available("0", "busy")
    assert pool.place(job()) == ("1",)
    assert pool.place(job(on=("0",))) is None
    assert pool.place(job(on=("0",)), ideal=True) == ("0",)
    pool.set_available("0", None)
    assert pool.place(job(on=("0",))) == ("0",)
    pool.mark_lost("1", "GPU is lost")
    assert pool.place(job(on=("1",)), ideal=True) is None
    assert pool.impossible(job(on=("1",))) == "it needs 1 GPUs and only 0 can be used (lost: 1)"
    assert pool.impossible(job(gpus=2)) is not None


def test_take_refuses_what_does_not_fit() -> None:
    pool = GpuPool(["0"], jobs_per_gpu=None, memory={"0": 10 * GiB})
    pool.take(["0"], job(1, mem=8 * GiB))
    with pytest.raises(RuntimeError):
        pool.take(["0"], job(2, mem=4 * GiB))
    with pytest.raises(RuntimeError):
        pool.release(["0"])  # no job without mem was taken
    pool.release(["0"], job(1, mem=8 * GiB))
    assert pool.gpu("0").reserved == 0 and pool.gpu("0").running == 0


# --- property: placement never exceeds capacity -------------------------------------

ids = ["0", "1", "2", "MIG-a"]

job_strategy = st.builds(
    lambda gpus, mem, on: (gpus, mem, on),
    st.integers(1, 3),
    st.one_of(st.none(), st.integers(1, 40).map(lambda g: g * GiB)),
    st.one_of(st.none(), st.lists(st.sampled_from(ids), min_size=1, max_size=3, unique=True)),
)

ops = st.lists(
    st.one_of(
        st.tuples(st.just("place"), job_strategy),
        st.tuples(st.just("end"), st.integers(0, 50)),
        st.tuples(st.just("observe"), st.sampled_from(ids), st.integers(0, 60)),
        st.tuples(st.just("busy"), st.sampled_from(ids), st.booleans()),
        st.tuples(st.just("lose"), st.sampled_from(ids)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(
    jobs_per_gpu=st.one_of(st.none(), st.integers(1, 3)),
    sizes=st.fixed_dictionaries({i: st.one_of(st.none(), st.integers(8, 80)) for i in ids}),
    operations=ops,
)
def test_placement_never_exceeds_capacity(
    jobs_per_gpu: Optional[int], sizes: Dict[str, Optional[int]], operations: List[tuple]
) -> None:
    memory = {i: s * GiB for i, s in sizes.items() if s is not None}
    pool = GpuPool(ids, jobs_per_gpu=jobs_per_gpu, memory=memory, mig={"MIG-a"})
    running: List[Tuple[Job, Tuple[str, ...]]] = []
    external: Dict[str, int] = {}
    unavailable: set = set()
    lost: set = set()
    for n, op in enumerate(operations):
        if op[0] == "place":
            gpus, mem, on = op[1]
            candidate = Job(id=n, command=b"x", gpus=gpus, mem=mem,
                            on=None if on is None else tuple(on))
            if pool.impossible(candidate):
                continue
            placed = pool.place(candidate)
            if placed is None:
                continue
            # What place() promised, checked against an independent model:
            assert len(placed) == gpus == len(set(placed))
            assert not (unavailable | lost) & set(placed)
            if on is not None:
                assert set(placed) <= set(on)
            if gpus > 1:
                assert "MIG-a" not in placed
            for gpu_id in placed:
                others = [j for j, g in running if gpu_id in g]
                size = memory.get(gpu_id)
                if mem is not None and size is not None:
                    booked = sum(j.mem for j in others if j.mem is not None)
                    assert booked + mem <= size
                    # observe() gave the pool `size` as the hardware's total too
                    assert booked + mem + external.get(gpu_id, 0) <= size
            pool.take(placed, candidate)
            running.append((candidate, placed))
        elif op[0] == "end" and running:
            done, gpus_done = running.pop(op[1] % len(running))
            pool.release(gpus_done, done)
        elif op[0] == "observe":
            external[op[1]] = op[2] * GiB
            pool.observe(op[1], memory.get(op[1]), op[2] * GiB)
        elif op[0] == "busy":
            (unavailable.add if op[2] else unavailable.discard)(op[1])
            pool.set_available(op[1], "busy" if op[2] else None)
        elif op[0] == "lose":
            lost.add(op[1])
            pool.mark_lost(op[1], "lost")

        # Invariants of the book after every step.
        for gpu_id in ids:
            here = [j for j, g in running if gpu_id in g]
            slots = pool.gpu(gpu_id)
            assert slots.running == len(here)
            if jobs_per_gpu is not None:
                assert len(here) <= jobs_per_gpu
            size = memory.get(gpu_id)
            if size is not None:
                assert sum(j.mem for j in here if j.mem is not None) <= size
            if jobs_per_gpu is None:
                alone = [j for j in here if j.mem is None or size is None]
                assert not alone or len(here) == 1
            if len(here) and any(j.gpus > 1 for j in here):
                assert gpu_id != "MIG-a"
