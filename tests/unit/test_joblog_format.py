"""Unit tests of the job log: escaping, rows, parsing a whole file, the resume rule.

Pure functions with hand-built rows and bytes; the only file I/O is `read_joblog`
and `JobLogWriter` on files in a temporary directory.
"""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path
from typing import List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simple_gpu_scheduler.model.jobs import (
    Exited,
    FailedToStart,
    Killed,
    NotStarted,
    TimedOut,
    exit_and_signal,
)
from simple_gpu_scheduler.report.joblog import (
    HEADER,
    JobLogError,
    JobLogWriter,
    ResumeFilter,
    Row,
    escape,
    format_row,
    parse_joblog,
    parse_row,
    read_joblog,
    unescape,
)


def row(seq: int = 1, command: bytes = b"true", exitval: int = 0, sig: int = 0,
        host: str = "gpu:0") -> Row:
    return Row(seq=seq, host=host, start=1700000000.125, runtime=1.5, exitval=exitval,
               signal=sig, command=command)


def log_bytes(*rows: Row) -> bytes:
    return HEADER + b"\n" + b"".join(format_row(r) for r in rows)


def skips(filter_: ResumeFilter, commands: List[bytes]) -> List[bool]:
    return [filter_.skip(c) for c in commands]


# ---------------------------------------------------------------- layout


def test_header_is_gnu_parallels_column_layout() -> None:
    assert HEADER.split(b"\t") == [
        b"Seq", b"Host", b"Starttime", b"JobRuntime", b"Send", b"Receive", b"Exitval",
        b"Signal", b"Command",
    ]


def test_format_row_exact_bytes() -> None:
    line = format_row(Row(3, "gpu:0,1", 1700000000.1234, 12.3456, 0, 0, b"echo hi"))
    assert line == b"3\tgpu:0,1\t1700000000.123\t12.346\t0\t0\t0\t0\techo hi\n"


def test_format_row_killed_attempt_has_exitval_minus_one_and_the_signal() -> None:
    line = format_row(row(exitval=-1, sig=9))
    assert line.split(b"\t")[6:8] == [b"-1", b"9"]


@pytest.mark.parametrize(
    "outcome, expected",
    [
        (Exited(0), (0, 0)),
        (Exited(3), (3, 0)),
        (Killed(signal.SIGKILL), (-1, 9)),
        (TimedOut(5.0, signal.SIGTERM), (-1, 15)),
        (TimedOut(5.0, signal.SIGKILL), (-1, 9)),
        (FailedToStart("no shell"), (-1, 0)),
        (NotStarted(), (-1, 0)),
    ],
)
def test_exit_and_signal_columns_of_each_outcome(outcome: object, expected: tuple) -> None:
    assert exit_and_signal(outcome) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "exitval, sig, ok",
    [(0, 0, True), (1, 0, False), (-1, 0, False), (-1, 15, False), (0, 9, False)],
)
def test_row_succeeded_only_with_exit_0_and_no_signal(exitval: int, sig: int, ok: bool) -> None:
    assert row(exitval=exitval, sig=sig).succeeded is ok


# ---------------------------------------------------------------- escaping


@pytest.mark.parametrize(
    "raw, escaped",
    [
        (b"plain command", b"plain command"),
        (b"a\tb", b"a\\tb"),
        (b"a\nb", b"a\\nb"),
        (b"a\rb", b"a\\rb"),
        (b"a\0b", b"a\\0b"),
        (b"a\\b", b"a\\\\b"),
        (b"printf 'x\\ty'", b"printf 'x\\\\ty'"),  # a literal backslash-t is not a tab
        (b"echo caf\xe9", b"echo caf\xe9"),
        (b"\\\\\t\\n", b"\\\\\\\\\\t\\\\n"),
    ],
)
def test_escape_set_and_its_inverse(raw: bytes, escaped: bytes) -> None:
    assert escape(raw) == escaped
    assert unescape(escaped) == raw


