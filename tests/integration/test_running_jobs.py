"""Running commands through the installed command: order, numbering, slots,
environment, shell, bad input and leftovers. Real processes, no mocks."""

from __future__ import annotations

import os
import pwd
import re
import resource
import signal
import subprocess
import time
from pathlib import Path
from typing import List

import pytest
from harness import (
    Recorder,
    Sgs,
    child_env,
    cpu_seconds,
    live_pids,
    max_concurrency_per_gpu,
    poll_until,
    run_sgs,
    started_ids,
    unique_sleep,
    wait_for_file,
    wakeups,
)

from simple_gpu_scheduler.input.lines import MAX_COMMAND_BYTES


def lines_of(*commands: str) -> bytes:
    return "".join(c + "\n" for c in commands).encode()


def stderr_of(result: subprocess.CompletedProcess) -> str:
    return result.stderr.decode("utf-8", "replace")


# --- each command once, in order, on a slot of its own ------------------------------


def test_each_command_runs_exactly_once_in_input_order(tmp_path: Path, recorder: Recorder
                                                       ) -> None:
    labels = [f"c{i}" for i in range(1, 31)]
    result = run_sgs(["--gpus", "0,1", "--jobs-per-gpu", "3"],
                     lines_of(*(recorder.command(label, 0.01) for label in labels)))
    assert result.returncode == 0, stderr_of(result)
    records = recorder.all_records(labels)  # fails if any ran 0 or 2 times
    # Numbered 1, 2, 3... in input order, and started first in, first out.
    assert [r.job_id for r in records] == list(range(1, 31))
    assert started_ids(stderr_of(result)) == list(range(1, 31))
    assert max(max_concurrency_per_gpu(records).values()) <= 3


@pytest.mark.parametrize("gpus, jobs_per_gpu, gpus_per_job", [
    ("0,1", 1, 1),
    ("0,1,2", 2, 1),
    ("0,1,2", 2, 2),
    ("a,b,c,d", 1, 3),
])
def test_no_slot_is_double_booked(recorder: Recorder, gpus: str, jobs_per_gpu: int,
                                  gpus_per_job: int) -> None:
    labels = [f"j{i}" for i in range(9)]
    result = run_sgs(
        ["--gpus", gpus, "--jobs-per-gpu", str(jobs_per_gpu), "--gpus-per-job", str(gpus_per_job)],
        lines_of(*(recorder.command(label, 0.15) for label in labels)))
    assert result.returncode == 0, stderr_of(result)
    records = recorder.all_records(labels)
    ids = gpus.split(",")
    for r in records:
        assert len(r.gpus) == gpus_per_job and len(set(r.gpus)) == gpus_per_job, r
        assert set(r.gpus) <= set(ids), r
    peaks = max_concurrency_per_gpu(records)
    assert all(peak <= jobs_per_gpu for peak in peaks.values()), peaks
    # The run used the capacity it had (so the check above means something).
    concurrent_jobs = (len(ids) * jobs_per_gpu) // gpus_per_job
    if concurrent_jobs > 1:
        assert max(peaks.values()) == jobs_per_gpu, peaks


def test_gpus_per_job_gets_comma_joined_distinct_ids(tmp_path: Path) -> None:
    result = run_sgs(["--gpus", "3", "5", "--gpus-per-job", "2"],
                     lines_of('printf %s "$CUDA_VISIBLE_DEVICES" > out'), cwd=tmp_path)
    assert result.returncode == 0, stderr_of(result)
    assert (tmp_path / "out").read_text() == "3,5"


# --- a live queue ----------------------------------------------------------------------


def test_job_starts_while_stdin_is_still_open(tmp_path: Path, start_sgs) -> None:
    sgs: Sgs = start_sgs(["--gpus", "0"])
    sgs.write(b"touch first\n")
    wait_for_file(tmp_path / "first")
    sgs.write(b"# a comment\n\ntouch second\n")
    wait_for_file(tmp_path / "second")
    assert sgs.alive()  # still waiting for more input
    assert sgs.wait() == 0
    assert started_ids(sgs.stderr()) == [1, 2]


