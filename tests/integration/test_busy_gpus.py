"""Leaving busy GPUs alone: skipped while busy, taken once free, polled only while waiting."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from harness import FakeMachine, GiB, fake_gpu, poll_until, popen_sgs, read_lines, run_sgs, send

SHOW = "echo $CUDA_VISIBLE_DEVICES"


def foreign(used: int = 30 * GiB) -> dict:
    # The test process itself: alive, and in no process group of the scheduler's.
    return {"pid": os.getpid(), "used": used}


def finish(proc: subprocess.Popen, timeout: float = 15) -> int:
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_busy_gpus_are_skipped(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path, [fake_gpu(0, processes=[foreign()]), fake_gpu(1)])
    for route in ("nvml", "smi"):
        result = run_sgs(["--max-gpu-memory", "10%", "--lock-dir", str(machine.locks)],
                         env=machine.env(route), input=f"{SHOW}\n{SHOW}\n{SHOW}\n", text=True)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["1", "1", "1"], route
        assert "gpu 0 is busy: 30.0GiB of its memory is used by other processes " \
               "(--max-gpu-memory 10%); waiting for it" in result.stderr


def test_a_busy_gpu_is_taken_once_it_frees(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path, [fake_gpu(0, util=90)])
    done = tmp_path / "done"
    errors = tmp_path / "err"
    proc = popen_sgs(["--max-gpu-util", "50", "--poll", "0.05", "--lock-dir", str(machine.locks)],
                     env=machine.env(), stderr=errors, stdout=subprocess.DEVNULL, text=True)
    try:
        send(proc, f"touch {done}")
        poll_until(lambda: "gpu 0 is busy: 90% utilization" in errors.read_text(), what="busy")
        polls = machine.samples()
        poll_until(lambda: machine.samples() >= polls + 2, what="polling while a job waits")
        assert not done.exists()
        machine.gpus[0]["util"] = 10
        machine.write()
        poll_until(done.exists, what="the job to run once the GPU frees")
        assert finish(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "gpu 0 is no longer busy" in errors.read_text()


def test_no_polling_while_nothing_waits(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path, [fake_gpu(0)])
    errors, done = tmp_path / "err", tmp_path / "done"
    proc = popen_sgs(["--max-gpu-memory", "0.5", "--poll", "0.02", "--lock-dir", str(machine.locks),
                      "-v"], env=machine.env(), stderr=errors, stdout=subprocess.DEVNULL, text=True)
    try:
        send(proc, f"touch {done}")
        poll_until(lambda: "job 1 finished" in errors.read_text(), what="the job")
        assert machine.samples() >= 1  # the GPU was checked before the job got it
        calls = len(machine.calls())
        # An observation window of 25 poll intervals with nothing to run: no
        # look at the hardware at all, not even a cheap one.
        time.sleep(0.5)
        assert len(machine.calls()) == calls
        assert finish(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_only_idle_skips_gpus_with_foreign_processes_not_ours(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path, [fake_gpu(0), fake_gpu(1, processes=[foreign(GiB)])])
    errors, pidfile, gate = tmp_path / "err", tmp_path / "pid", tmp_path / "gate"
    args = ["--only-idle", "--jobs-per-gpu", "2", "--poll", "0.02",
            "--lock-dir", str(machine.locks)]
    proc = popen_sgs(args, env=machine.env(), stderr=errors, stdout=subprocess.DEVNULL, text=True)
    try:
        # Job 1 starts a grandchild (as a training script starts workers) and
        # holds GPU 0 until the gate opens.
        send(proc, f"sleep 30 & echo $! > {pidfile}; {SHOW} > {tmp_path}/1; "
                   f"while [ ! -e {gate} ]; do sleep 0.02; done; kill $!")
        grandchild = int(poll_until(lambda: read_lines(pidfile), what="job 1")[0])
        # The driver now shows our grandchild on GPU 0.
        machine.gpus[0]["processes"] = [{"pid": grandchild, "used": 20 * GiB}]
        machine.write()
        samples = machine.samples()
        time.sleep(0.05)  # let the last look age past --poll, so job 2 gets a fresh one
        send(proc, f"{SHOW} > {tmp_path}/2")
        poll_until(lambda: (tmp_path / "2").exists(), what="job 2")
        assert machine.samples() > samples  # it looked again, and GPU 0 was not busy
        assert read_lines(tmp_path / "2") == ["0"]
        assert "gpu 1 is busy: other processes are on it" in errors.read_text()
        assert "gpu 0 is busy" not in errors.read_text()
        gate.touch()
        assert finish(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        if pidfile.exists():
            try:
                os.kill(int(read_lines(pidfile)[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_our_own_jobs_do_not_make_a_gpu_busy_by_memory(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path, [fake_gpu(0)])
    pidfile, gate = tmp_path / "pid", tmp_path / "gate"
    errors = tmp_path / "err"
    proc = popen_sgs(["--max-gpu-memory", "0.5", "--jobs-per-gpu", "2", "--poll", "0.02",
                      "--lock-dir", str(machine.locks)], env=machine.env(), stderr=errors,
                     stdout=subprocess.DEVNULL, text=True)
    try:
        send(proc, f"echo $$ > {pidfile}; while [ ! -e {gate} ]; do sleep 0.02; done")
        job_pid = int(poll_until(lambda: read_lines(pidfile), what="job 1")[0])
        # 70 GiB of 80 used, all by our first job: that is no reason to wait.
        machine.gpus[0]["processes"] = [{"pid": job_pid, "used": 70 * GiB}]
        machine.write()
        samples = machine.samples()
        time.sleep(0.05)  # let the last look age past --poll, so job 2 gets a fresh one
        send(proc, f"touch {tmp_path}/2")
        poll_until(lambda: (tmp_path / "2").exists(), what="job 2 beside our own job")
        assert machine.samples() > samples
        assert "busy" not in errors.read_text()
        gate.touch()
        assert finish(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
