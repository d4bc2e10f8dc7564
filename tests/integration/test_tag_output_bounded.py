"""``--tag`` and ``--progress`` copy job output in bounded pieces.

Before, the copy read whole lines: a job printing 300 MB without a newline
took the scheduler to 842 MiB. Now at most 64 KiB of a stream is held; a
longer piece is written in 64 KiB parts, each ended with a newline and tagged.
A carriage return ends a piece as a newline does, so progress bars (tqdm)
show, with the tag in front of each update.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import List

import pytest
from harness import SGS, child_env, run_sgs

MiB = 2**20
BOUND = 64 * 1024


@pytest.mark.parametrize("flags", [["--tag"], ["--progress"]])
def test_a_huge_line_without_newline_keeps_the_scheduler_small(
        tmp_path: Path, flags: List[str]) -> None:
    # The job's shell is the scheduler's child: after printing, it reads the
    # scheduler's peak resident memory (VmHWM, in kB) from /proc/$PPID/status.
    job = (b"head -c 100000000 /dev/zero | tr '\\0' x; "
           b"awk '/^VmHWM:/ {print $2}' /proc/$PPID/status > hwm\n")
    assert SGS is not None
    done = subprocess.run([SGS, "--gpus", "0", *flags], input=job, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, cwd=tmp_path, env=child_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    peak = int((tmp_path / "hwm").read_text()) * 1024
    assert peak < 60 * MiB, f"the scheduler's peak RSS was {peak / MiB:.0f} MiB"


def test_a_long_line_is_written_in_tagged_parts_of_the_bound(tmp_path: Path) -> None:
    size = 3 * BOUND + 100
    result = run_sgs(["--gpus", "0", "--tag"], f"head -c {size} /dev/zero | tr '\\0' y\n".encode(),
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    parts = result.stdout.split(b"\n")
    assert parts.pop() == b""
    assert len(parts) == 4
    assert all(part.startswith(b"[1|gpu 0] ") for part in parts)
    pieces = [part[len(b"[1|gpu 0] "):] for part in parts]
    assert [len(p) for p in pieces] == [BOUND, BOUND, BOUND, 100]
    assert b"".join(pieces) == b"y" * size


def test_carriage_returns_end_pieces_and_each_gets_the_tag() -> None:
    result = run_sgs(["--gpus", "0", "--tag"], b"printf 'a\\rb\\rc\\n'\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"[1|gpu 0] a\r[1|gpu 0] b\r[1|gpu 0] c\n"


def test_a_progress_bar_shows_each_update_tagged_and_crlf_is_one_line_end() -> None:
    # tqdm starts every update with \r: no empty tagged piece for those.
    bar = b"printf '\\r 10%%|#  |\\r 50%%|## |\\r100%%|###|\\n'; printf 'dos\\r\\nline\\n'\n"
    result = run_sgs(["--gpus", "0", "--tag"], bar)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (b"[1|gpu 0]  10%|#  |\r[1|gpu 0]  50%|## |\r[1|gpu 0] 100%|###|\n"
                             b"[1|gpu 0] dos\r\n[1|gpu 0] line\n")
