"""One owner per GPU across schedulers: a bad lock directory, and two real schedulers
(the lock files themselves are tested in unit/test_lock_files.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Dict, List, Tuple

from harness import FakeMachine, poll_until, popen_sgs, read_lines, run_sgs, send

from simple_gpu_scheduler.gpus.locks import GpuLocks, open_lock_dir


def locks_in(path: Path) -> GpuLocks:
    return GpuLocks(open_lock_dir(str(path)))


def test_usage_error_for_a_bad_lock_dir(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path, [])
    bad = tmp_path / "open"
    bad.mkdir()
    bad.chmod(0o777)
    result = run_sgs(["--gpus", "0", "--lock-dir", str(bad)], env=machine.env("none"),
                     input="true\n", text=True)
    assert result.returncode == 2
    assert "not sticky" in result.stderr and "--no-lock" in result.stderr


# --- two real schedulers ------------------------------------------------------------------


def recorder(log: Path, who: str, seconds: float) -> str:
    """A job that logs when it runs on which GPU."""
    return (f'echo "{who} $CUDA_VISIBLE_DEVICES start $(date +%s.%N)" >> {log}; sleep {seconds}; '
            f'echo "{who} $CUDA_VISIBLE_DEVICES end $(date +%s.%N)" >> {log}')


def intervals(log: Path) -> Dict[str, List[Tuple[float, float, str]]]:
    """GPU -> [(start, end, scheduler)] from the recorder lines."""
    starts: Dict[Tuple[str, str], List[float]] = {}
    result: Dict[str, List[Tuple[float, float, str]]] = {}
    for line in read_lines(log):
        who, gpu, what, when = line.split()
        if what == "start":
            starts.setdefault((who, gpu), []).append(float(when))
        else:
            result.setdefault(gpu, []).append((starts[(who, gpu)].pop(0), float(when), who))
    return result


def test_two_schedulers_never_share_a_gpu(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path, [])
    env = machine.env("none")
    log = tmp_path / "runs.log"
    args = ["--gpus", "0,1", "--lock-dir", str(machine.locks), "--poll", "0.05"]
    results = {}

    def one(who: str) -> None:
        jobs = "".join(recorder(log, who, 0.15) + "\n" for _ in range(4))
        results[who] = run_sgs(args, env=env, input=jobs, text=True)

    threads = [threading.Thread(target=one, args=(who,)) for who in ("A", "B")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [results[w].returncode for w in ("A", "B")] == [0, 0], results
    runs = intervals(log)
    assert sum(len(v) for v in runs.values()) == 8
    for gpu, spans in runs.items():
        spans.sort()
        for (_, end, who), (begin, _, other) in zip(spans, spans[1:]):
            assert end <= begin, f"gpu {gpu}: {who} and {other} overlap"


def test_a_killed_scheduler_frees_its_gpus(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path, [])
    env = machine.env("none")
    args = ["--gpus", "0", "--lock-dir", str(machine.locks), "--poll", "0.05"]
    pidfile, done = tmp_path / "pid", tmp_path / "done"
    first = popen_sgs(args, env=env, stderr=tmp_path / "first.err", stdout=subprocess.DEVNULL,
                      text=True)
    second = None
    try:
        send(first, f"echo $$ > {pidfile}; exec sleep 60")
        poll_until(lambda: read_lines(pidfile), what="first job")
        second = popen_sgs(args, env=env, stderr=tmp_path / "second.err", stdout=subprocess.DEVNULL,
                           text=True)
        send(second, f"touch {done}")
        assert second.stdin is not None
        second.stdin.close()
        poll_until(lambda: "another scheduler has it" in (tmp_path / "second.err").read_text(),
                   what="second scheduler to wait")
        assert not done.exists()
        first.kill()  # SIGKILL: no cleanup of any kind
        first.wait()
        assert second.wait(timeout=10) == 0
        assert done.exists()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        if pidfile.exists():
            try:  # the orphaned job of the killed scheduler
                os.killpg(int(read_lines(pidfile)[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_the_lock_dir_variable_moves_the_default(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path, [])
    moved = tmp_path / "moved"
    result = run_sgs(["--gpus", "3"], env=machine.env("none", SGS_LOCK_DIR=str(moved)),
                     input="true\n", timeout=10, text=True)
    assert result.returncode == 0, result.stderr
    assert (moved / "gpu-3.lock").exists()


def test_no_lock_opts_out(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path, [])
    env = machine.env("none")
    holder = locks_in(machine.locks)
    try:
        assert holder.acquire("0") is None
        result = run_sgs(["--gpus", "0", "--no-lock", "--lock-dir", str(machine.locks)], env=env,
                         input="true\n", timeout=10, text=True)
        assert result.returncode == 0, result.stderr
    finally:
        holder.close()
