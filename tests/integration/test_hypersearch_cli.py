"""The installed simple_hypersearch console script, run as a real process."""

from __future__ import annotations

import json
import subprocess
import time
from typing import List

import pytest
from harness import HYPERSEARCH

from simple_gpu_scheduler import __version__

README_PATTERN = "python3 train_dnn.py --lr {lr} --batch_size {bs}"
README_PARAMS = ["-p", "lr", "0.001", "0.0005", "0.0001", "-p", "bs", "32", "64", "128"]
README_GRID = {
    f"python3 train_dnn.py --lr {lr} --batch_size {bs}"
    for lr in ("0.001", "0.0005", "0.0001")
    for bs in ("32", "64", "128")
}
# 9 parameters x 10 values = 10**9 grid points: far too many to build.
HUGE_PATTERN = " ".join(f"{{p{i}}}" for i in range(9))
HUGE_PARAMS = [a for i in range(9) for a in ["-p", f"p{i}", *map(str, range(10))]]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """Run the installed console script as a real process."""
    assert HYPERSEARCH, "simple_hypersearch is not installed (pip install -e .)"
    return subprocess.run([HYPERSEARCH, *args], capture_output=True, text=True, timeout=30)


def lines(proc: subprocess.CompletedProcess) -> List[str]:
    return proc.stdout.splitlines()


def test_cli_grid_example_exact() -> None:
    proc = run_cli("my_program --param1 {param1} --param2 {param2}",
                   "-p", "param1", "0", "1", "-p", "param2", "2", "3", "--sampling-mode", "grid")
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout == (
        "my_program --param1 0 --param2 2\n"
        "my_program --param1 0 --param2 3\n"
        "my_program --param1 1 --param2 2\n"
        "my_program --param1 1 --param2 3\n"
    )


def test_cli_readme_examples() -> None:
    full = run_cli(README_PATTERN, *README_PARAMS)
    assert full.returncode == 0 and full.stderr == ""
    assert len(lines(full)) == 9 and set(lines(full)) == README_GRID
    five = run_cli(README_PATTERN, "--n-samples", "5", *README_PARAMS)
    assert five.returncode == 0 and five.stderr == ""
    assert len(lines(five)) == 5 == len(set(lines(five))) and set(lines(five)) <= README_GRID


def test_cli_seed_is_reproducible() -> None:
    outputs = [run_cli(README_PATTERN, "--seed", "7", *README_PARAMS).stdout for _ in range(2)]
    assert outputs[0] == outputs[1]
    others = {run_cli(README_PATTERN, "--seed", str(s), *README_PARAMS).stdout for s in range(3)}
    assert len(others | {outputs[0]}) > 1  # 9! orders: distinct seeds almost surely differ


def test_cli_preserves_foreign_braces_and_quotes_values() -> None:
    proc = run_cli("awk '{print $1}' ${HOME} {} --v {v}", "-p", "v", "a b", "$x", "ok",
                   "--sampling-mode", "grid")
    assert proc.returncode == 0
    assert lines(proc) == [
        "awk '{print $1}' ${HOME} {} --v 'a b'",
        "awk '{print $1}' ${HOME} {} --v '$x'",
        "awk '{print $1}' ${HOME} {} --v ok",
    ]


@pytest.mark.parametrize(
    "args",
    [
        ["echo {lrr}", "-p", "lr", "1"],  # undeclared placeholder (and unused -p)
        ["echo {lr} {bs}", "-p", "lr", "1"],  # undeclared placeholder
        ["echo {lr}", "-p", "lr", "1", "-p", "bs", "2"],  # unused -p
        ["echo {lr}", "-p", "lr"],  # -p without values
        ["echo {lr}", "-p", "lr", "1", "-p", "lr", "2"],  # repeated -p
        ["echo {lr}"],  # placeholders but no -p
        ["echo {lr}", "-p", "lr", "1", "--n-samples", "0"],
        ["echo {lr}", "-p", "lr", "1", "--n-samples", "-2"],
        ["echo {lr}", "-p", "lr", "1", "--seed", "abc"],
        ["echo {lr}", "-p", "lr", "1", "--sampling-mode", "random"],
        [],  # no pattern
    ],
)
def test_cli_usage_errors_are_one_line(args: List[str]) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and "error:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_huge_grid_with_n_samples_is_fast() -> None:
    for mode in ("shuffled_grid", "grid"):
        start = time.monotonic()
        proc = run_cli(HUGE_PATTERN, *HUGE_PARAMS, "--n-samples", "3", "--sampling-mode", mode)
        assert time.monotonic() - start < 5
        assert proc.returncode == 0 and len(set(lines(proc))) == 3


def test_cli_closed_pipe_exits_quietly() -> None:
    shell = subprocess.run(
        ["sh", "-c", 'simple_hypersearch "$@" | head -1', "sh", HUGE_PATTERN, *HUGE_PARAMS],
        capture_output=True, text=True, timeout=30,
    )
    assert len(lines(shell)) == 1 and shell.stderr == ""
    # The exit status itself, as a SIGPIPE death would report it.
    proc = subprocess.Popen([HYPERSEARCH, HUGE_PATTERN, *HUGE_PARAMS],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline()
    proc.stdout.close()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 141 and b"Traceback" not in err and err == b""


def test_cli_jsonl() -> None:
    proc = run_cli(README_PATTERN, *README_PARAMS, "--jsonl", "--sampling-mode", "grid")
    records = [json.loads(line) for line in lines(proc)]
    assert proc.returncode == 0 and len(records) == 9
    assert records[0] == {
        "cmd": "python3 train_dnn.py --lr 0.001 --batch_size 32", "name": "lr=0.001,bs=32"
    }
    assert {r["cmd"] for r in records} == README_GRID


def test_cli_version_and_help() -> None:
    version = run_cli("--version")
    assert version.returncode == 0 and __version__ in version.stdout
    helptext = run_cli("--help")
    assert helptext.returncode == 0
    assert "my_program --param1 1 --param2 3" in helptext.stdout  # the worked example
