"""The value types of our options, for argparse.

Each one turns a string into a value or raises `ArgumentTypeError` with a
message that names what was expected, so a bad value is one readable line;
each has a readable ``__name__`` for argparse's own messages. Parsers of
sizes and durations are imported only when such an option is given.
"""

from __future__ import annotations

import argparse
import math

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Callable, TypeVar

    T = TypeVar("T")


def untranslated_argparse() -> None:
    """Make argparse take its messages as written, without asking `gettext`.

    argparse asks gettext to translate each message it builds, and the first
    look for a catalogue (locale names normalised, a dozen paths tried) costs
    about 2 ms: 5% of a one-job run, and of every ``status``. Python ships no
    catalogue for argparse, so the answer is always the message itself; ours
    are in English anyway.
    """
    argparse._ = lambda message: message  # type: ignore[attr-defined]
    argparse.ngettext = (  # type: ignore[attr-defined]
        lambda one, many, n: one if n == 1 else many)


def _named(name: str, convert: Callable[[str], T]) -> Callable[[str], T]:
    def checked(text: str) -> T:
        try:
            return convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    checked.__name__ = name
    return checked


def _number(
    kind: Callable[[str], float], text: str, what: str, low: float,
    high: float = math.inf, low_open: bool = False,
) -> float:
    """`text` as a number within [low, high] (or (low, high] with `low_open`)."""
    try:
        value = kind(text)
    except ValueError:
        value = math.nan
    if not (low < value if low_open else low <= value) or not value <= high or math.isinf(value):
        raise ValueError(f"expected {what}, got {text!r}")
    return value


def _duration(text: str) -> float:
    from ..model.units import parse_duration

    return parse_duration(text)


def _size(text: str) -> int:
    from ..model.units import parse_size

    value = parse_size(text)
    if value <= 0:
        raise ValueError(f"expected a size above 0, got {text!r}")
    return value


def _memory_limit(text: str) -> object:
    from ..gpus.busy import parse_memory_limit

    return parse_memory_limit(text)


positive_int = _named(
    "positive integer", lambda t: int(_number(int, t, "a positive whole number", 1)))
non_negative_int = _named(
    "non-negative integer", lambda t: int(_number(int, t, "a whole number >= 0", 0)))
#: a grace period: 0 is allowed
seconds = _named("seconds", lambda t: _number(float, t, "a number of seconds >= 0", 0))
#: a polling interval: 0 would be a busy loop
interval = _named(
    "seconds", lambda t: _number(float, t, "a number of seconds above 0", 0, low_open=True))
percent = _named(
    "percentage",
    lambda t: _number(float, t.rstrip("%"), "a percentage from 0 to 100", 0, 100))
duration = _named("duration", _duration)
size = _named("size", _size)
fraction_or_size = _named("fraction or size", _memory_limit)

