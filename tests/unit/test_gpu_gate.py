"""GpuGate: when it looks, what it tells the pool, and locks (scripted backend and clock)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Dict, List, Sequence

from simple_gpu_scheduler.gpus.busy import Limits, MemoryLimit
from simple_gpu_scheduler.gpus.gate import GpuGate
from simple_gpu_scheduler.gpus.locks import GpuLocks, open_lock_dir
from simple_gpu_scheduler.model.devices import Device, GpuProcess, Usage
from simple_gpu_scheduler.model.jobs import Job
from simple_gpu_scheduler.placement.pool import GpuPool
from simple_gpu_scheduler.report.console import Console

GiB = 2**30


class ScriptedBackend:
    source = "script"

    def __init__(self) -> None:
        self.usage: Dict[str, Usage] = {}
        self.asked = 0

    def sample(self, devices: Sequence[Device]) -> Dict[str, Usage]:
        self.asked += 1
        return {d.id: self.usage.get(d.id, Usage()) for d in devices}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def device(i: str) -> Device:
    return Device(id=i, index=i, uuid=f"GPU-{i}", name="fake", mem_total=80 * GiB)


def make(tmp_path: Path, limits: Limits, locks: bool = False):  # type: ignore[no-untyped-def]
    backend, clock = ScriptedBackend(), Clock()
    messages = open(tmp_path / "messages", "w+")
    gate = GpuGate(
        devices={i: device(i) for i in ("0", "1")}, backend=backend, limits=limits,
        locks=GpuLocks(open_lock_dir(str(tmp_path / "locks"))) if locks else None,
        lock_keys={}, poll=10.0, clock=clock,
        say=lambda text, level=0: Console(fd=messages.fileno()).line(text),
    )
    pool = GpuPool(["0", "1"], jobs_per_gpu=None, memory={"0": 80 * GiB, "1": 80 * GiB})
    return gate, pool, backend, clock, messages


def said(messages) -> List[str]:  # type: ignore[no-untyped-def]
    messages.seek(0)
    return messages.read().splitlines()


def test_it_looks_at_most_every_poll_seconds(tmp_path: Path) -> None:
    gate, pool, backend, clock, _ = make(tmp_path, Limits(util=50))
    gate.refresh(pool, {})
    gate.refresh(pool, {})
    assert backend.asked == 1
    assert gate.next_check() == 110.0
    clock.now = 109.9
    gate.refresh(pool, {})
    assert backend.asked == 1
    clock.now = 110.0
    gate.refresh(pool, {})
    assert backend.asked == 2
    gate.expire()  # the poll timer fired
    gate.refresh(pool, {})
    assert backend.asked == 3


def test_busy_gpus_are_unavailable_until_they_free(tmp_path: Path) -> None:
    gate, pool, backend, clock, messages = make(tmp_path, Limits(util=50))
    backend.usage["0"] = Usage(80 * GiB, 0, 90, ())
    backend.usage["1"] = Usage(80 * GiB, 0, 0, ())
    gate.refresh(pool, {})
    assert pool.gpu("0").unavailable == "90% utilization (--max-gpu-util 50)"
    assert pool.gpu("1").unavailable is None
    backend.usage["0"] = Usage(80 * GiB, 0, 10, ())
    clock.now += 10
    gate.refresh(pool, {})
    assert pool.gpu("0").unavailable is None
    assert said(messages) == [
        "[sgs] gpu 0 is busy: 90% utilization (--max-gpu-util 50); waiting for it",
        "[sgs] gpu 0 is no longer busy"]


def test_unmeasurable_checks_are_said_once(tmp_path: Path) -> None:
    gate, pool, backend, clock, messages = make(tmp_path, Limits(util=50))
    backend.usage["0"] = Usage(80 * GiB, 0, 0, ())
    for _ in range(2):
        gate.refresh(pool, {})
        clock.now += 10
    assert said(messages) == [
        "[sgs] gpu 1: its utilization cannot be measured here; that busy check is not made on it"]
    assert pool.gpu("1").unavailable is None


def test_memory_held_outside_our_bookings_is_observed(tmp_path: Path) -> None:
    gate, pool, backend, _, _ = make(tmp_path, Limits(memory=MemoryLimit(fraction=0.9)))
    job = Job(id=1, command=b"x", mem=10 * GiB)
    leader = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        pool.take(["0"], job)
        # Our job uses 25 GiB (15 over what it booked); someone else uses 20 GiB.
        backend.usage["0"] = Usage(80 * GiB, 45 * GiB, 0, (
            GpuProcess(leader.pid, 25 * GiB), GpuProcess(os.getpid(), 20 * GiB)))
        gate.refresh(pool, {leader.pid: job})
        assert pool.gpu("0").external == 20 * GiB + 15 * GiB
        assert pool.gpu("0").unavailable is None  # 20 GiB of others is under 90%
        # 80 - 10 booked - 35 outside = 35 GiB left for a new job on GPU 0.
        assert pool.place(Job(id=2, command=b"x", mem=36 * GiB, on=("0",))) is None
        assert pool.place(Job(id=2, command=b"x", mem=35 * GiB, on=("0",))) == ("0",)
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()


def test_a_lost_gpu_is_marked_and_said_once(tmp_path: Path) -> None:
    gate, pool, backend, clock, messages = make(tmp_path, Limits())
    backend.usage["1"] = Usage(lost="GPU is lost")
    gate.refresh(pool, {})
    clock.now += 10
    gate.refresh(pool, {})
    assert pool.gpu("1").lost == "GPU is lost"
    assert said(messages) == ["[sgs] gpu 1 is lost (GPU is lost); no more jobs go there"]


def test_locks_make_a_gpu_busy_until_retried(tmp_path: Path) -> None:
    gate, pool, _, _, messages = make(tmp_path, Limits(), locks=True)
    other = GpuLocks(open_lock_dir(str(tmp_path / "locks")))
    try:
        assert other.acquire("1") is None
        assert gate.lock(pool, ["0", "1"]) == "1"
        assert pool.gpu("1").unavailable is not None
        assert gate.locks is not None and not gate.locks.held("0")  # all or nothing
        assert pool.place(Job(id=1, command=b"x", gpus=2)) is None
        assert said(messages) == ["[sgs] gpu 1: another scheduler has it; waiting for it"]
        other.release("1")
        gate.job_ended(pool)
        assert pool.gpu("1").unavailable is None
        assert gate.lock(pool, ["0", "1"]) is None
        pool.take(["0", "1"])
        assert other.acquire("0") == "another scheduler has it"
        pool.release(["0", "1"])
        gate.unlock_unused(pool, ["0", "1"])
        assert other.acquire("0") is None
    finally:
        other.close()
        gate.close()
