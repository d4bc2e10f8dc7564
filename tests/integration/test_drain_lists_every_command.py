"""A drain loses no command: every command piped in is started or listed.

From a pipe (not a file), nothing the scheduler has read can be read again by
anyone: a command it took from the pipe and neither started nor listed as
``not started`` is lost for good, and the summary's counts no longer add up.

Every GPU is busy when the Ctrl-C comes, in two ways: another scheduler holds
the only GPU's lock (nothing of ours runs, so the run ends right after the
drain: the old engine ended it before the commands its reader thread had
taken from the pipe were listed, 8 of 100 listed, 92 never mentioned), or
our own first job holds it.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
from harness import Sgs, not_started, started_ids, wait_for_file

SUMMARY = re.compile(
    r"^\[sgs\] done in \S+: (\d+) of (\d+) succeeded, (\d+) failed, (\d+) not started", re.M)
COMMANDS = 100
HOLD = "touch {name}.started; while [ ! -e {name}.release ]; do sleep 0.02; done"


@pytest.mark.parametrize("busy", ["locked by another scheduler", "our own first job"])
def test_a_drain_lists_every_command_read_from_a_pipe(tmp_path: Path, start_sgs,
                                                      busy: str) -> None:
    args = ["--gpus", "0", "--lock-dir", str(tmp_path / "locks"), "--poll", "0.1"]
    other = None
    if busy == "locked by another scheduler":
        other = start_sgs(args)
        other.write((HOLD.format(name="other") + "\n").encode())
        wait_for_file(tmp_path / "other.started")
        commands = [f"echo {i} > out-{i}" for i in range(1, COMMANDS + 1)]
    else:
        commands = [HOLD.format(name="a")] + [f"echo {i} > out-{i}"
                                               for i in range(2, COMMANDS + 1)]
    sgs: Sgs = start_sgs(args)
    sgs.write("".join(c + "\n" for c in commands).encode())
    sgs.close_stdin()  # the whole input is in the pipe; nothing can be reread
    if other is not None:
        sgs.wait_stderr(r"another scheduler has it; waiting for it")
    else:
        wait_for_file(tmp_path / "a.started")
        sgs.wait_stderr(r"job 1 started")
    sgs.signal(signal.SIGINT)
    sgs.wait_stderr(r"draining")
    (tmp_path / "a.release").touch()
    assert sgs.wait() == 130, sgs.stderr()
    stderr = sgs.stderr()
    if other is not None:
        (tmp_path / "other.release").touch()
        assert other.wait() == 0, other.stderr()

    started = started_ids(stderr)
    listed = not_started(stderr)
    assert started == ([] if other is not None else [1]), stderr
    missing = sorted(set(range(1, COMMANDS + 1)) - set(started) - set(listed))
    assert not missing, (f"{len(missing)} of {COMMANDS} commands neither started nor listed: "
                         f"{missing}; stderr:\n{stderr}")
    assert not set(started) & set(listed)
    # Each listed command is listed with its own text, and did not run.
    assert listed == {i: commands[i - 1] for i in range(1, COMMANDS + 1) if i not in started}
    assert not list(tmp_path.glob("out-*"))

    summary = SUMMARY.search(stderr)
    assert summary, stderr
    succeeded, total, failed, unstarted = (int(g) for g in summary.groups())
    assert total == COMMANDS, summary.group(0)
    assert succeeded + failed + unstarted == total, summary.group(0)
    assert (succeeded, failed, unstarted) == (len(started), 0, COMMANDS - len(started))
