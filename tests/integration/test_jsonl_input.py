"""``--input jsonl`` end to end: keys that change how a job runs, rejections, priorities."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from harness import FakeMachine, GiB, fake_gpu, poll_until, popen_sgs, read_lines, run_sgs, send


def jsonl(*jobs: dict) -> str:
    return "".join(json.dumps(job) + "\n" for job in jobs)


def test_keys_reach_the_job(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path, [fake_gpu(i) for i in range(3)])
    workdir = tmp_path / "work"
    workdir.mkdir()
    uuid2 = machine.gpus[2]["uuid"]
    result = run_sgs(["--input", "jsonl", "--lock-dir", str(machine.locks)], env=machine.env(),
                     input=jsonl(
                         {"cmd": "echo env $LR $CUDA_VISIBLE_DEVICES", "env": {"LR": "0.1"},
                          "on": [uuid2], "name": "lr=0.1"},
                         {"cmd": "echo cwd $(pwd)", "cwd": str(workdir), "on": ["1"]},
                         {"cmd": "echo two $CUDA_VISIBLE_DEVICES", "gpus": 2, "timeout": "1h",
                          "retries": 0, "priority": 0},
                     ), text=True)
    assert result.returncode == 0, result.stderr
    cwd_line, env_line, two_line = sorted(result.stdout.splitlines())
    assert env_line == "env 0.1 2"
    assert cwd_line == "cwd " + str(workdir)
    word, gpus = two_line.split()
    assert word == "two" and len(set(gpus.split(","))) == 2


def test_bad_lines_fail_alone_and_name_their_line(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path, [fake_gpu(0)])
    text = "\n".join([
        '{"cmd": "echo one"}',
        "",
        '{"cmd": "echo two", "gpu": 1}',
        "# a comment",
        "{not json",
        '{"cmd": "echo three \\\\"}',   # ends in a backslash: no continuation in JSONL
        '{"cmd": "echo four", "mem": "lots"}',
        '{"cmd": "echo five"}',
    ]) + "\n"
    result = run_sgs(["--input", "jsonl", "--lock-dir", str(machine.locks)], env=machine.env(),
                     input=text, text=True)
    assert result.returncode == 1
    assert result.stdout.split() == ["one", "three", "\\", "five"]
    err = result.stderr
    assert "job 2 failed: could not start: input line 3: unknown key 'gpu'" in err
    assert "job 3 failed: could not start: input line 5: invalid JSON" in err
    assert "job 5 failed: could not start: input line 7: 'mem': invalid size 'lots'" in err
    assert "Traceback" not in err


def test_impossible_jobs_fail_at_once_without_waiting(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path, [fake_gpu(0), fake_gpu(1, memory_total=40 * GiB)])
    errors, gate = tmp_path / "err", tmp_path / "gate"
    proc = popen_sgs(["--input", "jsonl", "--lock-dir", str(machine.locks)], env=machine.env(),
                     stderr=errors, stdout=subprocess.DEVNULL, text=True)
    try:
        # Both GPUs are held by a long job; the impossible ones must not wait for it.
        send(proc, json.dumps({"cmd": f"while [ ! -e {gate} ]; do sleep 0.02; done",
                               "gpus": 2}))
        send(proc, *(json.dumps(j) for j in (
            {"cmd": "true", "gpus": 3},
            {"cmd": "true", "mem": "100GiB"},
            {"cmd": "true", "mem": "50GiB", "on": [1]},
            {"cmd": "true", "on": [7]},
        )))
        poll_until(lambda: errors.read_text().count("it can never run here") == 4,
                   what="four rejections")
        err = errors.read_text()
        assert "it needs 3 GPUs and only 2 can be used" in err
        assert "it needs 100.0GiB of GPU memory and the largest GPU it may use has 80.0GiB" in err
        assert "it needs 50.0GiB of GPU memory and the largest GPU it may use has 40.0GiB" in err
        assert "it asks for unknown GPU id 7" in err
        assert proc.poll() is None  # the long job still runs
        gate.touch()
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=10) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_priority_orders_the_commands_already_read(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path, [fake_gpu(0)])
    errors, gate, order = tmp_path / "err", tmp_path / "gate", tmp_path / "order"
    proc = popen_sgs(["--input", "jsonl", "--lock-dir", str(machine.locks)], env=machine.env(),
                     stderr=errors, stdout=subprocess.DEVNULL, text=True)
    try:
        send(proc, json.dumps({"cmd": f"while [ ! -e {gate} ]; do sleep 0.02; done"}))
        # Signal handlers are in place once a job has started.
        poll_until(lambda: "job 1 started" in errors.read_text(), what="job 1")
        send(proc, *(json.dumps({"cmd": f"echo {name} >> {order}", "priority": p})
                     for name, p in (("late", 5), ("first", -1), ("middle", 3), ("tie", 3))))

        def all_read() -> bool:
            proc.send_signal(signal.SIGUSR1)  # the status table says how many are queued
            return "4 queued" in errors.read_text()

        poll_until(all_read, what="all commands read")
        gate.touch()
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert read_lines(order) == ["first", "middle", "tie", "late"]