def test_idle_scheduler_uses_no_cpu(tmp_path: Path, start_sgs) -> None:
    sgs: Sgs = start_sgs(["--gpus", "0"])
    sgs.write(b"true\n")
    sgs.wait_stderr(r"job 1 finished")
    before, woke = cpu_seconds(sgs.pid), wakeups(sgs.pid)
    time.sleep(1.5)  # the measurement window: an idle scheduler must stay asleep in it
    used, woke = cpu_seconds(sgs.pid) - before, wakeups(sgs.pid) - woke
    assert used < 0.05, f"idle scheduler used {used:.3f}s of CPU in 1.5s"
    # No sleep-polling loop: its threads do not even wake up (a 10 ms poll wakes 150 times).
    assert woke <= 3, f"idle scheduler woke {woke} times in 1.5s"
    assert sgs.wait() == 0


def test_read_ahead_is_bounded_so_a_generator_is_back_pressured(tmp_path: Path, start_sgs
                                                                 ) -> None:
    sgs: Sgs = start_sgs(["--gpus", "0", "-q"])
    sgs.write(b"touch started; while [ ! -e release ]; do sleep 0.02; done\n")
    wait_for_file(tmp_path / "started")
    assert sgs.proc.stdin is not None
    fd = sgs.proc.stdin.fileno()
    os.set_blocking(fd, False)
    chunk = b"true\n" * 4096
    written = 0
    blocked_since = None
    # Keep offering input until the scheduler has refused it for a while.
    while True:
        try:
            written += os.write(fd, chunk)
            blocked_since = None
        except BlockingIOError:
            blocked_since = blocked_since or time.monotonic()
            if time.monotonic() - blocked_since > 0.5:
                break
            time.sleep(0.02)
        assert written < 8 * 1024 * 1024, "the scheduler reads its input without bound"
    os.set_blocking(fd, True)
    # The pipe's buffer and a read chunk or two, not the whole input.
    assert written < 1024 * 1024, written
    sgs.signal(signal.SIGTERM)
    sgs.wait_stderr(r"draining")
    (tmp_path / "release").touch()
    sgs.close_stdin()
    assert sgs.wait() == 143


# --- the job's stdin and environment -------------------------------------------------


def test_job_stdin_is_empty_and_cannot_eat_the_queue(tmp_path: Path) -> None:
    # 200 kB of comments: more than the scheduler reads at once, so a job that
    # shared its stdin would find the later commands there and eat them.
    padding = "\n".join(["# " + "p" * 98] * 2000)
    result = run_sgs(["--gpus", "0"],
                     lines_of("cat > got", padding, "touch second", "read line || touch read_eof"),
                     cwd=tmp_path)
    assert result.returncode == 0, stderr_of(result)
    assert (tmp_path / "got").read_bytes() == b""
    assert (tmp_path / "second").exists()
    assert (tmp_path / "read_eof").exists()


def test_job_stdin_is_dev_null_while_the_queue_stays_open(tmp_path: Path, start_sgs) -> None:
    sgs: Sgs = start_sgs(["--gpus", "0"])
    sgs.write(b"cat > got; touch catted\n")
    wait_for_file(tmp_path / "catted")  # cat did not wait for the queue
    sgs.write(b"touch second\n")
    wait_for_file(tmp_path / "second")
    assert sgs.wait() == 0
    assert (tmp_path / "got").read_bytes() == b""


def test_job_environment(tmp_path: Path) -> None:
    env = child_env({"MY_VAR": "mine", "CUDA_VISIBLE_DEVICES": "99", "SGS_JOB_ID": "x"})
    show = 'printf "%s|%s|%s|%s" "$CUDA_VISIBLE_DEVICES" "$SGS_JOB_ID" "$CUDA_DEVICE_ORDER" ' \
           '"$MY_VAR" > env$SGS_JOB_ID'
    result = run_sgs(["--gpus", "4"], lines_of(show, show), cwd=tmp_path, env=env)
    assert result.returncode == 0, stderr_of(result)
    assert (tmp_path / "env1").read_text() == "4|1|PCI_BUS_ID|mine"
    assert (tmp_path / "env2").read_text() == "4|2|PCI_BUS_ID|mine"


def test_user_cuda_device_order_wins(tmp_path: Path) -> None:
    env = child_env({"CUDA_DEVICE_ORDER": "FASTEST_FIRST"})
    result = run_sgs(["--gpus", "0"], lines_of('printf %s "$CUDA_DEVICE_ORDER" > out'),
                     cwd=tmp_path, env=env)
    assert result.returncode == 0, stderr_of(result)
    assert (tmp_path / "out").read_text() == "FASTEST_FIRST"


