"""The durations --timeout accepts and refuses."""

from __future__ import annotations

import pytest

from simple_gpu_scheduler.model.units import parse_duration


@pytest.mark.parametrize(
    "text, seconds",
    [("90", 90), ("30s", 30), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1.5h", 5400),
     ("0.5", 0.5), (".5s", 0.5), (" 2H ", 7200)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "10x", "1w", "-5", "0", "0s", "1h30m", "ten", "nan",
                                  "inf", "1e3", "5 m s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)
