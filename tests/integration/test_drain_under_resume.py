"""A drain under --resume: commands the job log says are done are skipped,
not listed as not started, even when the drain finds them still unread."""

from __future__ import annotations

import signal
from pathlib import Path

from harness import not_started, poll_until, popen_sgs, run_sgs


def test_done_commands_are_skipped_not_listed_when_a_drain_finds_them(tmp_path: Path) -> None:
    log = tmp_path / "jobs.log"
    done = [f"echo done{i}" for i in range(3)]
    first = run_sgs(["--gpus", "0", "--joblog", str(log)], "\n".join(done) + "\n", text=True)
    assert first.returncode == 0, first.stderr
    gate = tmp_path / "started"
    lines = [f"touch {gate}; sleep 1"] + [f"sleep 0.1 # {i}" for i in range(8)] + done
    proc = popen_sgs(["--gpus", "0", "--joblog", str(log), "--resume"],
                     input=("\n".join(lines) + "\n").encode(), cwd=tmp_path,
                     stdout=tmp_path / "out", stderr=tmp_path / "err")
    try:
        poll_until(gate.exists, what="job 1")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
    err = (tmp_path / "err").read_text()
    assert sorted(not_started(err)) == list(range(2, 10)), err
    assert "3 skipped as done in the job log" in err, err
