"""Where output goes: passthrough, the scheduler's own lines, --tag, --log-dir,
-q/-v, and a downstream or terminal that goes away. Real processes."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

from harness import (
    RUN_TIMEOUT,
    SGS,
    child_env,
    live_pids,
    pipe_bytes,
    poll_until,
    run_sgs,
    sgs_lines,
    unique_sleep,
    wait_for_file,
)

SGS_LINE = re.compile(r"^\[sgs\] ")
DURATION = r"(\d+\.\ds|\d+s|\d+m\d\ds|\d+h\d\dm|\d+d\d\dh)"


def text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


# --- passthrough and the scheduler's lines ------------------------------------------


def test_job_output_passes_through_and_scheduler_lines_go_to_stderr() -> None:
    result = run_sgs(["--gpus", "0"], b"echo out1; echo err1 >&2\necho out2\n")
    assert result.returncode == 0
    assert result.stdout == b"out1\nout2\n", "stdout holds the jobs' output only"
    stderr = text(result.stderr).splitlines()
    assert "err1" in stderr
    others = [line for line in stderr if line != "err1"]
    assert others and all(SGS_LINE.match(line) for line in others), stderr


def test_scheduler_lines_name_job_gpus_status_and_duration() -> None:
    result = run_sgs(["--gpus", "5,6"], b"true\nexit 7\nkill -TERM $$\n")
    assert result.returncode == 1
    lines = sgs_lines(text(result.stderr))
    for job_id in (1, 2, 3):
        assert sum(bool(re.match(rf"job {job_id} started on gpu [56]: ", line))
                   for line in lines) == 1, lines
    assert any(re.fullmatch(rf"job 1 finished on gpu [56] after {DURATION}: exit 0", line)
               for line in lines), lines
    assert any(re.fullmatch(rf"job 2 failed on gpu [56] after {DURATION}: exit 7: exit 7", line)
               for line in lines), lines
    assert any(re.fullmatch(rf"job 3 failed on gpu [56] after {DURATION}: killed by SIGTERM: "
                            r"kill -TERM \$\$", line) for line in lines), lines


def test_quiet_shows_only_failures() -> None:
    ok = run_sgs(["--gpus", "0", "-q"], b"true\ntrue\n")
    assert ok.returncode == 0
    assert ok.stderr == b""
    failed = run_sgs(["--gpus", "0", "--quiet"], b"true\nexit 5\n")
    assert failed.returncode == 1
    lines = sgs_lines(text(failed.stderr))
    assert not any(re.match(r"job \d+ (started|finished)", line) for line in lines), lines
    assert any(line.startswith("job 2 failed") for line in lines), lines


def test_verbose_says_when_a_job_left_processes_behind(markers: List[str]) -> None:
    mark = unique_sleep()
    markers.append(mark)
    result = run_sgs(["--gpus", "0", "-v"], f"sleep {mark} &\n".encode())
    assert result.returncode == 0
    assert re.search(r"^\[sgs\] job 1 left processes behind", text(result.stderr), re.M), \
        text(result.stderr)


# --- --tag ----------------------------------------------------------------------------

# Every fifth line is longer than PIPE_BUF, so a pipe alone would not keep it whole.
PRINTER = """\
import os, sys
j = os.environ["SGS_JOB_ID"]
def filler(c, i):
    return c * (6000 if i % 5 == 0 else 200)
