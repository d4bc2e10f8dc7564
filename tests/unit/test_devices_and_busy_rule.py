"""Device discovery decisions, nvidia-smi parsing, the busy rule and ownership (pure)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from harness import poll_until, read_lines

from simple_gpu_scheduler.gpus import smi
from simple_gpu_scheduler.gpus.busy import (
    Limits,
    MemoryLimit,
    excess_memory,
    judge,
    parse_memory_limit,
)
from simple_gpu_scheduler.gpus.gate import owner, split_processes
from simple_gpu_scheduler.model.devices import (
    Device,
    GpuProcess,
    Usage,
    resolve_ids,
    select_visible,
)

GiB = 2**30
MiB = 2**20

# --- nvidia-smi output ---------------------------------------------------------------

LOST_LINE = ("Unable to determine the device handle for GPU 0000:41:00.0: GPU is lost. "
             "Reboot the system to recover this GPU")
SMI_GPUS = f"""\
0, GPU-aaaa, NVIDIA A100-SXM4-80GB, 81920, 1024, 37, Default, Disabled
1, GPU-bbbb, NVIDIA A100-SXM4-80GB, 81920, [N/A], [N/A], Prohibited, [N/A]
{LOST_LINE}
2, GPU-cccc, NVIDIA A100-SXM4-40GB, 40960, 0, [Not Supported], Default, Enabled
"""


def test_parse_gpus() -> None:
    gpus, problems = smi.parse_gpus(SMI_GPUS)
    assert [g.index for g in gpus] == ["0", "1", "2"]
    first, second, third = gpus
    assert (first.uuid, first.name, first.mem_total, first.mem_used, first.util) == (
        "GPU-aaaa", "NVIDIA A100-SXM4-80GB", 81920 * MiB, 1024 * MiB, 37)
    assert (second.mem_used, second.util, second.compute_mode) == (None, None, "Prohibited")
    assert third.mig and not first.mig
    assert problems == [LOST_LINE]


def test_parse_apps_and_mig_list() -> None:
    apps = smi.parse_apps("GPU-aaaa, 4242, 2048\nGPU-bbbb, 17, [N/A]\nNo running processes found\n")
    assert apps == [smi.SmiApp("GPU-aaaa", 4242, 2048 * MiB), smi.SmiApp("GPU-bbbb", 17, None)]
    listing = (
        "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-5d5b)\n"
        "  MIG 3g.20gb     Device  0: (UUID: MIG-c6d4)\n"
        "  MIG 1g.5gb      Device  1: (UUID: MIG-cba6)\n"
        "GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-77aa)\n"
    )
    assert smi.parse_mig_list(listing) == {
        "0": [("0", "3g.20gb", "MIG-c6d4"), ("1", "1g.5gb", "MIG-cba6")]}


# --- which devices `all` means ------------------------------------------------------------


def gpu(index: str, name: str = "A100", **kw: object) -> Device:
    uuid = f"GPU-{index}{index}{index}-uuid"
    return Device(id=index, index=index, uuid=uuid, name=name, **kw)  # type: ignore[arg-type]


def mig(parent: str, n: int) -> Device:
    uuid = f"MIG-{parent}{n}-uuid"
    return Device(id=uuid, index=f"{parent}:{n}", uuid=uuid, name="A100 MIG", mig_parent=parent)


MACHINE = [gpu("0"), gpu("1"), gpu("2"), mig("3", 0), mig("3", 1)]


def ids(env: dict, devices=MACHINE, left_out=()) -> list:
    return [d.id for d in select_visible(devices, list(left_out), env).devices]


def test_all_without_cuda_visible_devices_is_everything() -> None:
    assert ids({}) == ["0", "1", "2", "MIG-30-uuid", "MIG-31-uuid"]


def test_cuda_visible_devices_restricts_in_its_order() -> None:
    assert ids({"CUDA_VISIBLE_DEVICES": "2,0"}) == ["2", "0"]
    assert ids({"CUDA_VISIBLE_DEVICES": "GPU-111,MIG-31"}) == ["1", "MIG-31-uuid"]
    assert ids({"CUDA_VISIBLE_DEVICES": "3"}) == ["MIG-30-uuid", "MIG-31-uuid"]
    assert ids({"CUDA_VISIBLE_DEVICES": " 1 , 1"}) == ["1"]
    assert ids({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert ids({"CUDA_VISIBLE_DEVICES": "-1"}) == []


def test_cuda_visible_devices_stops_at_an_invalid_entry_as_cuda_does() -> None:
    selection = select_visible(MACHINE, [], {"CUDA_VISIBLE_DEVICES": "1,7,0"})
    assert [d.id for d in selection.devices] == ["1"]
    assert "'7' names no GPU" in selection.notes[0]
    # An ambiguous UUID prefix is invalid too.
    assert ids({"CUDA_VISIBLE_DEVICES": "GPU-"}) == []


def test_left_out_devices_keep_their_place_but_are_not_used() -> None:
    prohibited = gpu("4")
    assert ids({"CUDA_VISIBLE_DEVICES": "4,0"}, left_out=[prohibited]) == ["0"]


def test_numbers_on_mixed_gpus_get_a_note_unless_pci_order() -> None:
    mixed = [gpu("0", "A100"), gpu("1", "RTX 4090")]
    notes = select_visible(mixed, [], {"CUDA_VISIBLE_DEVICES": "1"}).notes
    assert any("PCI bus order" in n for n in notes)
    env = {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert select_visible(mixed, [], env).notes == ()
    assert select_visible(MACHINE, [], {"CUDA_VISIBLE_DEVICES": "1"}).notes == ()


def test_another_device_order_gives_jobs_uuids() -> None:
    assert ids({"CUDA_DEVICE_ORDER": "FASTEST_FIRST", "CUDA_VISIBLE_DEVICES": "0,3"}) == [
        "GPU-000-uuid", "MIG-30-uuid", "MIG-31-uuid"]


def test_resolve_explicit_ids() -> None:
    found = resolve_ids(["1", "GPU-000", "MIG-31"], MACHINE)
    assert {k: v.index for k, v in found.items()} == {"1": "1", "GPU-000": "0", "MIG-31": "3:1"}
    with pytest.raises(ValueError, match="no GPU 9 here"):
        resolve_ids(["9"], MACHINE)
    with pytest.raises(ValueError, match="split into MIG instances"):
        resolve_ids(["3"], MACHINE)


def test_lock_keys_agree_between_index_and_uuid() -> None:
    assert resolve_ids(["GPU-111"], MACHINE)["GPU-111"].lock_key == "1"
    assert mig("3", 1).lock_key == "MIG-31-uuid"


# --- the busy rule --------------------------------------------------------------------


def test_memory_limit_parsing() -> None:
    assert parse_memory_limit("0.25") == MemoryLimit(fraction=0.25)
    assert parse_memory_limit("10%") == MemoryLimit(fraction=0.1)
    assert parse_memory_limit("1") == MemoryLimit(fraction=1.0)
    assert parse_memory_limit("8GiB") == MemoryLimit(size=8 * GiB)
    assert parse_memory_limit("2000") == MemoryLimit(size=2000)
    for bad in ("-0.5", "150%", "lots"):
        with pytest.raises(ValueError):
            parse_memory_limit(bad)


FOREIGN = (GpuProcess(100, 30 * GiB),)


def test_memory_above_the_limit_is_busy_and_ours_does_not_count() -> None:
    usage = Usage(mem_total=80 * GiB, mem_used=40 * GiB, util=0, processes=FOREIGN)
    fraction = Limits(memory=MemoryLimit(fraction=0.25))
    busy = judge(usage, FOREIGN, 10 * GiB, 1, fraction).busy
    assert busy is not None and "30.0GiB of its memory is used by other processes" in busy
    assert judge(usage, (), 40 * GiB, 1, fraction).busy is None  # all of it is ours
    size = Limits(memory=MemoryLimit(size=31 * GiB))
    assert judge(usage, FOREIGN, 10 * GiB, 1, size).busy is None


def test_utilization_is_judged_only_without_our_jobs_on_the_gpu() -> None:
    usage = Usage(mem_total=80 * GiB, mem_used=0, util=90, processes=())
    limits = Limits(util=50)
    assert "90% utilization" in (judge(usage, (), 0, 0, limits).busy or "")
    assert judge(usage, (), 0, 1, limits).busy is None


def test_only_idle_means_no_foreign_process() -> None:
    usage = Usage(mem_total=80 * GiB, mem_used=GiB, util=0, processes=FOREIGN)
    assert "pid 100" in (judge(usage, FOREIGN, 0, 0, Limits(only_idle=True)).busy or "")
    assert judge(usage, (), GiB, 1, Limits(only_idle=True)).busy is None


def test_what_cannot_be_measured_is_named_not_held_against_the_gpu() -> None:
    mig_usage = Usage(mem_total=20 * GiB, mem_used=GiB, util=None, processes=None)
    verdict = judge(mig_usage, None, 0, 0, Limits(util=10, only_idle=True))
    assert verdict.busy is None
    assert verdict.unmeasured == ("utilization", "processes")
    verdict = judge(Usage(), None, 0, 0, Limits(memory=MemoryLimit(fraction=0.5)))
    assert verdict == judge(Usage(), None, 0, 0, Limits(memory=MemoryLimit(fraction=0.5)))
    assert verdict.unmeasured == ("memory",)


def test_excess_memory_counts_only_overruns() -> None:
    assert excess_memory([(10, 4), (2, 8), (5, 0)]) == 6 + 0 + 5


# --- whose process is it --------------------------------------------------------------


def test_split_processes_with_a_scripted_owner() -> None:
    table = {1: (True, None), 2: (True, 77), 3: (False, None), 4: (True, 77)}
    others, ours = split_processes(
        [GpuProcess(1, 5), GpuProcess(2, 6), GpuProcess(3, 7), GpuProcess(4, None)],
        {77: None}, owner_of=lambda pid, leaders: table[pid])
    assert others == [GpuProcess(1, 5)]
    assert ours == {77: 6}
    assert split_processes(None, {}) == (None, {})


def test_owner_follows_process_groups_and_sessions(tmp_path: Path) -> None:
    # A job leader in its own session, with a grandchild that moves to a new
    # process group (as a shell with job control would): both are ours.
    pidfile = tmp_path / "pids"
    script = (f"sleep 30 & echo $! > {pidfile}.a; "
              f"{sys.executable} -c 'import os, time; os.setpgid(0, 0); "
              f"open(\"{pidfile}.b\", \"w\").write(str(os.getpid())); time.sleep(30)' & wait")
    leader = subprocess.Popen(["/bin/sh", "-c", script], start_new_session=True)
    try:
        child = int(poll_until(lambda: read_lines(Path(f"{pidfile}.a")), what="child")[0])
        regrouped = int(poll_until(lambda: read_lines(Path(f"{pidfile}.b")), what="grandchild")[0])
        leaders = {leader.pid: None}
        assert owner(child, leaders) == (True, leader.pid)
        assert owner(regrouped, leaders) == (True, leader.pid)
        assert owner(os.getpid(), leaders) == (True, None)
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()
        # The grandchild left the group: it is killed on its own.
        for pid in read_lines(Path(f"{pidfile}.b")):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
    # A pid that is not in our /proc (another container's, or one that has
    # just ended) is somebody else's: it counts, as --list-gpus counts it.
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert owner(dead.pid, {}) == (True, None)

