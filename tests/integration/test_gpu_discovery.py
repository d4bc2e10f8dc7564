"""Finding the GPUs: NVML, nvidia-smi, neither; CUDA_VISIBLE_DEVICES; MIG; --list-gpus.

The installed scheduler runs for real; only the hardware is fake.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from harness import FakeMachine, GiB, fake_gpu, fake_mig, poll_until, run_sgs

SHOW = "echo $CUDA_VISIBLE_DEVICES"


def machine_of(tmp_path: Path, n: int = 2, **top: object) -> FakeMachine:
    return FakeMachine(tmp_path, [fake_gpu(i) for i in range(n)], **top)


def lock_args(machine: FakeMachine) -> list:
    return ["--lock-dir", str(machine.locks)]


@pytest.mark.parametrize("route, source", [("nvml", "NVML"), ("smi", "nvidia-smi")])
def test_gpus_are_found_by_default(tmp_path: Path, route: str, source: str) -> None:
    machine = machine_of(tmp_path)
    result = run_sgs(lock_args(machine), env=machine.env(route), input=f"{SHOW}\n{SHOW}\n",
                     text=True)
    assert result.returncode == 0, result.stderr
    assert f"found 2 GPU(s) through {source}: 0, 1" in result.stderr
    assert sorted(result.stdout.split()) == ["0", "1"]
    assert machine.calls("nvml nvmlInit")  # NVML was tried first either way
    assert bool(machine.calls("smi")) == (route == "smi")


def test_gpus_all_is_the_same_as_the_default(tmp_path: Path) -> None:
    machine = machine_of(tmp_path)
    result = run_sgs(["--gpus", "all", *lock_args(machine)], env=machine.env(), input=f"{SHOW}\n",
                     text=True)
    assert result.returncode == 0 and result.stdout.split() == ["0"]
    bad = run_sgs(["--gpus", "all,0"], env=machine.env(), input="", text=True)
    assert bad.returncode == 2 and "--gpus all cannot be combined" in bad.stderr


def test_no_nvml_and_no_nvidia_smi_is_a_usage_error(tmp_path: Path) -> None:
    machine = machine_of(tmp_path)
    result = run_sgs(lock_args(machine), env=machine.env("none"), input="true\n", text=True)
    assert result.returncode == 2
    assert "no GPUs found; pass --gpus" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_driver_that_does_not_answer_is_no_gpus(tmp_path: Path) -> None:
    machine = machine_of(tmp_path, smi=False)
    result = run_sgs(lock_args(machine), env=machine.env("smi"), input="true\n", text=True)
    assert result.returncode == 2
    assert "no GPUs found; pass --gpus" in result.stderr
    assert "couldn't communicate with the NVIDIA driver" in result.stderr


@pytest.mark.parametrize("route", ["nvml", "smi"])
def test_cuda_visible_devices_limits_all_and_jobs_get_the_same_devices(
        tmp_path: Path, route: str) -> None:
    machine = machine_of(tmp_path, 4)
    uuid0 = machine.gpus[0]["uuid"]
    env = machine.env(route, CUDA_VISIBLE_DEVICES=f"2,{uuid0[:12]}")
    result = run_sgs(["--jobs-per-gpu", "1", *lock_args(machine)], env=env,
                     input="".join(f"{SHOW}\n" for _ in range(4)), text=True)
    assert result.returncode == 0, result.stderr
    assert sorted(set(result.stdout.split())) == ["0", "2"]
    assert "found 2 GPU(s)" in result.stderr


def test_another_device_order_gives_jobs_uuids(tmp_path: Path) -> None:
    machine = machine_of(tmp_path, 2)
    env = machine.env(CUDA_DEVICE_ORDER="FASTEST_FIRST", CUDA_VISIBLE_DEVICES="1")
    result = run_sgs(lock_args(machine), env=env, input=f"{SHOW}; echo $CUDA_DEVICE_ORDER\n",
                     text=True)
    assert result.stdout.split() == [machine.gpus[1]["uuid"], "FASTEST_FIRST"]


@pytest.mark.parametrize("route", ["nvml", "smi"])
def test_mig_instances_are_devices_of_their_own(tmp_path: Path, route: str) -> None:
    machine = FakeMachine(tmp_path, [
        fake_gpu(0, memory_total=80 * GiB, mig=[fake_mig(1), fake_mig(2)]),
    ])
    migs = [m["uuid"] for m in machine.gpus[0]["mig"]]
    result = run_sgs(lock_args(machine), env=machine.env(route), input=f"{SHOW}\n{SHOW}\n",
                     text=True)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == sorted(migs)
    refused = run_sgs(["--gpus-per-job", "2", *lock_args(machine)], env=machine.env(route),
                      input="", text=True)
    assert refused.returncode == 2
    assert "MIG instances cannot be combined" in refused.stderr


def test_prohibited_and_lost_gpus_are_left_out(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path, [
        fake_gpu(0, compute_mode=2), fake_gpu(1, lost=True), fake_gpu(2)])
    result = run_sgs(lock_args(machine), env=machine.env(), input=f"{SHOW}\n", text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2"]
    assert "gpu 0 left out: its compute mode is Prohibited" in result.stderr
    assert "gpu 1 left out: NVML: GPU is lost" in result.stderr


def test_a_gpu_lost_during_the_run_takes_no_more_jobs(tmp_path: Path) -> None:
    machine = machine_of(tmp_path, 2)
    started, gate = tmp_path / "started", tmp_path / "gate"
    # Job 1 holds GPU 0 until the test has marked it lost (and then longer
    # than --poll, so the next look is due); job 2 may only use GPU 0; job 3
    # may go anywhere.
    hold = f"touch {started}; while [ ! -e {gate} ]; do sleep 0.02; done; sleep 0.1"
    lines = [
        f'{{"cmd": "{hold}; {SHOW}", "on": [0]}}',
        f'{{"cmd": "{SHOW}", "on": [0]}}',
        f'{{"cmd": "{SHOW}", "on": [0, 1]}}',
    ]

    def lose_then_open() -> None:
        poll_until(started.exists, what="job 1")
        machine.gpus[0]["lost"] = True
        machine.write()
        gate.touch()

    helper = threading.Thread(target=lose_then_open)
    helper.start()
    result = run_sgs(["--input", "jsonl", "--poll", "0.05", *lock_args(machine)], env=machine.env(),
                     input="\n".join(lines) + "\n", text=True)
    helper.join()
    assert result.returncode == 1, result.stderr
    assert "gpu 0 is lost (GPU is lost); no more jobs go there" in result.stderr
    assert "job 2 failed: could not start: it can never run here: it needs 1 GPUs and only " \
           "0 can be used (lost: 0)" in result.stderr
    assert sorted(result.stdout.split()) == ["0", "1"]  # job 1 finished, job 3 ran on 1


def test_list_gpus(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path, [
        fake_gpu(0, processes=[{"pid": 1, "used": 30 * GiB}], util=20),
        fake_gpu(1, util=95),
        fake_gpu(2, mig=[fake_mig(1)]),
    ])
    result = run_sgs(["--list-gpus", "--max-gpu-memory", "0.25", "--max-gpu-util", "50"],
                     env=machine.env(), input="", text=True)
    assert result.returncode == 0, result.stderr
    head, *rows = result.stdout.splitlines()
    assert head.split() == ["INDEX", "UUID", "NAME", "MEMORY", "UTIL", "BUSY", "PROCESSES"]
    assert len(rows) == 3
    assert rows[0].split()[:2] == ["0", machine.gpus[0]["uuid"]]
    assert "30.0GiB / 80.0GiB" in rows[0] and "yes: 30.0GiB of its memory" in rows[0]
    assert "95%" in rows[1] and "yes: 95% utilization" in rows[1]
    assert rows[2].split()[:2] == ["2:0", machine.gpus[2]["mig"][0]["uuid"]]
    assert rows[2].split()[-2:] == ["no", "-"]
    # Who holds a GPU, as gpustat -up shows it: user:pid(memory).
    owner = __import__("pwd").getpwuid(os.stat("/proc/1").st_uid).pw_name
    assert rows[0].endswith(f"{owner}:1(30.0GiB)")
    assert not machine.calls("nvml nvmlShutdown")


def test_list_gpus_respects_explicit_ids_and_needs_hardware(tmp_path: Path) -> None:
    machine = machine_of(tmp_path, 3)
    result = run_sgs(["--list-gpus", "--gpus", "2"], env=machine.env("smi"), input="", text=True)
    assert result.returncode == 0, result.stderr
    assert [row.split()[0] for row in result.stdout.splitlines()[1:]] == ["2"]
    none = run_sgs(["--list-gpus"], env=machine.env("none"), input="", text=True)
    assert none.returncode == 2 and "no GPUs found; pass --gpus" in none.stderr


def test_explicit_ids_are_checked_against_the_hardware_when_it_answers(tmp_path: Path) -> None:
    """``--gpus 0`` asks the hardware (an id that names no device, or a busy
    GPU, must not run silently), and a machine with neither NVML nor
    nvidia-smi pays no more than a failed look: no json, no subprocess."""
    machine = machine_of(tmp_path)
    result = run_sgs(["--gpus", "0", *lock_args(machine)], env=machine.env(), input=f"{SHOW}\n",
                     text=True)
    assert result.returncode == 0 and result.stdout.split() == ["0"]
    assert "nvml nvmlInit" in machine.calls()


def test_explicit_ids_without_hardware_load_little(tmp_path: Path, sgs_command: str) -> None:
    machine = machine_of(tmp_path)
    no_nvml = machine.env("none")
    del no_nvml["PYTHONPATH"]  # no pynvml at all, not even the fake
    timed = subprocess.run(
        [sys.executable, "-X", "importtime", sgs_command, "--gpus", "0", *lock_args(machine)],
        input="true\n", env=no_nvml, capture_output=True, text=True, timeout=30)
    assert timed.returncode == 0, timed.stderr
    imported = {line.split("|")[-1].strip() for line in timed.stderr.splitlines()
                if line.startswith("import time:")}
    assert "json" not in imported and "subprocess" not in imported
    assert "simple_gpu_scheduler.gpus.sampler" not in imported


def test_unknown_explicit_id_with_busy_checks_is_a_usage_error(tmp_path: Path) -> None:
    machine = machine_of(tmp_path, 2)
    result = run_sgs(["--gpus", "5", "--only-idle", *lock_args(machine)], env=machine.env(),
                     input="", text=True)
    assert result.returncode == 2
    assert "--gpus: no GPU 5 here (found: 0, 1)" in result.stderr


def test_busy_flags_without_nvml_or_nvidia_smi_are_a_usage_error(tmp_path: Path) -> None:
    machine = machine_of(tmp_path)
    for flag in (["--max-gpu-memory", "0.5"], ["--max-gpu-util", "10"], ["--only-idle"]):
        result = run_sgs(["--gpus", "0", *flag, *lock_args(machine)], env=machine.env("none"),
                         input="true\n", text=True)
        assert result.returncode == 2, flag
        assert "need NVML" in result.stderr and "or nvidia-smi" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not machine.calls("smi")  # none on PATH
