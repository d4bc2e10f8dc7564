"""One owner per GPU across schedulers: the lock files, and two real schedulers."""

from __future__ import annotations

import os
import signal
import stat
import threading
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
from gpu_fakes import FakeMachine, read_lines, run, send, start, wait_for

from simple_gpu_scheduler.gpus.locks import GpuLocks, LockDirError, lock_file_name, open_lock_dir


def locks_in(path: Path) -> GpuLocks:
    return GpuLocks(open_lock_dir(str(path)))


def test_a_lock_is_held_by_one_owner_until_released(tmp_path: Path) -> None:
    first, second = locks_in(tmp_path / "locks"), locks_in(tmp_path / "locks")
    try:
        assert first.acquire("0") is None
        assert first.acquire("0") is None  # already ours
        assert second.acquire("0") == "another scheduler has it"
        assert second.acquire("1") is None
        first.release("0")
        assert second.acquire("0") is None
    finally:
        first.close()
        second.close()


def test_the_lock_directory_is_made_for_everybody(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        locks = locks_in(tmp_path / "locks")
        assert locks.acquire("MIG-ab/c") is None
    finally:
        os.umask(old)
    mode = (tmp_path / "locks").stat().st_mode
    assert stat.S_IMODE(mode) == 0o1777
    lock_file = tmp_path / "locks" / lock_file_name("MIG-ab/c")
    assert lock_file.name == "gpu-MIG-ab%2Fc.lock"
    assert stat.S_IMODE(lock_file.stat().st_mode) == 0o644
    locks.close()


def test_unsafe_lock_directories_are_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(LockDirError, match="symlink"):
        open_lock_dir(str(tmp_path / "link"))
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(LockDirError, match="not sticky"):
        open_lock_dir(str(open_dir))


def test_planted_symlinks_and_fifos_are_not_followed(tmp_path: Path) -> None:
    directory = tmp_path / "locks"
    locks = locks_in(directory)
    target = tmp_path / "precious"
    target.write_text("keep me")
    (directory / lock_file_name("0")).symlink_to(target)
    os.mkfifo(directory / lock_file_name("1"))
    assert "cannot be opened" in (locks.acquire("0") or "")
    assert "cannot be opened" in (locks.acquire("1") or "")  # and it did not hang
    assert target.read_text() == "keep me"
    locks.close()


def test_usage_error_for_a_bad_lock_dir(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path, [])
    bad = tmp_path / "open"
    bad.mkdir()
    bad.chmod(0o777)
    result = run(["--gpus", "0", "--lock-dir", str(bad)], env=machine.env("none"), input="true\n")
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
        results[who] = run(args, env=env, input=jobs)

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
    first = start(args, env, stderr=tmp_path / "first.err")
    second = None
    try:
        send(first, f"echo $$ > {pidfile}; exec sleep 60")
        wait_for(lambda: read_lines(pidfile), what="first job")
        second = start(args, env, stderr=tmp_path / "second.err")
        send(second, f"touch {done}")
        assert second.stdin is not None
        second.stdin.close()
        wait_for(lambda: "another scheduler has it" in (tmp_path / "second.err").read_text(),
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
    result = run(["--gpus", "3"], env=machine.env("none", SGS_LOCK_DIR=str(moved)),
                 input="true\n", timeout=10)
    assert result.returncode == 0, result.stderr
    assert (moved / "gpu-3.lock").exists()


def test_no_lock_opts_out(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path, [])
    env = machine.env("none")
    holder = locks_in(machine.locks)
    try:
        assert holder.acquire("0") is None
        result = run(["--gpus", "0", "--no-lock", "--lock-dir", str(machine.locks)],
                     env=env, input="true\n", timeout=10)
        assert result.returncode == 0, result.stderr
    finally:
        holder.close()