sys.stdout.write("".join(f"J{j} {i:05d} " + filler("x", i) + "\\n" for i in range(2000)))
sys.stdout.flush()
sys.stderr.write("".join(f"E{j} {i:05d} " + filler("y", i) + "\\n" for i in range(300)))
"""


def test_tag_lines_stay_whole_under_concurrency(tmp_path: Path) -> None:
    (tmp_path / "printer.py").write_text(PRINTER)
    job = f"{sys.executable} printer.py\n".encode()
    result = run_sgs(["--gpus", "0,1", "--jobs-per-gpu", "2", "--tag"], job * 4, cwd=tmp_path)
    assert result.returncode == 0, text(result.stderr)
    gpu_of = {int(j): g for j, g in
              re.findall(r"^\[sgs\] job (\d+) started on gpu (\d)", text(result.stderr), re.M)}
    assert sorted(gpu_of) == [1, 2, 3, 4]

    def check(stream: bytes, letter: str, filler: str, count: int, allow_sgs: bool) -> None:
        seen: Dict[int, List[int]] = defaultdict(list)
        pattern = re.compile(rf"\[(\d+)\|gpu (\d)\] {letter}(\d+) (\d{{5}}) ({filler}+)")
        for line in text(stream).split("\n")[:-1]:
            if allow_sgs and SGS_LINE.match(line):
                continue
            m = pattern.fullmatch(line)
            assert m, f"a torn or unprefixed line: {line[:120]!r}"
            job_id, gpu, payload_job, n = int(m[1]), m[2], int(m[3]), int(m[4])
            assert job_id == payload_job, line[:80]
            assert gpu == gpu_of[job_id], line[:80]
            assert len(m[5]) == (6000 if n % 5 == 0 else 200), f"torn line {line[:80]!r}"
            seen[job_id].append(n)
        assert sorted(seen) == [1, 2, 3, 4]
        for job_id, numbers in seen.items():
            assert numbers == list(range(count)), f"job {job_id}: lines lost or reordered"

    check(result.stdout, "J", "x", 2000, allow_sgs=False)
    check(result.stderr, "E", "y", 300, allow_sgs=True)


def test_tag_adds_a_newline_to_an_unterminated_last_line() -> None:
    result = run_sgs(["--gpus", "3", "--tag"], b"printf 'a\\nb'\n")
    assert result.returncode == 0
    assert result.stdout == b"[1|gpu 3] a\n[1|gpu 3] b\n"


def test_tag_prefix_names_all_of_a_jobs_gpus() -> None:
    result = run_sgs(["--gpus", "0,1", "--gpus-per-job", "2", "--tag"], b"echo hi; echo ho >&2\n")
    assert result.returncode == 0
    assert result.stdout == b"[1|gpu 0,1] hi\n"
    assert "[1|gpu 0,1] ho" in text(result.stderr).splitlines()


def _read_to_end(fd: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _printer(lines: int, then: str) -> bytes:
    return (f"i=0; while [ $i -lt {lines} ]; do echo \"line $i " + "z" * 60
            + f"\"; i=$((i+1)); done; {then}\n").encode()


def test_slow_stdout_does_not_stall_the_scheduler(tmp_path: Path, start_sgs) -> None:
    """With --tag, a downstream that does not read (`| less`, a slow `tee`) holds up
    that job's output, not the scheduler: it still starts jobs on free GPUs and
    says so on stderr (its own lines must not wait behind a blocked stdout)."""
    read_end, write_end = os.pipe()
    try:
        sgs = start_sgs(["--gpus", "0,1", "--tag"], stdin=subprocess.PIPE, stdout=write_end)
        os.close(write_end)
        write_end = -1
        sgs.write(_printer(3000, "touch printed"))
        # Nobody reads stdout: the pipe fills up and the copy of job 1's output blocks.
        poll_until(lambda: pipe_bytes(read_end) >= 60000, 10, what="stdout to fill up")
        sgs.write(b"touch second\n")
        try:
            wait_for_file(tmp_path / "second", timeout=3)
            sgs.wait_stderr(r"job 2 finished", timeout=3)
        finally:
            sgs.close_stdin()
            out = _read_to_end(read_end)
        assert sgs.wait() == 0
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    assert len(out.splitlines()) == 3000


def test_tag_keeps_every_line_when_stdout_is_slow(tmp_path: Path, start_sgs) -> None:
    """A job that ends while its last lines still wait for a slow downstream (a
    full pipe) must not lose them when the scheduler exits."""
    read_end, write_end = os.pipe()
    lines = 1500  # about 105 kB: more than one pipe holds, less than two
    try:
        # -q: the scheduler has nothing to say on stderr, so nothing holds it up
        # (see the test above) and it is free to end as soon as the job has.
        sgs = start_sgs(["--gpus", "0", "--tag", "-q"], stdin=subprocess.PIPE, stdout=write_end)
        os.close(write_end)
        write_end = -1
        sgs.write(_printer(lines, "touch printed"))
        sgs.close_stdin()
        # Nobody reads stdout yet: the job fills both pipes, then ends.
        wait_for_file(tmp_path / "printed")
        deadline = time.monotonic() + 1.5  # the scheduler may exit now (it must not lose lines)
        while sgs.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        out = _read_to_end(read_end)
        assert sgs.wait() == 0
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    got = out.decode().splitlines()
    assert all(line.startswith("[1|gpu 0] line ") for line in got)
    assert len(got) == lines, f"{lines - len(got)} of {lines} lines were lost"


# --- --log-dir --------------------------------------------------------------------------


def test_log_dir_gets_one_out_and_err_file_per_job(tmp_path: Path) -> None:
    logs = tmp_path / "a" / "logs"
    result = run_sgs(["--gpus", "0,1", "--log-dir", str(logs)],
                     b"echo out$SGS_JOB_ID; echo err$SGS_JOB_ID >&2\n" * 3 + b"true\n")
    assert result.returncode == 0
    assert logs.is_dir()
    for job_id in (1, 2, 3):
        assert (logs / f"{job_id}.out").read_bytes() == f"out{job_id}\n".encode()
        assert (logs / f"{job_id}.err").read_bytes() == f"err{job_id}\n".encode()
    assert (logs / "4.out").read_bytes() == b"" and (logs / "4.err").read_bytes() == b""
    # The terminal shows only the scheduler's lines.
    assert result.stdout == b""
    assert all(SGS_LINE.match(line) for line in text(result.stderr).splitlines())


def test_log_dir_that_exists_is_used(tmp_path: Path) -> None:
    result = run_sgs(["--gpus", "0", "--log-dir", str(tmp_path)], b"echo hi\n")
    assert result.returncode == 0
    assert (tmp_path / "1.out").read_bytes() == b"hi\n"


# --- a downstream or terminal that goes away ---------------------------------------------


def test_closed_downstream_with_tag_does_not_crash(tmp_path: Path, start_sgs) -> None:
    """`simple_gpu_scheduler --tag ... | head -1`: the scheduler keeps running jobs."""
    job = b"i=0; while [ $i -lt 3000 ]; do echo line $i; i=$((i+1)); done; touch done$SGS_JOB_ID\n"
    sgs = start_sgs(["--gpus", "0", "--tag"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    sgs.write(job * 3)
    sgs.close_stdin()
    assert sgs.proc.stdout is not None
    first = sgs.proc.stdout.readline()
    assert first.startswith(b"[1|gpu 0] line ")
    sgs.proc.stdout.close()  # as `head -1` exits
    assert sgs.wait() == 0, sgs.stderr()
    assert "Traceback" not in sgs.stderr()
    for job_id in (1, 2, 3):
        assert (tmp_path / f"done{job_id}").exists()


def test_closed_downstream_in_passthrough_does_not_crash(tmp_path: Path, start_sgs) -> None:
    # The job's own writes get SIGPIPE (as in any pipeline); the scheduler goes on.
    job = b"seq 1 200000; touch done$SGS_JOB_ID\n"
    sgs = start_sgs(["--gpus", "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    sgs.write(job * 3)
    sgs.close_stdin()
    assert sgs.proc.stdout is not None
    assert sgs.proc.stdout.readline() == b"1\n"
    sgs.proc.stdout.close()
    assert sgs.wait() == 0, sgs.stderr()
    assert "Traceback" not in sgs.stderr()
    for job_id in (1, 2, 3):
        assert (tmp_path / f"done{job_id}").exists()


def test_closed_stderr_does_not_stop_the_run(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will ever read the scheduler's own lines
    try:
        proc = subprocess.Popen(
            [SGS, "--gpus", "0,1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=write_end, cwd=tmp_path, env=child_env())
    finally:
        os.close(write_end)
    try:
        proc.communicate(b"touch a\ntouch b\nexit 3\ntouch c\n", timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 1  # `exit 3` failed; nothing crashed
    for name in "abc":
        assert (tmp_path / name).exists()


def _read_some(fd: int) -> bytes:
    ready, _, _ = select.select([fd], [], [], 0.05)
    return os.read(fd, 65536) if ready else b""


def test_hung_up_terminal_does_not_stop_the_run(tmp_path: Path, start_sgs) -> None:
    """The terminal goes away: every write to it fails with EIO; jobs still run."""
    master, slave = pty.openpty()
    try:
        sgs = start_sgs(["--gpus", "0", "--tag"], stdin=subprocess.PIPE, stdout=slave,
                  stderr=slave)
    finally:
        os.close(slave)
    sgs.write(b"echo hello; touch first\n")
    wait_for_file(tmp_path / "first")
    poll_until(lambda: b"hello" in _read_some(master), 5, what="output on the terminal")
    os.close(master)  # hang up
    sgs.write(b"echo more; touch second\nexit 0\ntouch third\n")
    assert sgs.wait() == 0
    for name in ("second", "third"):
        assert (tmp_path / name).exists()


def test_sighup_with_a_hung_up_terminal_drains(tmp_path: Path, start_sgs) -> None:
    master, slave = pty.openpty()
    try:
        sgs = start_sgs(["--gpus", "0", "--tag"], stdin=subprocess.PIPE, stdout=slave)
    finally:
        os.close(slave)
    os.close(master)
    sgs.write(b"echo gone; touch a.started; while [ ! -e a.release ]; do sleep 0.02; done\n"
              b"touch never\n")
    wait_for_file(tmp_path / "a.started")
    sgs.signal(signal.SIGHUP)
    sgs.wait_stderr(r"draining")
    (tmp_path / "a.release").touch()
    assert sgs.wait() == 129
    assert not (tmp_path / "never").exists()
    assert "Traceback" not in sgs.stderr()


def test_no_job_process_is_left_after_a_normal_end(tmp_path: Path, markers: List[str]) -> None:
    mark = unique_sleep()
    markers.append(mark)
    result = run_sgs(["--gpus", "0", "--log-dir", str(tmp_path / "logs")],
                     f"sleep {mark} & echo started\n".encode())
    assert result.returncode == 0
    poll_until(lambda: not live_pids(mark), 3, what="the job's leftover to be gone")
