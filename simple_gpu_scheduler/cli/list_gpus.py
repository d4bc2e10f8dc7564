"""``--list-gpus``: the GPUs a run would use, their use, and whether they are busy.

The table goes to stdout (it is the data this command produces); notes about
devices left out go to stderr like every other message.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

from .gpu_options import NO_GPUS, busy_limits, discover_all, parse_gpu_ids, usage_error, wants_all

if TYPE_CHECKING:
    from ..report.console import Console


def list_gpus(args: argparse.Namespace, console: "Console") -> int:
    """Print the GPUs a run would use, with their use and busy verdict, on stdout."""
    from ..gpus.busy import Limits, judge
    from ..model.devices import resolve_ids

    limits = busy_limits(args) or Limits()
    if wants_all(args.gpus):
        backend, found, usable = discover_all(console)
    else:
        from ..gpus.discovery import open_backend

        backend, found = open_backend()
        if backend is None:
            raise usage_error(f"{NO_GPUS} ({found.error})")
        try:
            usable = list(resolve_ids(parse_gpu_ids(args.gpus), found.devices).values())
        except ValueError as exc:
            raise usage_error(f"--gpus: {exc}") from None
    usages = backend.sample(usable)  # type: ignore[attr-defined]
    rows = []
    for device in usable:
        usage = usages.get(device.id)
        total = usage.mem_total if usage and usage.mem_total is not None else device.mem_total
        used = usage.mem_used if usage and usage.mem_used is not None else device.mem_used
        util = usage.util if usage and usage.util is not None else device.util
        if usage is not None and usage.lost:
            busy = f"lost: {usage.lost}"
        elif usage is not None:
            verdict = judge(usage, usage.processes, 0, 0, limits)
            busy = f"yes: {verdict.busy}" if verdict.busy else "no"
        else:
            busy = "?"
        rows.append((device.index, device.uuid, device.name, _memory(used, total),
                     "-" if util is None else f"{util}%", busy))
    lines = _table(("INDEX", "UUID", "NAME", "MEMORY", "UTIL", "BUSY"), rows)
    try:
        sys.stdout.write("".join(line + "\n" for line in lines))
        sys.stdout.flush()
    except BrokenPipeError:
        # As the `signal` docs advise: point stdout at /dev/null so that the
        # flush at exit does not fail a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    console.info(f"{len(rows)} GPU(s) through {found.source}; use the INDEX of a whole GPU "
                 "or the UUID of a MIG instance with --gpus and in JSONL 'on'")
    return 0


def _memory(used: Optional[int], total: Optional[int]) -> str:
    from ..model.units import format_size

    if total is None:
        return "-"
    return f"{'?' if used is None else format_size(used)} / {format_size(total)}"


def _table(head: Tuple[str, ...], rows: Sequence[Tuple[str, ...]]) -> List[str]:
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
            for row in (head, *rows)]
