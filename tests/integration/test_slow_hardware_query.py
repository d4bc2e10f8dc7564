"""A slow ``nvidia-smi`` never holds up the loop: Ctrl-C and timeouts on time.

The GPUs are found through nvidia-smi (no NVML). GPU 1 is busy (another
user's process holds 30 GiB, over ``--max-gpu-memory``), so while job 1 runs
on GPU 0, job 2 waits for GPU 1 and the scheduler looks at the GPUs again
every ``--poll`` seconds. Once job 1 has started, the usage query (the
``--query-compute-apps`` half of every look) is made to take 8 s, as with a
hung or loaded driver. Taken on the engine's thread, that look would answer
a Ctrl-C, or end job 1 at its ``--timeout``, only once the query returned
(the old engine: 7.5 s late).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import List

from harness import FakeMachine, GiB, Sgs, fake_gpu, live_pids, poll_until, unique_sleep

QUERY_SECONDS = 8.0
POLL = 2.0
APPS = "smi --query-compute-apps"


def start_with_a_slow_look(tmp_path: Path, start_sgs, mark: str, *extra: str) -> Sgs:
    """Job 1 (``sleep MARK``) runs on GPU 0, job 2 waits for the busy GPU 1, and
    the second look at the GPUs, the slow one, is in flight."""
    busy = fake_gpu(1, processes=[{"pid": os.getpid(), "used": 30 * GiB}])
    machine = FakeMachine(tmp_path, [fake_gpu(0), busy])
    sgs: Sgs = start_sgs(["--lock-dir", str(machine.locks), "--max-gpu-memory", "1GiB",
                          "--poll", str(POLL), "--kill-grace", "1", *extra],
                         env=machine.env("smi"))
    sgs.write(f"date +%s%N > job1.start; exec sleep {mark}\ntrue\n".encode())
    sgs.wait_stderr(r"job 1 started on gpu 0", timeout=10)
    # The first look (before job 1 could start) was fast; the next is POLL
    # seconds after it, so there is time to slow nvidia-smi down first.
    assert len(machine.calls(APPS)) == 1, machine.calls()
    machine.state["delay"] = {"--query-compute-apps": QUERY_SECONDS}
    machine.write()
    # The fake logs a call before it sleeps: from here on, the slow query is in flight.
    poll_until(lambda: len(machine.calls(APPS)) == 2, POLL + 5, what="the second look")
    return sgs


def test_ctrl_c_is_answered_while_nvidia_smi_is_slow(tmp_path: Path, start_sgs,
                                                     markers: List[str]) -> None:
    mark = unique_sleep()
    markers.append(mark)
    sgs = start_with_a_slow_look(tmp_path, start_sgs, mark)
    sent = time.monotonic()
    sgs.signal(signal.SIGINT)
    sgs.wait_stderr(r"draining; 1 running job", timeout=QUERY_SECONDS + 10)
    answered = time.monotonic() - sent
    assert answered < 1.5, (
        f"the drain was answered {answered:.2f}s after Ctrl-C, while nvidia-smi was "
        f"busy; stderr:\n{sgs.stderr()}")
    sgs.signal(signal.SIGINT)  # terminate job 1
    assert sgs.wait(timeout=QUERY_SECONDS + 10) == 130, sgs.stderr()
    assert not live_pids(mark)


def test_a_timeout_is_kept_while_nvidia_smi_is_slow(tmp_path: Path, start_sgs,
                                                    markers: List[str]) -> None:
    timeout = POLL + 1.0  # job 1's deadline falls inside the slow look
    mark = unique_sleep()
    markers.append(mark)
    sgs = start_with_a_slow_look(tmp_path, start_sgs, mark, "--timeout", f"{timeout:g}")
    sgs.wait_stderr(r"^\[sgs\] job 1 failed .*: timed out after", timeout=QUERY_SECONDS + 10)
    seen = time.time_ns()
    started = int((tmp_path / "job1.start").read_text())
    late = (seen - started) / 1e9 - timeout
    assert late < 1.5, (
        f"the {timeout:g}s timeout was kept {late:.2f}s late, while nvidia-smi was busy; "
        f"stderr:\n{sgs.stderr()}")
    assert not live_pids(mark)
    sgs.signal(signal.SIGINT)  # job 2 still waits for GPU 1: drain, not started
    assert sgs.wait(timeout=QUERY_SECONDS + 10) == 130, sgs.stderr()
