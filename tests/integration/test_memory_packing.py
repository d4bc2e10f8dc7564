"""Packing jobs by declared memory, end to end; first in first out versus --backfill."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Dict, List, Tuple

from harness import FakeMachine, GiB, fake_gpu, poll_until, popen_sgs, read_lines, run_sgs, send


def recorded(log: Path, name: str, seconds: float, body: str = "") -> str:
    """A job command that logs its start and end times on its GPU; between
    them it sleeps `seconds` or runs `body`."""
    return (f'echo "{name} $CUDA_VISIBLE_DEVICES start $(date +%s.%N)" >> {log}; '
            f'{body or f"sleep {seconds}"}; '
            f'echo "{name} $CUDA_VISIBLE_DEVICES end $(date +%s.%N)" >> {log}')


def spans(log: Path) -> Dict[str, Tuple[str, float, float]]:
    """job name -> (gpu, start, end); the end is infinite while the job runs."""
    seen: Dict[str, List[str]] = {}
    for line in read_lines(log):
        name, gpu, _, when = line.split()
        seen.setdefault(name, [gpu]).append(when)
    return {name: (v[0], float(v[1]), float(v[2]) if len(v) > 2 else float("inf"))
            for name, v in seen.items()}


def most_at_once(runs: List[Tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in runs] + [(e, -1) for _, e in runs])
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def jsonl(*jobs: dict) -> str:
    return "".join(json.dumps(job) + "\n" for job in jobs)


def test_jobs_share_a_gpu_as_far_as_their_memory_fits(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path, [fake_gpu(0, memory_total=80 * GiB)])
    log = tmp_path / "runs"
    jobs = [{"cmd": recorded(log, f"j{i}", 0.3), "mem": "30GiB"} for i in range(4)]
    result = run_sgs(["--input", "jsonl", "--lock-dir", str(machine.locks)], env=machine.env(),
                     input=jsonl(*jobs), text=True)
    assert result.returncode == 0, result.stderr
    runs = spans(log)
    assert len(runs) == 4
    # 2 x 30 GiB fit in 80 GiB, 3 do not: exactly two at a time.
    assert most_at_once([(s, e) for _, s, e in runs.values()]) == 2


def test_jobs_per_gpu_caps_memory_packing(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path, [fake_gpu(0, memory_total=80 * GiB)])
    log = tmp_path / "runs"
    jobs = [{"cmd": recorded(log, f"j{i}", 0.2), "mem": "1GiB"} for i in range(3)]
    result = run_sgs(["--input", "jsonl", "--jobs-per-gpu", "1", "--lock-dir", str(machine.locks)],
                     env=machine.env(), input=jsonl(*jobs), text=True)
    assert result.returncode == 0, result.stderr
    assert most_at_once([(s, e) for _, s, e in spans(log).values()]) == 1


def test_other_users_memory_and_our_reservations_count(tmp_path: Path) -> None:
    # Someone else holds 50 GiB of 80: one 20 GiB job fits, a second does not,
    # even before the first has allocated anything. (--max-gpu-memory 100%:
    # by default a GPU with more than 10% held by others takes no job at all.)
    machine = FakeMachine(tmp_path, [fake_gpu(0, memory_used=50 * GiB)])
    log = tmp_path / "runs"
    jobs = [{"cmd": recorded(log, f"j{i}", 0.2), "mem": "20GiB"} for i in range(2)]
    result = run_sgs(["--input", "jsonl", "--poll", "0.05", "--max-gpu-memory", "100%",
                      "--lock-dir", str(machine.locks)],
                     env=machine.env(), input=jsonl(*jobs), text=True)
    assert result.returncode == 0, result.stderr
    assert most_at_once([(s, e) for _, s, e in spans(log).values()]) == 1


def test_gpu_memory_without_hardware(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path, [])
    log = tmp_path / "runs"
    jobs = [{"cmd": recorded(log, f"j{i}", 0.3), "mem": "4GiB"} for i in range(4)]
    jobs.append({"cmd": "true", "mem": "11GiB"})
    result = run_sgs(["--gpus", "0", "--input", "jsonl", "--gpu-memory", "10GiB",
                      "--lock-dir", str(machine.locks)], env=machine.env("none"),
                     input=jsonl(*jobs), text=True)
    assert result.returncode == 1
    assert "it needs 11.0GiB of GPU memory and the largest GPU it may use has 10.0GiB" \
        in result.stderr
    assert most_at_once([(s, e) for _, s, e in spans(log).values()]) == 2


def test_unknown_memory_size_is_said_and_jobs_go_alone(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path, [])
    log = tmp_path / "runs"
    jobs = [{"cmd": recorded(log, f"j{i}", 0.1), "mem": "1GiB"} for i in range(2)]
    result = run_sgs(["--gpus", "0", "--input", "jsonl", "--lock-dir", str(machine.locks)],
                     env=machine.env("none"), input=jsonl(*jobs), text=True)
    assert result.returncode == 0, result.stderr
    assert "memory size is unknown" in result.stderr and "--gpu-memory" in result.stderr
    assert most_at_once([(s, e) for _, s, e in spans(log).values()]) == 1


Spans = Dict[str, Tuple[str, float, float]]


def _big_small_run(tmp_path: Path, backfill: bool) -> Tuple[Spans, str]:
    """Job big1 (50 GiB) runs until a gate opens; big2 (50 GiB) must wait for it;
    small (10 GiB) would fit beside big1 right away."""
    machine = FakeMachine(tmp_path, [fake_gpu(0, memory_total=80 * GiB)])
    log, gate, errors = tmp_path / "runs", tmp_path / "gate", tmp_path / "err"
    hold = f"while [ ! -e {gate} ]; do sleep 0.02; done"
    args = ["--input", "jsonl", "--lock-dir", str(machine.locks)] + (["--backfill"] * backfill)
    proc = popen_sgs(args, env=machine.env(), stderr=errors, stdout=subprocess.DEVNULL, text=True)
    try:
        send(proc, json.dumps({"cmd": recorded(log, "big1", 0, body=hold), "mem": "50GiB"}),
             json.dumps({"cmd": recorded(log, "big2", 0.1), "mem": "50GiB"}),
             json.dumps({"cmd": recorded(log, "small", 0), "mem": "10GiB"}))
        if backfill:
            poll_until(lambda: "small" in spans(log), what="small to start beside big1")
        else:
            poll_until(lambda: "big1" in spans(log), what="big1")
        gate.touch()
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=10) == 0, errors.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return spans(log), errors.read_text()


def test_first_in_first_out_nothing_overtakes_a_waiting_job(tmp_path: Path) -> None:
    runs, messages = _big_small_run(tmp_path, backfill=False)
    # small did not start beside big1 while big2 waited: it waited its turn.
    assert runs["small"][1] >= runs["big1"][2]
    assert messages.index("job 2 started") < messages.index("job 3 started")


def test_backfill_lets_a_job_that_fits_start_first(tmp_path: Path) -> None:
    runs, messages = _big_small_run(tmp_path, backfill=True)
    assert runs["small"][1] < runs["big1"][2]
    assert messages.index("job 3 started") < messages.index("job 2 started")
