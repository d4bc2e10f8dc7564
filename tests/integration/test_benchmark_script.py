"""The benchmark script must keep working: run it with --quick and check its output.

Only the shape is checked (every workload's table or note appears, the run ends),
never the numbers. It compares xargs with the scheduler installed in this Python
environment (--ours-from-path), so it needs neither the network nor a venv build.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from harness import REPO_ROOT as ROOT

SCRIPT = ROOT / "benchmarks" / "run.py"
HEADINGS = {
    "W1": "## W1 throughput",
    "W2": "## W2 dispatch",
    "W3": "## W3 memory on a long stream, then SIGINT",
    "W4": "## W4 idle",
    "W5": "## W5 one job",
    "W6": "## W6 features on",
}


def run_bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def test_help() -> None:
    done = run_bench("--help", timeout=30)
    assert done.returncode == 0, done.stderr
    assert "--quick" in done.stdout and "--workloads" in done.stdout


def test_quick_run_prints_every_table(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    # Every workload, W8's local Ray cluster too (its start and stop are most
    # of the run's time on 2 cores: 40-80 s in all).
    done = run_bench("--quick", "--repeat", "1", "--tools", "xargs,ours", "--ours-from-path",
                     "--out", str(out), timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = done.stdout
    assert "Machine:" in text and "Reproduce:" in text
    for key, heading in HEADINGS.items():
        assert heading in text, f"{key} missing:\n{text}"
    # xargs is always present, so the timed workloads must have tables with a row for it.
    for key in ("W1", "W2", "W5"):
        section = text.split(HEADINGS[key], 1)[1].split("\n## ", 1)[0]
        assert "| tool |" in section and "| xargs -P |" in section, section
    assert "## Targets" in text
    # Our scheduler is either measured or its absence explained, never silently dropped.
    assert "- ours: " in text
    if "ours: skipped" not in text:
        w1 = text.split(HEADINGS["W1"], 1)[1].split("\n## ", 1)[0]
        assert "| ours" in w1, w1
    assert out.read_text().startswith("# simple_gpu_scheduler benchmarks")


def test_unknown_tool_is_rejected() -> None:
    done = run_bench("--tools", "nosuchtool", timeout=30)
    assert done.returncode == 2
    assert "unknown tool" in done.stderr
