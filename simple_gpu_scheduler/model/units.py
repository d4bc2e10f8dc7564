"""Parsing the durations and sizes users type: ``90``, ``15m``, ``12GiB``.

Pure functions; each raises `ValueError` with a message that names the
problem, which the CLI turns into a one-line usage error.
"""

from __future__ import annotations

import math

_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*$"

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2,
    "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_SIZE = r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$"
# The patterns are compiled on first use (`re` caches them): a run that parses
# no duration or size, the common one, pays nothing for them at start-up.


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``30s``, ``15m``, ``2h``, ``1d`` or ``1.5h``; must be > 0."""
    import re

    match = re.match(_DURATION, text, re.IGNORECASE)
    if not match:
        raise ValueError(
            f"invalid duration {text!r}: use a number with an optional unit s, m, h or d, "
            "e.g. 90, 30s, 15m, 2h, 1d")
    value = float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
    if value <= 0 or math.isinf(value):
        raise ValueError(f"invalid duration {text!r}: must be more than 0")
    return value


def parse_size(text: str) -> int:
    """Bytes in ``500MiB``, ``12GiB``, ``16GB``, ``1.5G`` or a plain byte count.

    ``K``/``M``/``G``/``T`` and ``KB``... are powers of 1000; ``KiB``... powers of 1024,
    as nvidia-smi prints them.
    """
    import re

    match = re.match(_SIZE, text, re.IGNORECASE)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _SIZE_UNITS:
        raise ValueError(
            f"invalid size {text!r}: use a number with an optional unit, "
            "e.g. 500MiB, 12GiB, 16GB or a byte count")
    value = float(match.group(1)) * _SIZE_UNITS[unit]
    if math.isinf(value):
        raise ValueError(f"invalid size {text!r}: too large")
    return int(value)


def format_size(size: float) -> str:
    """``12.0GiB``, ``500.0MiB``, ``100B``: binary units, as GPU memory is usually shown."""
    for unit, scale in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f}{unit}"
    return f"{int(size)}B"


# --- the one duration formatter, in its two spellings ----------------------------------


def format_duration(seconds: float) -> str:
    """A short human duration: ``0.4s``, ``12s``, ``3m05s``, ``2h01m``, ``3d04h``."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def format_clock(seconds: float) -> str:
    """A duration as a clock, ``0:03:05``: the summary's wall time and the ETA,
    where columns of them line up."""
    whole = int(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