def test_every_job_runs_in_a_session_of_its_own(tmp_path: Path, start_sgs) -> None:
    sgs: Sgs = start_sgs(["--gpus", "0"], new_session=False)
    sgs.write(b"cut -d' ' -f1,5,6 /proc/$$/stat > ids\n")
    wait_for_file(tmp_path / "ids")
    assert sgs.wait() == 0
    pid, pgrp, sid = poll_until(lambda: (tmp_path / "ids").read_text().split(), 5)
    assert pid == pgrp == sid, "the job's shell leads its own session and process group"
    # The scheduler shares the test's session and group (a terminal's); the job does not.
    assert int(sid) != os.getsid(0) and int(pgrp) != os.getpgid(0)


# --- the shell ------------------------------------------------------------------------


def make_wrapper_shell(tmp_path: Path) -> Path:
    shell = tmp_path / "myshell"
    shell.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> {tmp_path}/shell.log\nexec /bin/sh "$@"\n')
    shell.chmod(0o755)
    return shell


def test_default_shell_is_dollar_shell_run_as_shell_dash_c(tmp_path: Path) -> None:
    shell = make_wrapper_shell(tmp_path)
    command = "echo hi | tr a-z A-Z > out && echo yes >> out; false || echo no >> out"
    result = run_sgs(["--gpus", "0"], lines_of(command), cwd=tmp_path,
                     env=child_env(shell=str(shell)))
    assert result.returncode == 0, stderr_of(result)
    assert (tmp_path / "shell.log").read_text() == f"-c\n{command}\n"
    assert (tmp_path / "out").read_text() == "HI\nyes\nno\n"


@pytest.mark.parametrize("shell_value", [None, ""])
def test_without_dollar_shell_the_login_shell_runs_jobs(tmp_path: Path, shell_value) -> None:
    expected = pwd.getpwuid(os.getuid()).pw_shell or "/bin/sh"
    env = child_env(shell=None) if shell_value is None else child_env(shell=shell_value)
    result = run_sgs(["--gpus", "0"], lines_of('printf %s "$0" > out'), cwd=tmp_path, env=env)
    assert result.returncode == 0, stderr_of(result)
    assert (tmp_path / "out").read_text() == expected


def test_shell_option_overrides_dollar_shell(tmp_path: Path) -> None:
    shell = make_wrapper_shell(tmp_path)
    result = run_sgs(["--gpus", "0", "--shell", "/bin/sh"], lines_of('printf %s "$0" > out'),
                     cwd=tmp_path, env=child_env(shell=str(shell)))
    assert result.returncode == 0, stderr_of(result)
    assert (tmp_path / "out").read_text() == "/bin/sh"
    assert not (tmp_path / "shell.log").exists()


def test_missing_shell_fails_every_job_with_a_reason(tmp_path: Path) -> None:
    result = run_sgs(["--gpus", "0", "--shell", "/nonexistent/sh"],
                     lines_of("touch a", "touch b"), cwd=tmp_path)
    stderr = stderr_of(result)
    assert result.returncode == 1, stderr
    for job_id in (1, 2):
        assert re.search(rf"^\[sgs\] job {job_id} failed(?: on gpu \S+)?: .*/nonexistent/sh",
                         stderr, re.M), stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "a").exists()


def test_shell_that_is_not_executable_fails_the_jobs(tmp_path: Path) -> None:
    shell = tmp_path / "noexec"
    shell.write_text("#!/bin/sh\n")
    shell.chmod(0o644)
    result = run_sgs(["--gpus", "0", "--shell", str(shell)], lines_of("true"))
    assert result.returncode == 1, stderr_of(result)
    assert re.search(r"job 1 failed(?: on gpu \S+)?: .*noexec", stderr_of(result))


# --- the input rules, end to end --------------------------------------------------------


def test_blank_and_comment_lines_get_no_number(tmp_path: Path) -> None:
    data = (b"# header\n\n   \n\r\n"
            b"printf %s $SGS_JOB_ID > a\r\n"
            b"  # indented comment\n"
            b"printf %s $SGS_JOB_ID > b\n")
    result = run_sgs(["--gpus", "0"], data, cwd=tmp_path)
    assert result.returncode == 0, stderr_of(result)
    assert (tmp_path / "a").read_text() == "1"  # and the CR did not reach the file name
    assert (tmp_path / "b").read_text() == "2"
    assert started_ids(stderr_of(result)) == [1, 2]


