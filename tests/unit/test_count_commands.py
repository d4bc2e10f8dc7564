"""`count_commands`: the commands of a regular file, counted up front for
``--progress``, are exactly those the run's `InputSource` cuts, and counting
leaves the file's offset where it was."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from simple_gpu_scheduler.input import reader
from simple_gpu_scheduler.input.reader import InputSource, count_commands, job_factory

#: Lines made of the bytes that matter to the rules: comments, blanks, CRLF,
#: continuations.
LINES = st.lists(
    st.text(alphabet=" \t\r#\\ab{}", max_size=12).map(lambda t: t.encode()), max_size=30)


def commands_read(path: Path, continuation: bool) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        source = InputSource(fd, job_factory(False), continuation=continuation)
        count = 0
        while not source.at_end:
            source.read()
            while source.take() is not None:
                count += 1
        return count
    finally:
        os.close(fd)


def counted(path: Path, continuation: bool, skip: int = 0) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, skip, os.SEEK_SET)
        total = count_commands(fd, continuation)
        assert os.lseek(fd, 0, os.SEEK_CUR) == skip, "the offset must not move"
        assert total is not None
        return total
    finally:
        os.close(fd)


@settings(max_examples=300, deadline=None)
@given(lines=LINES, newline_at_end=st.booleans(), continuation=st.booleans(),
       chunk=st.integers(1, 40))
# A chunk whose cut last line ends in a backslash: the next chunk's first
# newline ends a line that continues onto the lines after it.
@example(lines=[b"y", b"x\\", b"", b"c", b"d"], newline_at_end=True, continuation=True, chunk=4)
def test_counts_what_the_run_reads(tmp_path_factory: pytest.TempPathFactory, lines: list,
                                   newline_at_end: bool, continuation: bool, chunk: int) -> None:
    path = tmp_path_factory.mktemp("count") / "jobs.txt"
    data = b"\n".join(lines) + (b"\n" if newline_at_end and lines else b"")
    path.write_bytes(data)
    saved = reader.COUNT_CHUNK
    reader.COUNT_CHUNK = chunk  # small chunks: every cut between chunks is tried
    try:
        assert counted(path, continuation) == commands_read(path, continuation), data
    finally:
        reader.COUNT_CHUNK = saved


def test_counts_from_the_current_offset_and_knows_a_long_file(tmp_path: Path) -> None:
    path = tmp_path / "jobs.txt"
    path.write_bytes(b"# sweep\n" + b"python train.py --lr 0.1\n" * 50_000 + b"a \\\n b\n\n")
    assert counted(path, True) == 50_001
    assert counted(path, True, skip=len(b"# sweep\n")) == 50_001
    assert counted(path, False) == 50_002  # JSON lines have no continuations


def test_a_pipe_has_no_total() -> None:
    read, write = os.pipe()
    try:
        assert count_commands(read) is None
    finally:
        os.close(read)
        os.close(write)
