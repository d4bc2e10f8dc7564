"""Unit tests of the input rules: LineSplitter and CommandAssembler (pure logic)."""

from __future__ import annotations

from typing import List, Optional

from hypothesis import given, settings
from hypothesis import strategies as st

from simple_gpu_scheduler.input.lines import (
    HEAD,
    MAX_COMMAND_BYTES,
    CommandAssembler,
    Line,
    LineSplitter,
    RawCommand,
)


def commands(data: bytes, limit: int = MAX_COMMAND_BYTES, chunk: Optional[int] = None
             ) -> List[RawCommand]:
    """Everything the reader would make of `data`, fed in chunks of `chunk` bytes."""
    splitter, assembler = LineSplitter(limit), CommandAssembler(limit)
    out: List[RawCommand] = []
    pieces = [data] if chunk is None else [data[i:i + chunk] for i in range(0, len(data), chunk)]
    for piece in pieces:
        for line in splitter.feed(piece):
            raw = assembler.feed(line)
            if raw is not None:
                out.append(raw)
    last = splitter.end()
    if last is not None:
        raw = assembler.feed(last)
        if raw is not None:
            out.append(raw)
    raw = assembler.end()
    if raw is not None:
        out.append(raw)
    return out


def texts(data: bytes, **kwargs: object) -> List[bytes]:
    result = commands(data, **kwargs)  # type: ignore[arg-type]
    assert all(c.invalid is None for c in result), result
    return [c.text for c in result]


# --- LineSplitter -------------------------------------------------------------------


def test_splitter_cuts_lines_across_chunks() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"ab") == []
    assert splitter.feed(b"c\nde\n\nf") == [Line(b"abc"), Line(b"de"), Line(b"")]
    assert splitter.end() == Line(b"f")
    assert splitter.end() is None


def test_splitter_without_trailing_text_ends_with_nothing() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"a\n") == [Line(b"a")]
    assert splitter.end() is None


def test_splitter_drops_an_overlong_line_and_counts_its_bytes() -> None:
    splitter = LineSplitter(limit=10)
    lines = splitter.feed(b"0123456789AB")  # already past the limit: not kept
    assert lines == []
    assert len(splitter._buffer) == 0  # noqa: SLF001 - the point is that nothing is held
    lines = splitter.feed(b"CDE\nok\n")
    assert lines == [Line(b"0123456789ABCDE", overlong=15), Line(b"ok")]  # its head is kept


def test_splitter_keeps_a_line_of_exactly_the_limit() -> None:
    splitter = LineSplitter(limit=5)
    assert splitter.feed(b"12345\n123456\n") == [Line(b"12345"), Line(b"123456", overlong=6)]


def test_splitter_reports_an_overlong_last_line_without_newline() -> None:
    splitter = LineSplitter(limit=3)
    assert splitter.feed(b"abcdef") == []
    assert splitter.end() == Line(b"abcdef", overlong=6)


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")), max_size=12),
    chunk=st.integers(min_value=1, max_value=20),
    limit=st.integers(min_value=1, max_value=10),
)
def test_splitter_any_chunking_gives_the_same_lines(lines: List[bytes], chunk: int, limit: int
                                                     ) -> None:
    data = b"\n".join(lines)
    splitter = LineSplitter(limit)
    got: List[Line] = []
    for i in range(0, len(data), chunk):
        got.extend(splitter.feed(data[i:i + chunk]))
    last = splitter.end()
    if last is not None:
        got.append(last)
    expected = [Line(x) if len(x) <= limit else Line(x[:HEAD], overlong=len(x)) for x in lines]
    if lines and lines[-1] == b"":
        expected = expected[:-1]  # data ended with a newline: no empty last line
    assert got == expected


# --- CommandAssembler ------------------------------------------------------------


def test_one_command_per_line_in_order() -> None:
    assert texts(b"echo 1\necho 2\necho 3\n") == [b"echo 1", b"echo 2", b"echo 3"]


def test_last_line_without_newline_is_a_command() -> None:
    assert texts(b"echo 1\necho 2") == [b"echo 1", b"echo 2"]


def test_crlf_line_ends_are_stripped() -> None:
    assert texts(b"echo a\r\necho b\r\n") == [b"echo a", b"echo b"]


def test_only_one_trailing_cr_is_stripped_and_inner_cr_is_kept() -> None:
    assert texts(b"printf 'a\rb'\r\r\n") == [b"printf 'a\rb'\r"]


def test_blank_and_whitespace_lines_are_skipped() -> None:
    assert texts(b"\n   \n\t\n\r\necho a\n \t \r\n") == [b"echo a"]


