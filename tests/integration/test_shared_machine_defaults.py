"""Safe by default on a machine shared with colleagues: the traps a new user
fell into (GPUs in use by others, wrong ids, option prefixes, a closed
downstream, a replaced queue file, continued lines in messages)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import List

from harness import REPO_ROOT, FakeMachine, GiB, fake_gpu, popen_sgs, read_lines, run_sgs

SHOW = "echo $CUDA_VISIBLE_DEVICES"
#: A pid that no process of ours has: a process in another container (pid namespace).
INVISIBLE = 4_000_000


def locks(machine: FakeMachine) -> List[str]:
    return ["--lock-dir", str(machine.locks)]


def colleague(used: int) -> dict:
    return {"pid": INVISIBLE, "used": used}


def busy_column(machine: FakeMachine, *args: str) -> List[str]:
    """--list-gpus's BUSY verdict per GPU ("no", or "yes" with why), and its rows."""
    result = run_sgs(["--list-gpus", *args], env=machine.env(), text=True)
    assert result.returncode == 0, result.stderr
    head, *rows = result.stdout.splitlines()
    start, end = head.index("BUSY"), head.index("PROCESSES")
    return [row[start:end].split(":")[0].strip() for row in rows]


def processes_column(machine: FakeMachine) -> List[str]:
    result = run_sgs(["--list-gpus"], env=machine.env(), text=True)
    head, *rows = result.stdout.splitlines()
    return [row[head.index("PROCESSES"):].strip() for row in rows]


def test_a_process_we_cannot_see_keeps_a_gpu_busy_in_a_run_and_in_the_list(
        tmp_path: Path) -> None:
    # GPU 0 holds a process of another pid namespace (not in our /proc).
    machine = FakeMachine(tmp_path, [fake_gpu(0, processes=[colleague(GiB)]), fake_gpu(1)])
    result = run_sgs(["--only-idle", *locks(machine)], env=machine.env(),
                     input=f"{SHOW}\n{SHOW}\n", text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "1"]  # never on GPU 0
    assert busy_column(machine, "--only-idle") == ["yes", "no"]


def test_a_gpu_a_colleague_uses_is_busy_by_default(tmp_path: Path) -> None:
    # Four GPUs; GPU 2 holds someone else's 18 GiB process at 95% utilization.
    gpus = [fake_gpu(i) for i in range(4)]
    gpus[2].update(processes=[colleague(18 * GiB)], util=95)
    machine = FakeMachine(tmp_path, gpus)
    jobs = "".join(f"{SHOW}; sleep 0.2\n" for _ in range(6))
    result = run_sgs(locks(machine), env=machine.env(), input=jobs, text=True)
    assert result.returncode == 0, result.stderr
    assert "2" not in result.stdout.split() and len(result.stdout.split()) == 6
    assert "gpu 2 is busy: 18.0GiB of its memory is used by other processes" in result.stderr
    assert busy_column(machine) == ["no", "no", "yes", "no"]
    # user unknown: the process is in another container
    assert processes_column(machine) == ["-", "-", f"?:{INVISIBLE}(18.0GiB)", "-"]

    # --max-gpu-memory 100% turns the default off.
    off = run_sgs(["--max-gpu-memory", "100%", "--jobs-per-gpu", "2", *locks(machine)],
                  env=machine.env(), input=jobs.replace("sleep 0.2", "sleep 0.5"), text=True)
    assert off.returncode == 0, off.stderr
    assert "2" in off.stdout.split()


def test_explicit_ids_are_checked_too(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path, [fake_gpu(i) for i in range(4)])
    bad = run_sgs(["--gpus", "7", *locks(machine)], env=machine.env(), input=f"{SHOW}\n",
                  text=True)
    assert bad.returncode == 2 and bad.stdout == ""
    assert "--gpus: no GPU 7 here (found: 0, 1, 2, 3)" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    # The colleague's GPU is busy when named explicitly, too.
    machine.gpus[1]["processes"] = [colleague(40 * GiB)]
    machine.write()
    result = run_sgs(["--gpus", "0,1", *locks(machine)], env=machine.env(),
                     input=f"{SHOW}; sleep 0.3\n{SHOW}\n", text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "0"]


def test_gpu_ranges(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path, [])
    result = run_sgs(["--gpus", "0-3", "--jobs-per-gpu", "1", *locks(machine)],
                     env=machine.env("none"), input=f"{SHOW}; sleep 0.3\n" * 4, text=True)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == ["0", "1", "2", "3"]
    empty = run_sgs(["--gpus", "3-1"], env=machine.env("none"), text=True)
    assert empty.returncode == 2 and "range 3-1 is empty" in empty.stderr


def test_a_command_file_given_as_an_argument_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "jobs.txt").write_text("echo hi\n")
    lock_dir = tmp_path / "locks"
    result = run_sgs(["--gpus", "0,1", "jobs.txt", "--lock-dir", str(lock_dir)], cwd=tmp_path,
                     text=True)
    assert result.returncode == 2
    assert "jobs.txt is a file, not a GPU id" in result.stderr and "< jobs.txt" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("**/gpu-jobs.txt.lock"))


def test_options_are_never_abbreviated() -> None:
    for args in (["--gpus", "0,1", "--jobs", "4"], ["--gpus", "0", "--time", "1"],
                 ["--gpus", "0", "--jobs-per", "2"]):
        result = run_sgs(args, input=b"true\n")
        assert result.returncode == 2, args
        assert b"unrecognized arguments" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_jobs_that_start_after_the_downstream_closed_do_not_die_of_sigpipe(
        tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    marks = tmp_path / "marks"
    # Job 1 prints the line the reader takes; job 2 (silent) holds the GPU until
    # the reader has gone; jobs 3 to 6 start after that and print.
    jobs = ["echo one", f"while [ ! -e {gate} ]; do sleep 0.02; done"]
    jobs += [f"echo line {i}; echo ok >> {marks}" for i in range(4)]
    proc = popen_sgs(["--gpus", "0"], input=("\n".join(jobs) + "\n").encode(),
                     cwd=tmp_path, stdout=subprocess.PIPE, stderr=tmp_path / "err")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"one\n"
        proc.stdout.close()  # as `| head -1` does
        gate.touch()
        assert proc.wait(timeout=30) == 0, (tmp_path / "err").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert read_lines(marks) == ["ok"] * 4


def test_docs_and_help_use_a_queue_that_survives_replacement() -> None:
    """`tail -f` loses a file that an editor or `sed -i` replaces; `tail -F` follows it."""
    help_text = run_sgs(["--help"], text=True).stdout
    readme = (REPO_ROOT / "README.md").read_text()
    queue_example = (REPO_ROOT / "examples" / "queue.sh").read_text()
    for text in (help_text, queue_example, readme.split("## Performance")[0]):
        assert "tail -F" in text
        assert "tail -f " not in text


def test_messages_show_a_continued_command_as_the_shell_reads_it() -> None:
    result = run_sgs(["--gpus", "0"], input="python3 -c pass \\\n    --flag 1 \\\n    --x 2\n",
                     text=True)
    assert "job 1 started on gpu 0: python3 -c pass --flag 1 --x 2" in result.stderr
    assert "\\" not in result.stderr
