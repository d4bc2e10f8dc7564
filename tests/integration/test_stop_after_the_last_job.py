"""A stop signal after the loop has ended, while output is still being
finished, must not kill the scheduler without its summary.

With ``--tag`` the scheduler copies job output itself. When the loop has
ended, the copy may still be writing to a downstream that is slow to read
(here: not at all, until the test reads). The scheduler waits for it, then
prints its summary. A SIGTERM or Ctrl-C in that wait must meet the
scheduler's own handler, not the default one that kills it on the spot
(returncode -15, no summary, the last lines lost).
"""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

from harness import RUN_TIMEOUT, SGS, child_env, poll_until

#: Job output larger than the scheduler's stdout pipe (64 KiB), so the copy
#: blocks with the test not reading, but small enough that all of it fits in
#: the job's own pipe, the copy's buffer and the stdout pipe together (at least
#: 64 + 64 KiB): the job itself finishes. (300 KB would never let the job end.)
LINES = 1000
LINE = "x" * 99  # 100 bytes with the newline: 100 KB in all
ATTEMPTS = 5


def one_attempt(tmp_path: Path, n: int):
    """Run a job that prints LINES lines under --tag, with stdout not read; once
    job 1 is reported finished, send SIGTERM, then read stdout to its end.
    Returns (returncode, stderr, stdout, conclusive)."""
    assert SGS is not None
    err = tmp_path / f"stderr-{n}.txt"
    job = f"i=0; while [ $i -lt {LINES} ]; do echo {LINE}; i=$((i+1)); done\n"
    with open(err, "wb") as stderr:
        proc = subprocess.Popen([SGS, "--gpus", "0", "--tag"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=stderr, cwd=tmp_path,
                                env=child_env(), start_new_session=True)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(job.encode())
        proc.stdin.close()
        poll_until(lambda: "job 1 finished" in err.read_text(), 20,
                   what=lambda: f"job 1 to be reported finished; stderr:\n{err.read_text()}")
        # Once job 1 is reported the loop ends within microseconds; the poll
        # above notices ~10 ms later. Nothing but the blocked copy is left, so
        # the scheduler now waits for it (up to its patience of ~1 s without
        # progress), with the summary not printed yet.
        before = err.read_text()
        proc.send_signal(signal.SIGTERM)
        stdout = proc.stdout.read()
        returncode = proc.wait(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr_text = err.read_text()
    # Inconclusive: the signal came while the loop still ran (it drains: said
    # so), or after the summary was printed (the wait was already over).
    conclusive = "done in" not in before and "draining" not in stderr_text
    return returncode, stderr_text, stdout, conclusive


def test_sigterm_while_output_is_finished_still_gives_the_summary(tmp_path: Path) -> None:
    # The timing of the signal against the end of the loop cannot be forced
    # from outside: an attempt whose signal fell outside the wait is run again.
    conclusive = 0
    for n in range(ATTEMPTS):
        returncode, stderr, stdout, ok = one_attempt(tmp_path, n)
        assert returncode in (0, 143), (
            f"attempt {n}: the scheduler ended with returncode {returncode} "
            f"(-15: killed by SIGTERM); stderr:\n{stderr}")
        assert re.search(r"^\[sgs\] done in ", stderr, re.M), (
            f"attempt {n}: no summary; stderr:\n{stderr}")
        # Read once the signal was sent: every line still arrives, tagged.
        line = b"[1|gpu 0] " + LINE.encode() + b"\n"
        assert stdout == line * LINES, (
            f"attempt {n}: {stdout.count(line)} of {LINES} lines arrived")
        if ok:
            conclusive += 1
            break
    assert conclusive, f"in {ATTEMPTS} attempts the SIGTERM never fell after the loop's end"