def test_backslash_continuation_is_one_job(tmp_path: Path) -> None:
    data = b"printf '%s,' one \\\n  two \\\n  three > out\nprintf %s $SGS_JOB_ID > id\n"
    result = run_sgs(["--gpus", "0"], data, cwd=tmp_path)
    assert result.returncode == 0, stderr_of(result)
    assert (tmp_path / "out").read_text() == "one,two,three,"
    assert (tmp_path / "id").read_text() == "2"


def test_latin1_line_runs_unchanged(tmp_path: Path) -> None:
    result = run_sgs(["--gpus", "0"], b"printf %s 'caf\xe9' > out; touch 'f\xe9'\n", cwd=tmp_path)
    assert result.returncode == 0, stderr_of(result)
    assert (tmp_path / "out").read_bytes() == b"caf\xe9"
    assert (tmp_path / os.fsdecode(b"f\xe9")).exists()


def test_nul_byte_is_a_failed_job_and_the_run_goes_on(tmp_path: Path) -> None:
    result = run_sgs(["--gpus", "0"], b"touch a\0b\ntouch next\n", cwd=tmp_path)
    stderr = stderr_of(result)
    assert result.returncode == 1, stderr
    assert re.search(r"^\[sgs\] job 1 failed(?: on gpu \S+)?: .*NUL", stderr, re.M), stderr
    assert (tmp_path / "next").exists()
    assert not (tmp_path / "a").exists()


def test_over_long_line_is_a_failed_job_and_the_run_goes_on(tmp_path: Path) -> None:
    long_line = b": " + b"x" * (200 * 1024) + b"; touch long\n"
    result = run_sgs(["--gpus", "0"], long_line + b"touch next\n", cwd=tmp_path)
    stderr = stderr_of(result)
    assert result.returncode == 1, stderr
    failed = [line for line in stderr.splitlines() if line.startswith("[sgs] job 1 failed")]
    assert len(failed) == 1 and str(len(long_line) - 1) in failed[0], stderr
    assert len(failed[0]) < 1000, "the reason is one short line"
    assert (tmp_path / "next").exists()
    assert not (tmp_path / "long").exists()
    assert re.search(r"^\[sgs\] job 2 finished", stderr, re.M)


def test_command_of_the_maximum_length_runs(tmp_path: Path) -> None:
    head = b"touch max; : "
    command = head + b"x" * (MAX_COMMAND_BYTES - len(head))
    assert len(command) == MAX_COMMAND_BYTES
    result = run_sgs(["--gpus", "0"], command + b"\n", cwd=tmp_path)
    assert result.returncode == 0, stderr_of(result)[:2000]
    assert (tmp_path / "max").exists()


def test_crlf_command_of_the_maximum_length_runs(tmp_path: Path) -> None:
    # The CR is part of the line end, not of the command: the command fits.
    head = b"touch max; : "
    command = head + b"x" * (MAX_COMMAND_BYTES - len(head))
    result = run_sgs(["--gpus", "0"], command + b"\r\n", cwd=tmp_path)
    assert result.returncode == 0, stderr_of(result)[:300]
    assert (tmp_path / "max").exists()


def test_command_one_byte_over_the_maximum_is_a_failed_job(tmp_path: Path) -> None:
    head = b"touch over; : "
    command = head + b"x" * (MAX_COMMAND_BYTES + 1 - len(head))
    result = run_sgs(["--gpus", "0"], command + b"\ntouch next\n", cwd=tmp_path)
    stderr = stderr_of(result)
    assert result.returncode == 1, stderr[:300]
    assert re.search(rf"^\[sgs\] job 1 failed.*{MAX_COMMAND_BYTES + 1} bytes", stderr, re.M), \
        stderr[:300]
    assert not (tmp_path / "over").exists() and (tmp_path / "next").exists()


