"""Durations and sizes: parsing what options accept, and formatting for people."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simple_gpu_scheduler.model.units import (
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)

# --- parse_duration ---------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [
    ("90", 90), ("30s", 30), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1.5h", 5400),
    (".5", 0.5), ("2.", 2), (" 10 m ", 600), ("3H", 10800),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", [
    "", " ", "0", "0s", "-5", "5x", "m", "1e3", "nan", "inf", "1.2.3", "5 5", "9" * 400,
])
def test_parse_duration_rejects_with_a_value_error_that_quotes_the_input(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    assert repr(text) in str(info.value)


# --- parse_size / format_size --------------------------------------------------------


@pytest.mark.parametrize("text, size", [
    ("100", 100), ("100B", 100), ("500MiB", 500 * 1024**2), ("12GiB", 12 * 1024**3),
    ("16GB", 16 * 10**9), ("1.5G", 1_500_000_000), ("2k", 2000), ("1KiB", 1024),
    ("1tib", 1024**4), (" 3 MB ", 3 * 10**6), ("0", 0),
])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GiB", "-1GiB", "12 GiBs", "1e9", "12XB", "1.2.3G"])
def test_parse_size_rejects_with_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_parse_size_huge_number_is_a_value_error() -> None:
    # The contract is ValueError for every bad size, so the CLI can print one line;
    # float('999...') is inf and int(inf) raises OverflowError instead.
    with pytest.raises(ValueError):
        parse_size("9" * 400)


@pytest.mark.parametrize("size, text", [
    (0, "0B"), (100, "100B"), (1023, "1023B"), (1024, "1.0KiB"),
    (12 * 1024**3, "12.0GiB"), (1536 * 1024**2, "1.5GiB"), (2 * 1024**4, "2.0TiB"),
])
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1024, max_value=1024**5))
def test_format_size_reads_back_within_rounding(size: int) -> None:
    text = format_size(size)
    back = parse_size(text)
    assert math.isclose(back, size, rel_tol=0.06), (size, text, back)


# --- format_duration ---------------------------------------------------------------


@pytest.mark.parametrize("seconds, text", [
    (0, "0.0s"), (0.4, "0.4s"), (9.94, "9.9s"), (12, "12s"), (59.4, "59s"), (59.6, "1m00s"),
    (185, "3m05s"), (3599.6, "1h00m"), (7260, "2h01m"), (86399, "23h59m"),
    (3 * 86400 + 4 * 3600, "3d04h"),
])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=0, max_value=10**7, allow_nan=False))
def test_format_duration_is_short_and_one_token(seconds: float) -> None:
    text = format_duration(seconds)
    assert len(text) <= 7 and " " not in text