@pytest.mark.parametrize("bad", [b"a\\xb", b"a\\", b"\\a", b"x\\ "])
def test_unescape_rejects_unknown_or_dangling_escapes(bad: bytes) -> None:
    with pytest.raises(ValueError):
        unescape(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_escape_round_trips_any_bytes_and_leaves_no_separator(command: bytes) -> None:
    escaped = escape(command)
    assert unescape(escaped) == command
    for separator in (b"\t", b"\n", b"\r", b"\0"):
        assert separator not in escaped


@settings(max_examples=200, deadline=None)
@given(
    seq=st.integers(1, 10**9),
    gpus=st.lists(st.sampled_from(["0", "1", "12", "GPU-8a1b", "MIG-3/1/0"]), min_size=0,
                  max_size=3, unique=True),
    start=st.floats(0, 4e9, allow_nan=False),
    runtime=st.floats(0, 1e7, allow_nan=False),
    exitval=st.integers(-1, 255),
    sig=st.integers(0, 64),
    command=st.binary(max_size=100),
)
def test_row_round_trip(seq: int, gpus: List[str], start: float, runtime: float, exitval: int,
                        sig: int, command: bytes) -> None:
    original = Row(seq, "gpu:" + ",".join(gpus), start, runtime, exitval, sig, command)
    line = format_row(original)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    back = parse_row(line[:-1])
    assert back.command == command
    assert (back.seq, back.host, back.exitval, back.signal) == (seq, original.host, exitval, sig)
    assert abs(back.start - start) <= 0.0005 + 1e-6 * start
    assert abs(back.runtime - runtime) <= 0.0005 + 1e-6 * runtime


@pytest.mark.parametrize(
    "line",
    [
        b"1\tgpu:0\t1.0\t1.0\t0\t0\t0\t0",  # 8 fields
        b"1\tgpu:0\t1.0\t1.0\t0\t0\t0\t0\tcmd\textra",  # 10 fields
        b"one\tgpu:0\t1.0\t1.0\t0\t0\t0\t0\tcmd",
        b"1\tgpu:0\tnoon\t1.0\t0\t0\t0\t0\tcmd",
        b"1\tgpu:0\t1.0\t1.0\t0\t0\tzero\t0\tcmd",
        b"1\tgpu:0\t1.0\t1.0\t0\t0\t0\tTERM\tcmd",
        b"1\tgpu:0\t1.0\t1.0\t0\t0\t0\t0\tbad \\q escape",
        b"",
    ],
)
def test_parse_row_rejects_what_is_not_a_row(line: bytes) -> None:
    with pytest.raises(ValueError):
        parse_row(line)


def test_parse_row_reads_gnu_parallels_padded_numbers() -> None:
    # parallel pads Starttime and JobRuntime with spaces (%14.3f, %10.3f).
    parsed = parse_row(b"4\t:\t1700000000.123\t     1.250\t0\t0\t2\t0\tsleep 1")
    assert (parsed.seq, parsed.host, parsed.runtime, parsed.exitval) == (4, ":", 1.25, 2)


# ---------------------------------------------------------------- whole files


def test_parse_empty_file_is_an_empty_log() -> None:
    assert parse_joblog(b"") == ([], None, 0)


def test_parse_header_only() -> None:
    data = HEADER + b"\n"
    assert parse_joblog(data) == ([], None, len(data))


def test_parse_rows_in_order() -> None:
    rows = [row(1, b"a"), row(2, b"b\tc", exitval=1), row(2, b"b\tc"), row(3, b"d\n", -1, 15)]
    data = log_bytes(*rows)
    parsed, warning, intact = parse_joblog(data)
    assert warning is None and intact == len(data)
    assert [(r.seq, r.command, r.exitval, r.signal) for r in parsed] == [
        (1, b"a", 0, 0), (2, b"b\tc", 1, 0), (2, b"b\tc", 0, 0), (3, b"d\n", -1, 15)]


@pytest.mark.parametrize("keep", [1, 5, 20, -1])
def test_parse_cut_last_line_is_ignored_with_a_warning(keep: int) -> None:
    whole = log_bytes(row(1, b"first"))
    last = format_row(row(2, b"second"))
    cut = last[:keep]  # -1: the complete row without only its newline
    parsed, warning, intact = parse_joblog(whole + cut)
    assert [r.command for r in parsed] == [b"first"]
    assert warning is not None and "cut" in warning
    assert intact == len(whole)


def test_parse_cut_header_is_an_empty_log_that_must_be_rewritten() -> None:
    parsed, warning, intact = parse_joblog(HEADER[:7])
    assert parsed == [] and warning is not None and intact == 0


@pytest.mark.parametrize(
    "data",
    [
        b"hello world\n",
        b"hello world",  # one line, cut or not, that is not the header
        b"\x89PNG\r\n\x1a\n\x00\x00",
        b"Seq\tHost\tStarttime\n1\t2\t3\n",  # a different header
        b"\n",
        HEADER.lower() + b"\n",
        HEADER + b"\nnot a row at all\n",
        HEADER + b"\n" + format_row(row(1)) + b"\n" + format_row(row(2)),  # a blank line inside
        HEADER + b"\n1\tgpu:0\t1.0\t1.0\t0\t0\t0\t0\tbad \\q escape\n",
    ],
)
def test_parse_garbage_is_not_a_job_log(data: bytes) -> None:
    with pytest.raises(JobLogError):
        parse_joblog(data)


def test_parse_garbage_names_the_line() -> None:
    data = log_bytes(row(1), row(2)) + b"3\tgpu:0\tx\n"
    with pytest.raises(JobLogError, match="line 4"):
        parse_joblog(data)


def test_read_missing_file_is_an_empty_log(tmp_path: Path) -> None:
    assert read_joblog(str(tmp_path / "nope.log")) == ([], None, 0)


def test_read_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(JobLogError):
        read_joblog(str(tmp_path))


# ---------------------------------------------------------------- writer


def test_writer_new_file_gets_header_and_rows_are_visible_before_close(tmp_path: Path) -> None:
    path = tmp_path / "j.log"
    writer = JobLogWriter(str(path), 0)
    try:
        assert path.read_bytes() == HEADER + b"\n"
        writer.write(row(1, b"a\tb"))
        # No buffering: another reader sees the row while the writer is open.
        assert read_joblog(str(path))[0] == [parse_row(format_row(row(1, b"a\tb"))[:-1])]
    finally:
        writer.close()


def test_writer_appends_after_a_cut_line_closing_it_with_the_mark(tmp_path: Path) -> None:
    path = tmp_path / "j.log"
    whole = log_bytes(row(1, b"first"))
    path.write_bytes(whole + b"2\tgpu:0\t17000")
    rows, warning, keep = read_joblog(str(path))
    assert warning and keep == len(whole)
    writer = JobLogWriter(str(path), keep)
    writer.write(row(3, b"third"))
    writer.close()
    # Never truncated (another scheduler may share the log): the cut line is closed.
    assert path.read_bytes() == whole + b"2\tgpu:0\t17000\t\n" + format_row(row(3, b"third"))


def test_writer_rewrites_a_cut_header(tmp_path: Path) -> None:
    path = tmp_path / "j.log"
    path.write_bytes(HEADER[:10])
    _, _, keep = read_joblog(str(path))
    writer = JobLogWriter(str(path), keep)
    writer.write(row(1))
    writer.close()
    assert path.read_bytes() == HEADER[:10] + b"\t\n" + log_bytes(row(1))  # kept, closed


def test_writer_appends_to_an_existing_log(tmp_path: Path) -> None:
    path = tmp_path / "j.log"
    path.write_bytes(log_bytes(row(1)))
    writer = JobLogWriter(str(path), len(path.read_bytes()))
    writer.write(row(2))
    writer.close()
    assert path.read_bytes() == log_bytes(row(1), row(2))
    assert path.read_bytes().count(HEADER) == 1


def test_two_writers_on_one_file_both_append(tmp_path: Path) -> None:
    # Two schedulers sharing a job log: each row goes to the end of the file
    # as it is then (O_APPEND), never over a row the other one wrote.
    path = tmp_path / "j.log"
    first = JobLogWriter(str(path), 0)
    second = JobLogWriter(str(path), len(HEADER) + 1)
    try:
        second.write(row(1, b"from the second"))
        first.write(row(1, b"from the first"))
    finally:
        first.close()
        second.close()
    assert sorted(r.command for r in read_joblog(str(path))[0]) == [
        b"from the first", b"from the second"]


def test_writer_file_is_not_inherited_by_jobs(tmp_path: Path) -> None:
    writer = JobLogWriter(str(tmp_path / "j.log"), 0)
    try:
        import fcntl

        assert fcntl.fcntl(writer._fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    finally:
        writer.close()


# ---------------------------------------------------------------- the resume rule


def test_resume_skips_every_command_with_a_row_failed_or_not() -> None:
    rows = [row(1, b"a"), row(2, b"b", exitval=1), row(3, b"c", -1, 15), row(4, b"d", -1, 0)]
    resume = ResumeFilter(rows, failed_too=False)
    assert skips(resume, [b"a", b"b", b"c", b"d", b"e"]) == [True, True, True, True, False]
    assert resume.skipped == 4


def test_resume_failed_skips_only_successful_commands() -> None:
    rows = [row(1, b"a"), row(2, b"b", exitval=1), row(3, b"c", -1, 15), row(4, b"d", -1, 0),
            row(5, b"e", 0, 9)]
    resume = ResumeFilter(rows, failed_too=True)
    assert skips(resume, [b"a", b"b", b"c", b"d", b"e"]) == [True, False, False, False, False]
    assert resume.skipped == 1


def test_resume_counts_duplicates() -> None:
    # "a" is in the input three times and succeeded once: it runs twice more.
    resume = ResumeFilter([row(1, b"a"), row(2, b"b")], failed_too=True)
    assert skips(resume, [b"a", b"a", b"b", b"a"]) == [True, False, True, False]


def test_resume_counts_one_skip_per_distinct_command_and_seq() -> None:
    # Job 1 was retried twice (three rows, one Seq): one job, one skip.
    rows = [row(1, b"a", exitval=1), row(1, b"a", exitval=1), row(1, b"a"),
            row(2, b"a", exitval=2), row(3, b"b")]
    resume = ResumeFilter(rows, failed_too=False)
    assert skips(resume, [b"a", b"a", b"a", b"b", b"b"]) == [True, True, False, True, False]


def test_resume_failed_counts_successful_rows_of_a_retried_job_once() -> None:
    rows = [row(1, b"a", exitval=1), row(1, b"a", exitval=1), row(1, b"a")]
    resume = ResumeFilter(rows, failed_too=True)
    assert skips(resume, [b"a", b"a"]) == [True, False]


def test_resume_matches_by_text_not_position() -> None:
    rows = [row(1, b"x"), row(2, b"y"), row(3, b"z", exitval=1)]
    resume = ResumeFilter(rows, failed_too=True)
    assert skips(resume, [b"z", b"y", b"x"]) == [False, True, True]


def test_resume_matches_exact_bytes() -> None:
    resume = ResumeFilter([row(1, b"echo caf\xe9\tx")], failed_too=True)
    assert skips(resume, [b"echo caf\xc3\xa9\tx", b"echo caf\xe9 x", b"echo caf\xe9\tx"]) == [
        False, False, True]


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(1, 6), st.sampled_from([b"a", b"b", b"c"]),
                            st.sampled_from([(0, 0), (1, 0), (-1, 15), (-1, 0)])), max_size=12),
    commands=st.lists(st.sampled_from([b"a", b"b", b"c", b"d"]), max_size=10),
)
def test_resume_failed_skips_min_of_occurrences_and_successes(
    rows: list, commands: List[bytes]
) -> None:
    log = [row(seq, cmd, exitval=ev, sig=sg) for seq, cmd, (ev, sg) in rows]
    resume = ResumeFilter(log, failed_too=True)
    skipped = Counter(c for c, s in zip(commands, skips(resume, commands)) if s)
    successes = Counter(r.command for r in log if r.succeeded)
    for command in set(commands):
        assert skipped[command] == min(commands.count(command), successes[command])
    assert resume.skipped == sum(skipped.values())



@pytest.mark.parametrize("gpus, node, host", [
    (("0", "1"), "", "gpu:0,1"),
    (("1",), "10.0.0.7", "gpu:1@10.0.0.7"),
    # A Ray task cancelled while it waited for a GPU: it never reached one.
    ((), "", "-"),
])
def test_the_host_of_an_attempt_names_its_gpus_and_node(tmp_path: Path, gpus: tuple,
                                                        node: str, host: str) -> None:
    from simple_gpu_scheduler.model.jobs import Job

    writer = JobLogWriter(str(tmp_path / "log.tsv"))
    writer.write_attempt(Job(3, b"true"), gpus, 1.0, 2.0, Killed(signal.SIGTERM), node=node)
    writer.close()
    (row,) = read_joblog(str(tmp_path / "log.tsv"))[0]
    assert (row.seq, row.host, row.signal) == (3, host, signal.SIGTERM)
