"""The SIGUSR1 status table shows what tells jobs apart: whole commands when
stderr is no terminal (``width=None``), on a terminal long commands cut in the
middle, so the end (``--lr 0.001``) stays. Before, commands were cut from the
right at a fixed width of 100."""

from __future__ import annotations

import fcntl
import os
import struct
import termios
from typing import Iterator, Optional, Tuple

import pytest

from simple_gpu_scheduler.model.snapshot import RunningView, Snapshot
from simple_gpu_scheduler.report.status import status_table, terminal_width

SWEEP = ("python train.py --data /datasets/imagenet/train --epochs 90 --batch-size 256 "
         "--warmup 5 --optimizer sgd --momentum 0.9 --lr {}")


def snapshot(*commands: str, gpus: Tuple[str, ...] = ("0",)) -> Snapshot:
    running = tuple(RunningView(i, gpus, 75.0, c) for i, c in enumerate(commands, start=1))
    return Snapshot(running=running, queued=0, succeeded=0, failed=0, not_started=0,
                    skipped=0, input_open=True, elapsed=80.0)


def command_of(line: str) -> str:
    return line.split(None, 4)[4]


def test_without_a_width_commands_are_whole() -> None:
    commands = [SWEEP.format("0.001"), SWEEP.format("0.01"), "x" * 5000]
    lines = status_table(snapshot(*commands), width=None)
    assert [command_of(line) for line in lines[2:]] == commands


def test_by_default_commands_are_whole() -> None:
    assert command_of(status_table(snapshot(SWEEP.format("0.1")))[2]) == SWEEP.format("0.1")


@pytest.mark.parametrize("width", [60, 80, 100, 120])
def test_a_width_cuts_long_commands_in_the_middle_keeping_both_ends(width: int) -> None:
    lines = status_table(snapshot(SWEEP.format("0.001"), SWEEP.format("0.01")), width=width)
    assert all(len(line) <= width for line in lines[1:]), lines
    first, second = command_of(lines[2]), command_of(lines[3])
    assert first.startswith("python train.py") and first.endswith("--lr 0.001")
    assert second.startswith("python train.py") and second.endswith("--lr 0.01")
    assert "..." in first and first != second
    assert len(lines[2]) == width  # all the room is used


def test_commands_that_fit_are_not_cut() -> None:
    lines = status_table(snapshot("sleep 10"), width=80)
    assert command_of(lines[2]) == "sleep 10"


def test_a_narrow_terminal_still_shows_twenty_characters_of_a_command() -> None:
    command = command_of(status_table(snapshot(SWEEP.format("0.5")), width=10)[2])
    assert len(command) == 20 and command.startswith("python") and command.endswith("0.5")


# --- terminal_width ----------------------------------------------------------------


@pytest.fixture
def pty(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A terminal 123 columns wide; COLUMNS unset."""
    monkeypatch.delenv("COLUMNS", raising=False)
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 123, 0, 0))
    yield slave
    os.close(slave)
    os.close(master)


def test_terminal_width_of_a_terminal(pty: int) -> None:
    assert terminal_width(pty) == 123


@pytest.mark.parametrize("columns, width", [("77", 77), ("junk", 123), ("0", 123), ("", 123)])
def test_terminal_width_reads_columns_first(pty: int, monkeypatch: pytest.MonkeyPatch,
                                            columns: str, width: int) -> None:
    monkeypatch.setenv("COLUMNS", columns)
    assert terminal_width(pty) == width


@pytest.mark.parametrize("columns", [None, "77"])
def test_terminal_width_of_a_pipe_or_file_is_none(monkeypatch: pytest.MonkeyPatch, tmp_path,
                                                  columns: Optional[str]) -> None:
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    read, write = os.pipe()
    try:
        assert terminal_width(write) is None
    finally:
        os.close(read)
        os.close(write)
    with open(tmp_path / "f", "w") as f:
        assert terminal_width(f.fileno()) is None
    assert terminal_width(9999) is None  # not even open


def test_a_terminal_that_does_not_know_its_size_is_80_wide(
        pty: int) -> None:
    fcntl.ioctl(pty, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
    assert terminal_width(pty) == 80
