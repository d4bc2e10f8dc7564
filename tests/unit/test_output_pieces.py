"""How tagged job output is cut into pieces (`Pieces`, pure): at newlines and
carriage returns, and at the bound when a piece grows longer."""

from __future__ import annotations

from typing import List

from hypothesis import given, settings
from hypothesis import strategies as st

from simple_gpu_scheduler.launch.copier import Pieces


def cut(chunks: List[bytes], limit: int = 8) -> List[bytes]:
    pieces = Pieces(limit)
    out: List[bytes] = []
    for chunk in chunks:
        assert len(chunk) <= pieces.room()
        out += pieces.feed(chunk)
    return out + pieces.end()


def test_newlines_and_carriage_returns_end_pieces() -> None:
    assert cut([b"a\rb\rc\n"]) == [b"a\r", b"b\r", b"c\n"]
    assert cut([b"ab\n", b"\ncd\n"]) == [b"ab\n", b"\n", b"cd\n"]  # an empty line is a piece


def test_crlf_is_one_line_end_and_a_lone_cr_is_no_piece() -> None:
    assert cut([b"x\r\ny\n"]) == [b"x\r\n", b"y\n"]
    assert cut([b"\r 1%\r", b" 2%\r", b"\n"]) == [b" 1%\r", b" 2%\r", b"\n"]


def test_a_piece_is_held_across_reads_until_it_ends() -> None:
    pieces = Pieces(8)
    assert pieces.feed(b"ab") == []
    assert pieces.room() == 6
    assert pieces.feed(b"c\nd") == [b"abc\n"]
    assert pieces.end() == [b"d\n"]  # the last piece gets a newline
    assert pieces.end() == []


def test_a_piece_longer_than_the_bound_is_written_in_parts_with_newlines() -> None:
    assert cut([b"12345678", b"9\n"], limit=8) == [b"12345678\n", b"9\n"]
    assert cut([b"1234", b"5678", b"12\n"], limit=8) == [b"12345678\n", b"12\n"]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200).map(lambda b: b.replace(b"\x00", b"\r")),
       sizes=st.lists(st.integers(1, 8), min_size=1, max_size=50))
def test_pieces_keep_every_byte_and_stay_within_the_bound(data: bytes, sizes: List[int]) -> None:
    pieces = Pieces(8)
    out: List[bytes] = []
    rest, i = data, 0
    while rest:
        n = min(sizes[i % len(sizes)], pieces.room())
        out += pieces.feed(rest[:n])
        rest, i = rest[n:], i + 1
    out += pieces.end()
    assert all(p.endswith((b"\n", b"\r")) and len(p) <= 8 + 1 for p in out)
    assert all(p != b"\r" for p in out)
    # Joined, the pieces are the input, but for lone CRs, and newlines added at
    # the bound and at the end.
    joined = b"".join(out)
    assert joined.replace(b"\r", b"").replace(b"\n", b"") == \
        data.replace(b"\r", b"").replace(b"\n", b"")


# --- log file names and markers (``--log-dir``) -------------------------------------------


def test_log_file_stem_keeps_the_id_first_and_makes_the_name_safe() -> None:
    from simple_gpu_scheduler.launch.streams import log_stem

    assert log_stem(3, None) == "3" and log_stem(3, "") == "3"
    assert log_stem(3, "lr=0.1,bs=32") == "3-lr=0.1,bs=32"
    assert log_stem(7, "a b/../c\u00e9\n") == "7-a_b_.._c__"
    assert log_stem(8, "y" * 500) == "8-" + "y" * 100


def test_marker_names_job_attempt_and_time() -> None:
    import time

    from simple_gpu_scheduler.launch.streams import marker

    when = time.struct_time((2026, 12, 1, 19, 20, 3, 1, 335, 0))
    assert marker(3, 1, when) == (
        b"--- simple_gpu_scheduler: job 3 attempt 1, 2026-12-01 19:20:03 ---\n")
