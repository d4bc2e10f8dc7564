"""A job log that several schedulers append to at once loses no row.

Before, opening a log truncated a cut last line (left by a crash) after
reading it: the rows another scheduler appended in between went with it, and a
row appended after someone else's cut row was glued to it, so the log could no
longer be read. Now nothing is ever truncated: a writer ends a cut line with
the mark ``\\t\\n`` before its own row, and the reader skips cut rows, marked or
not, wherever they are, with a warning.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from simple_gpu_scheduler.model.record import Record
from simple_gpu_scheduler.report.joblog import (
    HEADER,
    JobLogError,
    JobLogWriter,
    Row,
    format_row,
    parse_joblog,
    read_joblog,
)


def row(seq: int, command: bytes = b"true", exitval: int = 0) -> Row:
    return Row(seq=seq, host="gpu:0", start=1700000000.125, runtime=1.5, exitval=exitval,
               signal=0, command=command)


def log_bytes(*rows: Row) -> bytes:
    return HEADER + b"\n" + b"".join(format_row(r) for r in rows)


def commands(path: Path) -> list:
    return [r.command for r in read_joblog(str(path))[0]]


def test_opening_a_log_never_cuts_rows_another_scheduler_appended(tmp_path: Path) -> None:
    path = tmp_path / "j.log"
    path.write_bytes(log_bytes(row(1, b"first")) + b"2\tgpu:0\t17000")  # a crash's cut row
    _, warning, keep = read_joblog(str(path))  # scheduler B reads the log...
    assert warning and "cut" in warning
    other = JobLogWriter(str(path), keep)  # ...scheduler A opens it and appends a row...
    other.write(row(3, b"third"))
    mine = JobLogWriter(str(path), keep)  # ...then B opens it for appending
    mine.write(row(4, b"fourth"))
    other.write(row(5, b"fifth"))
    mine.close()
    other.close()
    rows, warning, _ = read_joblog(str(path))
    assert [r.command for r in rows] == [b"first", b"third", b"fourth", b"fifth"]
    assert warning and "cut" in warning  # the cut row stays, skipped


def test_a_row_after_a_cut_that_appeared_while_writing_stays_readable(tmp_path: Path) -> None:
    path = tmp_path / "j.log"
    writer = JobLogWriter(str(path), 0)
    writer.write(row(1, b"first"))
    with open(path, "ab") as killed:  # another scheduler, killed in the middle of a row
        killed.write(format_row(row(2, b"second"))[:-4])
    writer.write(row(3, b"third"))
    writer.close()
    data = path.read_bytes()
    assert data.endswith(b"\t\n" + format_row(row(3, b"third")))  # the cut row is closed
    rows, warning, _ = parse_joblog(data)
    assert [r.command for r in rows] == [b"first", b"third"]
    assert warning and "cut" in warning and "line 3" in warning


@pytest.mark.parametrize("cut", [1, 4, 9, 20, 40, -1])
def test_marked_cut_rows_are_skipped_wherever_they_are(cut: int) -> None:
    whole = format_row(row(2, b"python train.py --lr 0.001"))
    data = log_bytes(row(1, b"a")) + whole[:cut] + b"\t\n" + format_row(row(3, b"c"))
    rows, warning, _ = parse_joblog(data)
    assert [r.command for r in rows] == [b"a", b"c"]
    assert warning and "cut" in warning


@pytest.mark.parametrize("cut", [1, 4, 9, 20])
def test_unmarked_prefixes_of_rows_are_cut_rows_too(cut: int) -> None:
    # A newline added by an editor, say: a prefix of a row is still no row.
    whole = format_row(row(2, b"echo b"))
    data = log_bytes(row(1, b"a")) + whole[:cut] + b"\n" + format_row(row(3, b"c"))
    rows, warning, _ = parse_joblog(data)
    assert [r.command for r in rows] == [b"a", b"c"]
    assert warning and "cut" in warning


def test_a_header_written_twice_by_two_new_schedulers_is_skipped() -> None:
    data = HEADER + b"\n" + HEADER + b"\n" + format_row(row(1)) + HEADER + b"\n"
    assert parse_joblog(data)[:2] == ([row(1)], None)


def test_a_cut_header_gets_a_whole_one_after_it(tmp_path: Path) -> None:
    path = tmp_path / "j.log"
    path.write_bytes(HEADER[:10])
    writer = JobLogWriter(str(path), read_joblog(str(path))[2])
    writer.write(row(1))
    writer.close()
    assert path.read_bytes() == HEADER[:10] + b"\t\n" + HEADER + b"\n" + format_row(row(1))
    rows, warning, _ = read_joblog(str(path))
    assert rows == [row(1)] and warning and "cut" in warning


def test_a_lone_mark_from_two_writers_closing_one_cut_is_quiet() -> None:
    # Both saw the cut before either wrote: the second mark is a line of its own.
    data = log_bytes(row(1)) + b"2\tgpu" + b"\t\n" + b"\t\n" + format_row(row(3))
    rows, warning, _ = parse_joblog(data)
    assert [r.seq for r in rows] == [1, 3]
    assert warning is not None and warning.count("line") == 1


@pytest.mark.parametrize("line", [
    b"not a row at all",
    b"1\tgpu:0\tx\t1.0\t0\t0\t0\t0\tcmd",  # a field that no row has
    b"1\tgpu:0\t1.0\t1.0\t0\t0\t0\t0\tbad \\q escape",
    b"",  # a blank line: no writer makes one
])
def test_lines_that_are_no_row_nor_cut_row_still_refuse_the_log(line: bytes) -> None:
    with pytest.raises(JobLogError, match="line 3"):
        parse_joblog(log_bytes(row(1)) + line + b"\n" + format_row(row(2)))


def test_a_file_that_is_not_a_job_log_is_still_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"my notes\nabout things")
    with pytest.raises(JobLogError):
        read_joblog(str(path))
    assert path.read_bytes() == b"my notes\nabout things"


def test_row_is_a_record_with_the_same_fields_and_behaviour() -> None:
    r = Row(3, "gpu:0,1", 1700000000.5, 2.25, 1, 0, b"false")
    assert isinstance(r, Record)
    assert (r.seq, r.host, r.start, r.runtime, r.exitval, r.signal, r.command) == (
        3, "gpu:0,1", 1700000000.5, 2.25, 1, 0, b"false")
    assert not r.succeeded and r.replace(exitval=0).succeeded
    assert r == Row(3, "gpu:0,1", 1700000000.5, 2.25, 1, 0, b"false") and hash(r) == hash(
        r.replace())
    assert repr(r).startswith("Row(seq=3, host='gpu:0,1'")


def test_a_row_cut_anywhere_and_closed_by_a_writer_is_skipped() -> None:
    whole = format_row(Row(12, "gpu:0,1", 1700000000.5, 2.25, -1, 15, b"a\tb\\c\nd"))
    for cut in range(1, len(whole)):  # whole[:-1]: all but the newline
        data = log_bytes(row(1, b"a")) + whole[:cut] + b"\t\n" + format_row(row(3, b"c"))
        rows, warning, _ = parse_joblog(data)
        assert [r.command for r in rows] == [b"a", b"c"], cut
        assert warning is not None and "line 3" in warning, cut
