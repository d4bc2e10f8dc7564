"""A scheduler started with a standard fd closed (``<&-``, ``>&-``) opens
/dev/null in its place: the first file it opens (a lock directory, a job log)
never becomes its "stdin" or a job's "stdout"."""

from __future__ import annotations

import subprocess

from harness import SGS, child_env


def run_in_sh(redirection: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    assert SGS is not None
    return subprocess.run(["sh", "-c", f'"$0" --gpus 0 {redirection}', SGS], input=stdin,
                          capture_output=True, env=child_env(), timeout=30)


def test_a_closed_stdin_is_an_empty_input_not_a_directory() -> None:
    result = run_in_sh("<&-")
    assert result.returncode == 0, result.stderr
    assert b"stdin is closed: there are no commands to read" in result.stderr
    assert b"Is a directory" not in result.stderr


def test_jobs_get_a_writable_stdout_when_ours_is_closed() -> None:
    result = run_in_sh(">&-", b"echo hi\n")
    assert result.returncode == 0, result.stderr
    assert b"Bad file descriptor" not in result.stderr
