"""Numbers to markdown: summaries, tables, targets and the machine description."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence


@dataclass
class Summary:
    """Median, min and max of one measured quantity over the repetitions."""

    median: float
    min: float
    max: float
    n: int


def summarize(samples: Sequence[float]) -> Optional[Summary]:
    """Summary of the samples, or None when there are none."""
    if not samples:
        return None
    return Summary(statistics.median(samples), min(samples), max(samples), len(samples))


def ratio(value: Optional[float], reference: Optional[float]) -> Optional[float]:
    """value / reference, or None when either is missing or the reference is 0."""
    if value is None or reference is None or reference <= 0:
        return None
    return value / reference


def fmt(value: Optional[float], digits: int = 3) -> str:
    """A number with `digits` decimals, or an em dash when missing."""
    return "—" if value is None else f"{value:.{digits}f}"


def fmt_ratio(value: Optional[float]) -> str:
    """A ratio as `1.23×`, or an em dash when missing."""
    return "—" if value is None else f"{value:.2f}×"


@dataclass
class Target:
    """One target of the issue and whether this run met it (None: not measured)."""

    workload: str
    text: str
    measured: str
    passed: Optional[bool]

    @property
    def verdict(self) -> str:
        """`pass`, `MISS` or `n/a`."""
        return {True: "pass", False: "MISS", None: "n/a"}[self.passed]

    def cell(self) -> str:
        """The target and verdict for a table cell."""
        return f"{self.text}: **{self.verdict}** ({self.measured})"


@dataclass
class Section:
    """One workload's output: a description, a table and notes."""

    key: str
    title: str
    description: list[str]
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    errors: int = 0

    def markdown(self) -> str:
        """The section as markdown: heading, description, table, notes."""
        parts = [f"## {self.key} {self.title}", ""]
        parts += self.description + [""]
        if self.rows:
            parts += [md_table(self.header, self.rows), ""]
        else:
            parts += ["No tool was measured in this workload (see the notes).", ""]
        parts += [f"- {note}" for note in self.notes]
        return "\n".join(parts).rstrip() + "\n"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table; `|` inside cells is escaped."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    out = [line(header), "|" + "|".join("---" for _ in header) + "|"]
    out += [line(row) for row in rows]
    return "\n".join(out)


def targets_section(targets: Sequence[Target]) -> str:
    """The closing summary: every target, what was measured, pass or miss."""
    rows = [[t.workload, t.text, t.measured, f"**{t.verdict}**"] for t in targets]
    head = ["## Targets", ""]
    if not rows:
        return "\n".join(head + ["No target applied to the tools measured.", ""])
    table = md_table(["workload", "target", "measured", "result"], rows)
    return "\n".join(head + [table, ""])


def _first_line(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if lines and out.returncode == 0 else ""


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform's guess)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_total() -> str:
    """MemTotal from /proc/meminfo in GiB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return "unknown"


def load_average() -> str:
    """The 1-minute load average (other work on the machine skews every number)."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except (OSError, IndexError):
        return "unknown"


def machine_lines(repo_root: Path) -> list[str]:
    """Bullet lines that describe the machine and the checkout measured."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    commit = _first_line(["git", "-C", str(repo_root), "describe", "--always", "--dirty"])
    return [
        f"- Date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"- CPU: {cpu_model()}; nproc {usable or os.cpu_count()}; memory {memory_total()}",
        f"- Python: {platform.python_version()} ({platform.python_implementation()})",
        f"- Kernel: {platform.system()} {platform.release()}",
        f"- Checkout: {commit or 'unknown'}",
        f"- Load average (1 min) at start: {load_average()}",
    ]
