"""``--gpus`` with two ids of one device runs nothing: exit 2, one line naming both.

Before, ``--gpus 0,00`` and ``--gpus 0,GPU-<uuid of 0>`` ran two jobs at once on
one GPU. Only the hardware is fake (`FakeMachine`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import FakeMachine, fake_gpu, fake_mig, run_sgs

SHOW = "echo $CUDA_VISIBLE_DEVICES"


def assert_same_gpu_error(result, first: str, second: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert first in lines[0] and second in lines[0] and "same" in lines[0]
    assert result.stdout == ""  # no job ran


def test_two_numbers_of_one_gpu_without_hardware(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path, [fake_gpu(0)])
    result = run_sgs(["--gpus", "0,00", "--lock-dir", str(machine.locks)], env=machine.env("none"),
                 input=f"{SHOW}\n{SHOW}\n", text=True)
    assert_same_gpu_error(result, " 0 ", " 00 ")


@pytest.mark.parametrize("route", ["nvml", "smi"])
def test_a_number_and_the_uuid_of_the_same_gpu(tmp_path: Path, route: str) -> None:
    machine = FakeMachine(tmp_path, [fake_gpu(0), fake_gpu(1)])
    uuid0 = machine.gpus[0]["uuid"]
    result = run_sgs(["--gpus", f"0,{uuid0}", "--lock-dir", str(machine.locks)],
                 env=machine.env(route), input=f"{SHOW}\n{SHOW}\n", text=True)
    assert_same_gpu_error(result, " 0 ", uuid0)


def test_a_mig_uuid_and_its_prefix(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path, [fake_gpu(0, mig=[fake_mig(1), fake_mig(2)])])
    mig = machine.gpus[0]["mig"][0]["uuid"]
    result = run_sgs(["--gpus", f"{mig},{mig[:12]}", "--lock-dir", str(machine.locks)],
                 env=machine.env(), input=f"{SHOW}\n", text=True)
    assert_same_gpu_error(result, mig, mig[:12])


def test_a_number_and_the_uuid_of_another_gpu_still_run(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path, [fake_gpu(0), fake_gpu(1)])
    uuid1 = machine.gpus[1]["uuid"]
    result = run_sgs(["--gpus", f"0,{uuid1}", "--lock-dir", str(machine.locks)],
                 env=machine.env(), input=f"{SHOW}\n{SHOW}\n", text=True)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == sorted(["0", uuid1])