def test_command_the_kernel_refuses_is_a_failed_job_with_a_reason(tmp_path: Path) -> None:
    """Argument and environment together past the kernel's limit: E2BIG at exec."""
    limit = 8 * 1024 * 1024 // 4  # ARG_MAX with the 8 MiB stack set below
    hard = resource.getrlimit(resource.RLIMIT_STACK)[1]
    if hard != resource.RLIM_INFINITY and hard < 8 * 1024 * 1024:
        pytest.skip("cannot raise the stack limit to 8 MiB here")

    def set_stack() -> None:
        resource.setrlimit(resource.RLIMIT_STACK, (8 * 1024 * 1024, 8 * 1024 * 1024))

    env = child_env()
    used = sum(len(k) + len(v) + 2 + 8 for k, v in env.items())
    room = limit - used - 100_000  # leaves 100 kB for argv: enough to start, not for 120 kB
    var = 0
    while room > 200:
        size = min(room - 100, 100_000)
        env[f"PAD{var}"] = "p" * size
        room -= size + len(f"PAD{var}") + 2 + 8
        var += 1
    command = b"touch big; : " + b"x" * 120_000
    result = run_sgs(["--gpus", "0"], command + b"\ntouch small\n", cwd=tmp_path, env=env,
                     preexec_fn=set_stack)
    stderr = stderr_of(result)
    assert result.returncode == 1, stderr[:3000]
    assert re.search(r"^\[sgs\] job 1 failed(?: on gpu \S+)?: could not start: .*(E2BIG|long)",
                     stderr, re.M), stderr[:3000]
    assert (tmp_path / "small").exists()
    assert not (tmp_path / "big").exists()


# --- exit statuses ------------------------------------------------------------------------


def test_exit_0_when_every_command_succeeded() -> None:
    assert run_sgs(["--gpus", "0"], lines_of("true", "exit 0")).returncode == 0


def test_exit_0_for_empty_input() -> None:
    result = run_sgs(["--gpus", "0"], b"# nothing\n\n")
    assert result.returncode == 0, stderr_of(result)


def test_exit_1_when_any_command_failed_and_the_rest_still_ran(tmp_path: Path) -> None:
    result = run_sgs(["--gpus", "0"], lines_of("true", "exit 3", "touch after"), cwd=tmp_path)
    stderr = stderr_of(result)
    assert result.returncode == 1, stderr
    assert re.search(r"^\[sgs\] job 2 failed on gpu 0 after \S+: exit 3: exit 3$", stderr, re.M)
    assert (tmp_path / "after").exists()


def test_job_killed_by_a_signal_is_failed_and_named(tmp_path: Path) -> None:
    result = run_sgs(["--gpus", "0"], lines_of("kill -USR2 $$", "true"))
    stderr = stderr_of(result)
    assert result.returncode == 1, stderr
    assert re.search(r"^\[sgs\] job 1 failed on gpu 0 after \S+: killed by SIGUSR2", stderr, re.M)


# --- leftovers of a job ------------------------------------------------------------------


def test_processes_a_job_leaves_behind_are_terminated(tmp_path: Path, start_sgs,
                                                      markers: List[str]) -> None:
    mark = unique_sleep()
    markers.append(mark)
    sgs: Sgs = start_sgs(["--gpus", "0", "--kill-grace", "5"])
    sgs.write(f"sleep {mark} & touch bg\n".encode())
    sgs.wait_stderr(r"job 1 finished")
    # SIGTERM reached the leftover while the scheduler is still running.
    poll_until(lambda: not live_pids(mark), 3, what="the leftover sleep to be terminated")
    assert sgs.alive()
    assert sgs.wait() == 0


def test_leftover_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path, start_sgs,
                                                                  markers: List[str]) -> None:
    mark = unique_sleep()
    markers.append(mark)
    sgs: Sgs = start_sgs(["--gpus", "0", "--kill-grace", "1"])
    sgs.write(f"trap '' TERM; sleep {mark} &\n".encode())
    sgs.wait_stderr(r"job 1 finished")
    t0 = time.monotonic()
    assert live_pids(mark), "SIGTERM is ignored: the leftover lives until the grace ends"
    poll_until(lambda: not live_pids(mark), 5, what="SIGKILL after --kill-grace")
    assert time.monotonic() - t0 > 0.5
    assert sgs.alive(), "killed by the timer, not by the scheduler's exit"
    assert sgs.wait() == 0


def test_leftovers_are_killed_when_the_scheduler_exits(tmp_path: Path, start_sgs,
                                                       markers: List[str]) -> None:
    mark = unique_sleep()
    markers.append(mark)
    # The leftover ignores SIGTERM: it gets --kill-grace, then SIGKILL, and the
    # scheduler exits only once it is gone (its GPU is held until then).
    sgs: Sgs = start_sgs(["--gpus", "0", "--kill-grace", "1"])
    sgs.write(f"trap '' TERM; sleep {mark} &\n".encode())
    sgs.close_stdin()
    started = time.monotonic()
    assert sgs.wait(timeout=15) == 0
    assert time.monotonic() - started >= 0.9, "the leftover did not get its grace"
    assert not live_pids(mark), "a leftover outlived the scheduler"