def test_comment_lines_are_skipped_even_indented() -> None:
    data = b"# header\n  # indented\n\t#tab\necho a # not a comment line\n#\n"
    assert texts(data) == [b"echo a # not a comment line"]


def test_continuation_joins_lines_and_keeps_backslash_newline_for_the_shell() -> None:
    assert texts(b"echo a \\\n  b \\\n  c\necho d\n") == [b"echo a \\\n  b \\\n  c", b"echo d"]


def test_continuation_with_crlf() -> None:
    assert texts(b"echo a \\\r\n  b\r\n") == [b"echo a \\\n  b"]


def test_even_number_of_backslashes_does_not_continue() -> None:
    assert texts(b"echo a\\\\\necho b\n") == [b"echo a\\\\", b"echo b"]


def test_odd_number_of_backslashes_continues() -> None:
    assert texts(b"echo a\\\\\\\necho b\n") == [b"echo a\\\\\\\necho b"]


def test_comment_ending_in_backslash_does_not_continue() -> None:
    # As in sh: a backslash inside a comment is part of the comment.
    assert texts(b"# note \\\necho b\n") == [b"echo b"]


def test_blank_line_and_hash_inside_a_continuation_belong_to_the_command() -> None:
    assert texts(b"echo a \\\n# b\n") == [b"echo a \\\n# b"]
    assert texts(b"echo a \\\n\necho c\n") == [b"echo a \\\n", b"echo c"]


def test_continuation_cut_off_by_end_of_input_is_still_a_command() -> None:
    assert texts(b"echo a \\") == [b"echo a \\"]


def test_a_command_knows_the_input_line_it_starts_on() -> None:
    data = b"# c\n\necho a\necho b \\\n  c\n\x00\necho d\n"
    assert [(c.text[:6], c.line) for c in commands(data)] == [
        (b"echo a", 3), (b"echo b", 4), (b"\x00", 6), (b"echo d", 7)]


def test_bytes_are_kept_as_typed() -> None:
    latin1 = b"touch caf\xe9.txt"
    assert texts(latin1 + b"\n") == [latin1]


def test_nul_byte_makes_an_invalid_command_with_a_reason() -> None:
    result = commands(b"echo a\0b\necho ok\n")
    assert result[0].invalid is not None and "NUL" in result[0].invalid
    assert (result[1].text, result[1].invalid) == (b"echo ok", None)


def test_overlong_line_is_invalid_with_its_size_and_the_next_line_still_counts() -> None:
    limit = 100
    result = commands(b"x" * 250 + b"\necho next\n", limit=limit, chunk=7)
    assert len(result) == 2
    assert result[0].invalid is not None
    assert "250 bytes" in result[0].invalid and str(limit) in result[0].invalid
    assert len(result[0].text) <= 200
    assert (result[1].text, result[1].invalid) == (b"echo next", None)


def test_overlong_continuation_is_one_invalid_command() -> None:
    result = commands(b"echo a \\\n" + b"y" * 50 + b" \\\n" + b"z" * 60 + b"\necho next\n",
                      limit=100)
    assert [c.invalid is not None for c in result] == [True, False]
    assert result[1].text == b"echo next"


def test_joined_continuation_longer_than_the_limit_is_invalid() -> None:
    result = commands(b"a" * 60 + b"\\\n" + b"b" * 60 + b"\n", limit=100)
    assert len(result) == 1 and result[0].invalid is not None


def test_command_of_exactly_the_limit_is_valid() -> None:
    data = b"x" * MAX_COMMAND_BYTES
    assert texts(data + b"\n") == [data]


def test_over_long_lines_are_never_buffered() -> None:
    """A 10 MB line costs no memory: the splitter holds at most the limit."""
    splitter = LineSplitter()
    chunk = b"z" * 65536
    for _ in range(160):
        assert splitter.feed(chunk) == []
        assert len(splitter._buffer) <= MAX_COMMAND_BYTES  # noqa: SLF001
    assert splitter.feed(b"\n") == [Line(b"z" * HEAD, overlong=160 * 65536)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(
    [b"", b"  ", b"# c", b"echo a", b"echo b \\", b"x\\\\", b"y\r", b"\\"]), max_size=10))
def test_assembled_commands_never_are_blank_or_comments(lines: List[bytes]) -> None:
    data = b"\n".join(lines) + b"\n"
    for raw in commands(data):
        first = raw.text.split(b"\n")[0].strip()
        assert first and not first.startswith(b"#")
