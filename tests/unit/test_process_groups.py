"""Process groups: ``kill(pgid, 0)`` answering EPERM means the group is there.

A job that runs a setuid program (``sudo``, ``ping`` on some systems) can leave
a group whose processes we may not signal: ``killpg`` raises PermissionError.
Taking that for "gone" would give the job's GPU to the next job while the
group still uses it; only ESRCH (ProcessLookupError) means gone.
"""

from __future__ import annotations

import os
import signal
from typing import List, Tuple

import pytest

from simple_gpu_scheduler.launch import procgroup


def killpg_raising(exc: BaseException, calls: List[Tuple[int, int]]):
    def killpg(pgid: int, signum: int) -> None:
        calls.append((pgid, signum))
        raise exc

    return killpg


def test_a_group_that_answers_eperm_is_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: List[Tuple[int, int]] = []
    monkeypatch.setattr(os, "killpg", killpg_raising(PermissionError(1, "EPERM"), calls))
    assert procgroup.group_alive(4242) is True
    assert calls == [(4242, 0)]


def test_a_group_that_answers_esrch_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: List[Tuple[int, int]] = []
    monkeypatch.setattr(os, "killpg", killpg_raising(ProcessLookupError(3, "ESRCH"), calls))
    assert procgroup.group_alive(4242) is False
    assert calls == [(4242, 0)]


def test_a_group_that_answers_is_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: List[Tuple[int, int]] = []
    monkeypatch.setattr(os, "killpg", lambda pgid, signum: calls.append((pgid, signum)))
    assert procgroup.group_alive(4242) is True
    assert calls == [(4242, 0)]


@pytest.mark.parametrize("exc", [PermissionError(1, "EPERM"), ProcessLookupError(3, "ESRCH")])
def test_signalling_a_group_we_cannot_reach_is_no_error(monkeypatch: pytest.MonkeyPatch,
                                                        exc: BaseException) -> None:
    calls: List[Tuple[int, int]] = []
    monkeypatch.setattr(os, "killpg", killpg_raising(exc, calls))
    procgroup.send_group(4242, signal.SIGTERM)
    assert calls == [(4242, signal.SIGTERM)]


def test_our_own_group_is_alive_and_a_finished_one_is_gone() -> None:
    # The real call, no monkeypatch: our own group exists; a reaped child's is gone.
    assert procgroup.group_alive(os.getpgid(0)) is True
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        os._exit(0)
    os.waitpid(pid, 0)
    assert procgroup.group_alive(pid) is False
