"""The end-of-run summary, the resume hint and ``--progress``, through the
installed command with its stderr on a pseudo-terminal or on a pipe.

The text of the status line and of the summary are pure functions of a
`Snapshot`, tested in unit/test_progress_and_summary_text.py.
"""

from __future__ import annotations

import os
import pty
import re
import select
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import List, Sequence, Tuple

from harness import PROGRESS_STATUS as STATUS
from harness import poll_until, popen_sgs, run_sgs, stop

from simple_gpu_scheduler.report import progress
from simple_gpu_scheduler.report.joblog import read_joblog


def sgs_lines(stderr: bytes) -> List[str]:
    return [x[len("[sgs] "):] for x in stderr.decode("utf-8", "replace").splitlines()
            if x.startswith("[sgs] ")]


# ---------------------------------------------------------------- the summary, for real


def test_summary_and_resume_hint_that_works(tmp_path: Path) -> None:
    log = tmp_path / "my job log.tsv"
    commands = b"true\ntest -e fixed\necho 3 >> ran\ntest -e fixed2\n"
    args = ["--gpus", "0", "--joblog", str(log)]
    first = run_sgs(args, commands, cwd=tmp_path, from_file=True)
    assert first.returncode == 1
    said = sgs_lines(first.stderr)
    summary = said[-3:]
    assert re.fullmatch(r"done in \d+:\d\d:\d\d: 2 of 4 succeeded, 2 failed, 0 not started",
                        summary[0]), summary
    assert summary[1] == "failed jobs: 2, 4"
    prefix = "to run what did not succeed, feed the same input to: "
    assert summary[2].startswith(prefix + "simple_gpu_scheduler ")
    hint = shlex.split(summary[2][len(prefix):])
    assert hint == ["simple_gpu_scheduler", *args, "--resume-failed"]

    # The hint, run as it is with the same input, runs exactly what failed.
    (tmp_path / "fixed").touch()
    (tmp_path / "fixed2").touch()
    second = run_sgs(hint[1:], commands, cwd=tmp_path, from_file=True)
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "ran").read_text() == "3\n"
    (last,) = [x for x in sgs_lines(second.stderr) if x.startswith("done in")]
    assert last.endswith("2 of 2 succeeded, 0 failed, 0 not started; "
                         "2 skipped as done in the job log")
    assert [(r.seq, r.exitval) for r in read_joblog(str(log))[0]] == [
        (1, 0), (2, 1), (3, 0), (4, 1), (2, 0), (4, 0)]


def test_summary_counts_not_started_after_a_drain(tmp_path: Path) -> None:
    started = tmp_path / "started"
    proc = popen_sgs(["--gpus", "0", "--joblog", "j.log"],
                     f"touch '{started}'; sleep 0.3\nexit 0\ntrue\n".encode(), cwd=tmp_path)
    try:
        poll_until(started.exists, what="job 1 to start", timeout=15)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    finally:
        stop(proc)
    assert proc.returncode == 130
    said = sgs_lines(err)
    assert said[-2].endswith("1 of 3 succeeded, 0 failed, 2 not started"), said
    assert "failed jobs" not in err.decode()
    assert said[-1] == ("to run what did not succeed, feed the same input to: "
                        "simple_gpu_scheduler --gpus 0 --joblog j.log --resume-failed")


def test_summary_of_a_clean_run_has_no_hint_and_quiet_hides_it(tmp_path: Path) -> None:
    done = run_sgs(["--gpus", "0", "--joblog", "j.log"], b"true\ntrue\n", cwd=tmp_path,
                   from_file=True)
    assert done.returncode == 0
    said = sgs_lines(done.stderr)
    assert said[-1].endswith("2 of 2 succeeded, 0 failed, 0 not started")
    assert not any("feed the same input" in x for x in said)
    quiet = run_sgs(["--gpus", "0", "-q"], b"true\n", cwd=tmp_path, from_file=True)
    assert quiet.returncode == 0 and quiet.stderr == b""
    quiet_failed = run_sgs(["--gpus", "0", "-q"], b"exit 2\n", cwd=tmp_path, from_file=True)
    assert "0 of 1 succeeded, 1 failed" in quiet_failed.stderr.decode()


# ---------------------------------------------------------------- --progress on a terminal


def _job(i: int, fail: bool = False) -> str:
    # Each half of a line is written separately, with a pause in between: a
    # redraw of the status line in the pause would tear the line.
    return (f"printf 'out-{i}-begin-'; sleep 0.1; printf 'end\\n'; "
            f"printf 'err-{i}-begin-' >&2; sleep 0.1; printf 'end\\n' >&2"
            + ("; exit 1" if fail else ""))


