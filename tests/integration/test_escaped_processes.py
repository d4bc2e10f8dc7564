"""Processes that leave the job's session (``setsid``) do not escape.

A job's process group and session reach its whole tree, except a process
that makes itself a new session: a daemonizing tool, ``setsid cmd &``. Such a
process is still a descendant of the job; the scheduler must find it, end it
with its job, and kill it when the scheduler exits, even when it cannot say
which job it came from (no ``SGS_JOB_ID`` in its environment, not in the
job's group or session).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import List

from harness import Sgs, live_pids, poll_until, unique_sleep

#: Seconds after the scheduler's exit within which a killed process must be gone
#: (SIGKILL is sent before the exit; its delivery and the exit take a moment).
GONE_WITHIN = 2.0


def marks(markers: List[str], n: int) -> List[str]:
    found = [unique_sleep() for _ in range(n)]
    markers.extend(found)
    return found


def none_left(*found: str) -> None:
    poll_until(lambda: not any(live_pids(m) for m in found), GONE_WITHIN,
               what=lambda: "no job process left; still there: "
               + ", ".join(f"sleep {m}: {live_pids(m)}" for m in found if live_pids(m)))


def sleep_pid(mark: str, own_session: bool = False) -> int:
    """The pid of the ``sleep MARK`` (or of the ``setsid`` about to become it; not
    of a shell whose command names it), once it runs (`own_session`: in a
    session of its own)."""
    def find() -> List[int]:
        found = []
        for pid in live_pids(mark):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if own_session and os.getsid(pid) != pid:
                    continue
            except OSError:
                continue
            if argv[0].endswith((b"sleep", b"setsid")):
                found.append(pid)
        return found

    pids = poll_until(find, 10, what=f"sleep {mark}")
    assert len(pids) == 1, pids
    return pids[0]


def test_terminate_ends_what_left_the_session(tmp_path: Path, start_sgs,
                                              markers: List[str]) -> None:
    escaped, inside = marks(markers, 2)
    sgs: Sgs = start_sgs(["--gpus", "0", "--kill-grace", "1"])
    sgs.write(f"sh -c 'setsid sleep {escaped} & sleep {inside}'\n".encode())
    sleep_pid(escaped, own_session=True)
    sleep_pid(inside)
    sgs.signal(signal.SIGINT)
    sgs.wait_stderr(r"draining")
    sgs.signal(signal.SIGINT)
    assert sgs.wait(timeout=15) == 130, sgs.stderr()
    none_left(escaped, inside)


#: Waits until the background job `$!` has left the job's session (its session
#: id, field 6 of /proc/PID/stat, is its own pid). Without the wait, the shell
#: may exit while `setsid` has not run yet, and the job's group SIGTERM ends it
#: before it escapes: the test would test nothing.
UNTIL_ESCAPED = "until [ \"$(cut -d' ' -f6 /proc/$!/stat)\" = $! ]; do sleep 0.01; done"


def saw_it(mark: str, path: str) -> str:
    """A job that writes to `path` the /proc cmdline files holding MARK (their
    arguments are NUL-separated); the pattern is a regex that does not match
    its own text, so neither grep nor the job's shell is found."""
    pattern = mark.replace(".", "[.]")
    return f"grep -l -s -a '{pattern}' /proc/[0-9]*/cmdline > {path}; true"


def test_the_leftover_rule_reaches_a_process_that_left_the_session(
        tmp_path: Path, start_sgs, markers: List[str]) -> None:
    (mark,) = marks(markers, 1)
    # Output to files (Sgs), not pipes: an escaped sleep holding a pipe open
    # would keep a reader of the scheduler's output waiting for its end.
    sgs: Sgs = start_sgs(["--gpus", "0", "--kill-grace", "1"])
    sgs.write(f"setsid sleep {mark} & {UNTIL_ESCAPED}; exit 0\n"
              f"{saw_it(mark, 'job2.saw')}\n".encode())
    assert sgs.wait() == 0, sgs.stderr()
    # Job 2 got the GPU only once job 1's escaped sleep was gone.
    seen = (tmp_path / "job2.saw").read_text()
    assert seen == "", f"job 2 started while job 1's sleep ran: {seen}; stderr:\n{sgs.stderr()}"
    none_left(mark)


def test_an_escapee_nothing_else_attributes_is_ended_with_the_job_whose_exit_left_it(
        tmp_path: Path, start_sgs, markers: List[str]) -> None:
    (mark,) = marks(markers, 1)
    gate = tmp_path / "gate"
    sgs: Sgs = start_sgs(["--gpus", "0", "--kill-grace", "1"])
    # Neither its group, its session nor its environment says it is job 1's
    # (`env` execs setsid without SGS_JOB_ID before setsid leaves the session):
    # it is re-parented to the scheduler when job 1's shell exits, so it is
    # job 1's leftover, and job 2 gets the GPU only once it is gone.
    sgs.write(f"env -u SGS_JOB_ID setsid sleep {mark} & {UNTIL_ESCAPED}; "
              f"while [ ! -e {gate} ]; do sleep 0.01; done; exit 0\n".encode())
    pid = sleep_pid(mark, own_session=True)
    assert b"SGS_JOB_ID=" not in Path(f"/proc/{pid}/environ").read_bytes()
    assert os.getsid(pid) == pid
    sgs.write(f"{saw_it(mark, 'job2.saw')}\n".encode())
    gate.touch()
    sgs.close_stdin()
    assert sgs.wait() == 0, sgs.stderr()  # the input ends: the run ends
    assert (tmp_path / "job2.saw").read_text() == "", sgs.stderr()
    none_left(mark)
