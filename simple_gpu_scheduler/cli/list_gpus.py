"""``--list-gpus``: the GPUs a run would use, their use, and whether they are busy.

The table goes to stdout (it is the data this command produces); notes about
devices left out go to stderr like every other message.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

from .gpu_options import discover_all, limits_or_default, parse_gpu_ids, resolve_given, wants_all

if TYPE_CHECKING:
    from ..model.devices import GpuProcess
    from ..report.console import Console


def list_gpus(args: argparse.Namespace, console: "Console") -> int:
    """Print the GPUs a run would use, with their use and busy verdict, on stdout."""
    from ..gpus.busy import judge

    # The verdict a run would reach: the same limits, the default included,
    # and every process on a GPU counted as somebody else's (none is ours here).
    limits = limits_or_default(args)
    if wants_all(args.gpus):
        backend, found, usable = discover_all(console)
    else:
        backend, found, devices = resolve_given(parse_gpu_ids(args.gpus), console)
        usable = list(devices.values())
    usages = backend.sample(usable)
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
        others = _processes(usage.processes if usage is not None else None)
        rows.append((device.index, device.uuid, device.name, _memory(used, total),
                     "-" if util is None else f"{util}%", busy, others))
    lines = _table(("INDEX", "UUID", "NAME", "MEMORY", "UTIL", "BUSY", "PROCESSES"), rows)
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


def _processes(processes: Optional[Sequence[GpuProcess]]) -> str:
    """``alice:4242(18.0GiB) bob:77(?)``: who holds the GPU, as ``gpustat -up``
    shows it; ``?`` for a process in another container (no such pid here)."""
    if processes is None:
        return "?"
    from ..model.units import format_size

    shown = []
    for process in sorted(processes, key=lambda p: p.pid):
        size = "?" if process.used is None else format_size(process.used)
        shown.append(f"{_user(process.pid)}:{process.pid}({size})")
    return " ".join(shown) or "-"


def _user(pid: int) -> str:
    import pwd

    try:
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return "?"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _memory(used: Optional[int], total: Optional[int]) -> str:
    from ..model.units import format_size

    if total is None:
        return "-"
    return f"{'?' if used is None else format_size(used)} / {format_size(total)}"


def _table(head: Tuple[str, ...], rows: Sequence[Tuple[str, ...]]) -> List[str]:
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
            for row in (head, *rows)]