def run_on_pty(args: Sequence[str], stdin: bytes, cwd: Path, timeout: float = 20,
               stdout_too: bool = False) -> Tuple[int, bytes, bytes]:
    """Run with stderr (and stdout) on a pseudo-terminal; returns (status, stdout, what the
    terminal got)."""
    master, slave = pty.openpty()
    try:
        proc = popen_sgs(args, stdin, cwd=cwd, stdout=slave if stdout_too else subprocess.PIPE,
                         stderr=slave)
    finally:
        os.close(slave)
    screen = bytearray()
    deadline = time.monotonic() + timeout
    try:
        out = bytearray()
        open_fds = {master}
        if proc.stdout is not None:
            os.set_blocking(proc.stdout.fileno(), False)
            open_fds.add(proc.stdout.fileno())
        while open_fds and time.monotonic() < deadline:
            ready, _, _ = select.select(list(open_fds), [], [], 0.2)
            for fd in ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:  # EIO: every writer of the terminal has gone
                    data = b""
                if not data:
                    open_fds.discard(fd)
                elif fd == master:
                    screen += data
                else:
                    out += data
        assert not open_fds, "the scheduler did not end in time"
        status = proc.wait(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(master)
    return status, bytes(out), bytes(screen).replace(b"\r\n", b"\n")


def test_progress_on_a_terminal_redraws_in_place_and_tears_no_line(tmp_path: Path) -> None:
    jobs = [_job(i, fail=(i == 3)) for i in range(1, 7)]
    status, out, screen = run_on_pty(["--gpus", "0,1", "--progress"],
                                     "\n".join(jobs).encode(), tmp_path)
    assert status == 1
    # Job output on stdout: whole lines, no tag prefix.
    assert sorted(out.decode().splitlines()) == sorted(f"out-{i}-begin-end" for i in range(1, 7))
    text = screen.decode("utf-8", "replace")
    # Redrawn in place with carriage return + erase-line.
    assert text.count("\r\x1b[K") >= 3
    drawn = [m.group(0) for m in STATUS.finditer(text)]
    assert drawn, text
    final = [STATUS.fullmatch(d) for d in drawn]
    assert any(m and m.group(1) == "5" and m.group(2) == "1" and m.group(3) == "0" for m in final)
    assert any(" | ETA " in d for d in drawn)
    for d in drawn:  # stdin is a regular file: its total is known, and the ETA shows from the start
        assert STATUS.fullmatch(d).group(5) == "", d  # type: ignore[union-attr]
        assert " | ETA " in d, d
    # Job output on the terminal and the scheduler's lines: whole lines.
    for i in range(1, 7):
        assert re.search(rf"(^|\n|\x1b\[K)err-{i}-begin-end\n", text), text
    lines_ = [x.split("\x1b[K")[-1] for x in text.split("\n")]
    assert any(x.startswith("[sgs] job 3 failed on gpu ") for x in lines_)
    # The status line is taken away before the summary, which is the last thing shown.
    tail = text.rstrip("\n").rsplit("\n", 1)[-1]
    assert tail.split("\x1b[K")[-1].startswith("[sgs] failed jobs: 3"), repr(tail)
    assert not STATUS.search(text.rsplit("[sgs] done in", 1)[1])


def test_progress_on_a_terminal_shared_with_stdout_tears_no_line(tmp_path: Path) -> None:
    jobs = [_job(i) for i in range(1, 5)]
    status, _, screen = run_on_pty(["--gpus", "0,1", "--progress"], "\n".join(jobs).encode(),
                                   tmp_path, stdout_too=True)
    assert status == 0
    text = screen.decode("utf-8", "replace")
    for i in range(1, 5):
        for stream in ("out", "err"):
            assert re.search(rf"(^|\n|\x1b\[K){stream}-{i}-begin-end\n", text), text
    assert STATUS.search(text)


def test_progress_with_tag_keeps_the_tag(tmp_path: Path) -> None:
    status, out, _ = run_on_pty(["--gpus", "0", "--progress", "--tag"], _job(1).encode(),
                                tmp_path)
    assert status == 0
    assert out == b"[1|gpu 0] out-1-begin-end\n"


def test_progress_with_log_dir_sends_output_to_files(tmp_path: Path) -> None:
    status, out, screen = run_on_pty(["--gpus", "0", "--progress", "--log-dir", "logs"],
                                     _job(1).encode(), tmp_path)
    assert status == 0
    assert out == b""
    assert (tmp_path / "logs" / "1.out").read_bytes() == b"out-1-begin-end\n"
    assert (tmp_path / "logs" / "1.err").read_bytes() == b"err-1-begin-end\n"
    assert b"err-1-begin-end" not in screen


# ---------------------------------------------------------------- --progress on a pipe


def test_progress_on_a_pipe_prints_plain_lines_rarely(tmp_path: Path) -> None:
    jobs = [_job(i) for i in range(1, 7)]
    begin = time.monotonic()
    done = run_sgs(["--gpus", "0,1", "--progress"], "\n".join(jobs).encode(), cwd=tmp_path,
                   from_file=True)
    elapsed = time.monotonic() - begin
    assert done.returncode == 0, done.stderr
    err = done.stderr.decode()
    assert "\r" not in err and "\x1b" not in err
    plain = [x for x in err.splitlines() if x.startswith("[sgs] progress: ")]
    assert 1 <= len(plain) <= 1 + int(elapsed / progress.PLAIN_EVERY), plain
    assert progress.PLAIN_EVERY >= 2
    for line in plain:
        assert STATUS.fullmatch(line[len("[sgs] progress: "):]), line
    # Job output still comes through whole, on the streams it was written to.
    assert sorted(done.stdout.decode().splitlines()) == sorted(
        f"out-{i}-begin-end" for i in range(1, 7))
    assert {f"err-{i}-begin-end" for i in range(1, 7)} <= set(err.splitlines())
