"""The command line through the installed command: usage errors (exit 2, one
line), --help, --version, ``python -m`` and how --gpus is read
(the parsing itself is tested in unit/test_gpu_ids.py)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
from harness import RUN_TIMEOUT, child_env, run_sgs

from simple_gpu_scheduler import __version__


def assert_usage_error(result: subprocess.CompletedProcess, *words: str) -> None:
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, f"a usage error is one line, got:\n{stderr}"
    assert "Traceback" not in stderr
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert result.stdout == b""


# --- usage errors ------------------------------------------------------------------


@pytest.mark.parametrize("args, words", [
    (["--gpus", ""], ["empty GPU id"]),
    (["--gpus", "0,,1"], ["empty GPU id", "0,,1"]),
    (["--gpus", "0,1,"], ["empty GPU id"]),
    (["--gpus", "0", " "], ["empty GPU id"]),
    (["--gpus", "0,1,0"], ["GPU id 0", "twice"]),
    (["--gpus", "0,1", "1"], ["GPU id 1", "twice"]),
    (["--gpus", "GPU-abc", "GPU-abc"], ["GPU-abc", "twice"]),
    (["--gpus", "0,1", "--gpus-per-job", "3"], ["--gpus-per-job 3", "2 GPU"]),
    (["--gpus", "0", "--jobs-per-gpu", "0"], ["--jobs-per-gpu", "'0'"]),
    (["--gpus", "0", "--jobs-per-gpu", "two"], ["--jobs-per-gpu", "'two'"]),
    (["--gpus", "0", "--gpus-per-job", "-1"], ["--gpus-per-job"]),
    (["--gpus", "0", "--kill-grace", "-1"], ["--kill-grace"]),
    (["--gpus", "0", "--kill-grace", "nan"], ["--kill-grace"]),
    (["--gpus", "0", "-q", "-v"], ["-v", "-q"]),
    (["--gpus", "0", "--no-such-option"], ["--no-such-option"]),
])
def test_usage_error_is_one_line_and_exit_2(args: List[str], words: List[str]) -> None:
    # stdin has a command: a usage error must not run anything.
    assert_usage_error(run_sgs(args, b"echo ran\n"), *words)


def test_no_gpus_given_and_none_found_is_a_usage_error() -> None:
    if shutil.which("nvidia-smi") or importlib.util.find_spec("pynvml"):
        pytest.skip("GPUs may be found here: without --gpus every GPU is used")
    assert_usage_error(run_sgs([], b"echo ran\n"), "no GPUs found", "--gpus")


def test_huge_size_is_a_usage_error_not_an_internal_error() -> None:
    # units.parse_size lets OverflowError out; argparse only turns ValueError into usage.
    assert_usage_error(run_sgs(["--gpus", "0", "--gpu-memory", "9" * 400], b"echo ran\n"),
                       "--gpu-memory")


def test_log_dir_that_cannot_be_created_is_a_usage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_sgs(["--gpus", "0", "--log-dir", str(blocker / "logs")], b"true\n")
    assert_usage_error(result, "--log-dir", str(blocker / "logs"))


def test_usage_error_runs_nothing(tmp_path: Path) -> None:
    result = run_sgs(["--gpus", "0,0"], b"touch ran\n", cwd=tmp_path)
    assert result.returncode == 2
    assert not (tmp_path / "ran").exists()


# --- help and version ---------------------------------------------------------------


def test_help_has_worked_examples() -> None:
    result = run_sgs(["--help"])
    assert result.returncode == 0
    text = result.stdout.decode()
    for needle in ("--gpus", "--jobs-per-gpu", "--gpus-per-job", "--shell", "--tag",
                   "--log-dir", "--kill-grace", "--quiet", "--verbose", "--version",
                   "examples:", "simple_gpu_scheduler --gpus 0,1,2 < jobs.txt",
                   "tail -F", "SIGUSR1", "exit status"):
        assert needle in text, needle
    flat = " ".join(text.split())  # argparse wraps help lines
    assert "jobs that may share one GPU (default: 1" in flat
    assert "distinct GPUs each job gets (default: 1)" in flat
    assert "before SIGKILL (default: 10)" in flat


def test_version() -> None:
    result = run_sgs(["--version"])
    assert result.returncode == 0
    assert result.stdout.decode().strip() == f"simple_gpu_scheduler {__version__}"


def test_python_dash_m_works(tmp_path: Path) -> None:
    version = subprocess.run([sys.executable, "-m", "simple_gpu_scheduler", "--version"],
                             capture_output=True, timeout=RUN_TIMEOUT)
    assert version.returncode == 0
    assert __version__ in version.stdout.decode()
    run = subprocess.run([sys.executable, "-m", "simple_gpu_scheduler", "--gpus", "7"],
                         input=b'printf %s "$CUDA_VISIBLE_DEVICES" > out\n',
                         capture_output=True, timeout=RUN_TIMEOUT, cwd=tmp_path, env=child_env())
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "out").read_text() == "7"
    usage = subprocess.run([sys.executable, "-m", "simple_gpu_scheduler", "--gpus", "0,0"],
                           capture_output=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)
    assert_usage_error(usage, "--gpus", "twice")


# --- how --gpus is read -----------------------------------------------------------------


@pytest.mark.parametrize("gpus", [["0,1,2"], ["0", "1", "2"], ["0,1", "2"]])
def test_comma_and_space_separated_gpus_both_run_jobs(tmp_path: Path, gpus: List[str]) -> None:
    script = "".join(f'printf %s "$CUDA_VISIBLE_DEVICES" > gpu{i}\n' for i in range(3))
    result = run_sgs(["--gpus", *gpus, "--jobs-per-gpu", "1"], script.encode(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    seen = sorted((tmp_path / f"gpu{i}").read_text() for i in range(3))
    assert set(seen) <= {"0", "1", "2"}


def test_uuid_and_mig_ids_go_verbatim_into_cuda_visible_devices(tmp_path: Path) -> None:
    uuid = "GPU-8a1b2c3d-aaaa-bbbb-cccc-0123456789ab"
    mig = "MIG-8a1b2c3d-aaaa-bbbb-cccc-0123456789ab"
    result = run_sgs(["--gpus", f"{uuid},{mig}", "--gpus-per-job", "2"],
                     b'printf %s "$CUDA_VISIBLE_DEVICES" > out\n', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out").read_text() == f"{uuid},{mig}"
