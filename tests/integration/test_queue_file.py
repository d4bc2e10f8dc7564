"""--queue-file: each line read once, whatever an editor does to the file."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import List

from harness import poll_until, popen_sgs, read_lines, run_sgs


def start(tmp_path: Path, queue: Path) -> subprocess.Popen:
    return popen_sgs(["--gpus", "0", "--queue-file", str(queue)], stdin=subprocess.DEVNULL,
                     cwd=tmp_path, stdout=tmp_path / "out", stderr=tmp_path / "err")


def ran(tmp_path: Path) -> List[str]:
    return read_lines(tmp_path / "out")


def stop(proc: subprocess.Popen, tmp_path: Path) -> str:
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    return (tmp_path / "err").read_text()


def test_deleting_lines_that_ran_and_appending_runs_every_new_line(tmp_path: Path) -> None:
    queue = tmp_path / "q"
    queue.write_text("echo one\necho two\n")
    proc = start(tmp_path, queue)
    try:
        poll_until(lambda: ran(tmp_path) == ["one", "two"], what="the first two")
        # `sed -i 1d q` then two appends: a new file without the first line.
        new = tmp_path / "q.sed"
        new.write_text("echo two\n")
        new.replace(queue)
        with open(queue, "a") as f:
            f.write("echo three\necho four\n")
        poll_until(lambda: ran(tmp_path)[-1:] == ["four"], what="the appended lines")
        assert ran(tmp_path) == ["one", "two", "three", "four"]
    finally:
        err = stop(proc, tmp_path)
    assert "replaced or rewritten" in err


def test_a_rewrite_in_place_never_runs_part_of_a_line(tmp_path: Path) -> None:
    queue = tmp_path / "q"
    queue.write_text("echo " + "A" * 20 + "\n")
    proc = start(tmp_path, queue)
    try:
        poll_until(lambda: len(ran(tmp_path)) == 1, what="the first line")
        # `cat > q` (truncate and refill, same file), longer than before.
        with open(queue, "w") as f:
            f.write("echo " + "B" * 30 + "-one\necho two\n")
        poll_until(lambda: ran(tmp_path)[-1:] == ["two"], what="the rewritten file")
        assert ran(tmp_path) == ["A" * 20, "B" * 30 + "-one", "two"]
    finally:
        err = stop(proc, tmp_path)
    assert "command not found" not in err


def test_a_file_of_another_owner_put_at_the_path_is_not_read(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        import pytest

        pytest.skip("needs root to make a file of another owner")
    queue = tmp_path / "q"
    queue.write_text("echo mine\n")
    proc = start(tmp_path, queue)
    try:
        poll_until(lambda: ran(tmp_path) == ["mine"], what="the first line")
        planted = tmp_path / "planted"
        planted.write_text("echo mine\necho planted\n")
        os.chown(planted, 65534, 65534)
        planted.replace(queue)
        poll_until(lambda: "not read" in (tmp_path / "err").read_text(), what="the refusal")
        assert ran(tmp_path) == ["mine"]
    finally:
        stop(proc, tmp_path)


def test_a_fifo_is_a_usage_error(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result = run_sgs(["--gpus", "0", "--queue-file", str(fifo)], text=True)
    assert result.returncode == 2
    assert "not a regular file" in result.stderr and "< " in result.stderr
