"""What a finished job leaves behind is ended at once, also with --tag and
--progress, and its GPU goes to the next job promptly.

``sleep N & echo started`` leaves the sleep running after the job's shell
exits. Under ``--tag``/``--progress`` the sleep also holds the pipe that the
scheduler copies the job's output from, so "the output has not ended yet" must
not be mistaken for "wait and see": the leftover gets SIGTERM at once and the
next job starts on the same GPU as soon as it is gone (the old engine first
waited a second for the output: 1.05 s; without --tag 0.05 s).
"""

from __future__ import annotations

from pathlib import Path
from typing import List

import pytest
from harness import live_pids, run_sgs, unique_sleep

#: From job 1's shell exit to job 2's start, at most.
PROMPT = 0.5


@pytest.mark.parametrize("output", [["--tag"], ["--progress"], []],
                         ids=["tag", "progress", "passthrough"])
def test_leftovers_get_sigterm_at_once_and_the_gpu_goes_on(tmp_path: Path, markers: List[str],
                                                          output: List[str]) -> None:
    mark = unique_sleep()
    markers.append(mark)
    jobs = (f"sleep {mark} & echo started; date +%s%N > job1.end\n"
            "date +%s%N > job2.start\n")
    result = run_sgs(["--gpus", "0", *output], input=jobs, cwd=tmp_path, text=True)
    assert result.returncode == 0, result.stderr
    assert "started" in result.stdout
    ended = int((tmp_path / "job1.end").read_text())
    started = int((tmp_path / "job2.start").read_text())
    gap = (started - ended) / 1e9
    assert 0 < gap < PROMPT, (
        f"job 2 started {gap:.3f}s after job 1's shell exited; stderr:\n{result.stderr}")
    # The leftover was ended by the scheduler, not left to run out.
    assert not live_pids(mark), f"job 1's `sleep {mark}` is still running"
