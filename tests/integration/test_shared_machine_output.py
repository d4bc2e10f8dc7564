"""Safe by default on a shared machine, for job output: ``--tag`` with
``--log-dir``, a rerun that never destroys an earlier run's logs, JSON lines'
``name`` in messages, the status table and log file names, and ``--progress``
that knows the total of a regular file. Real processes."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

from harness import PROGRESS_STATUS as STATUS
from harness import Sgs, run_sgs, sgs_lines, wait_for_file

MARKER = re.compile(
    r"--- simple_gpu_scheduler: job (\d+) attempt (\d+), \d{4}-\d\d-\d\d \d\d:\d\d:\d\d ---")


def jsonl(*jobs: dict) -> bytes:
    return "".join(json.dumps(job) + "\n" for job in jobs).encode()


# --- A: --tag with --log-dir ----------------------------------------------------------


def test_tag_and_log_dir_together_fill_the_files_and_show_tagged_output(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    result = run_sgs(["--gpus", "0", "--tag", "--log-dir", str(logs)],
                     b"echo out$SGS_JOB_ID; printf 'err%s' $SGS_JOB_ID >&2\n" * 2)
    assert result.returncode == 0, result.stderr
    for job_id in (1, 2):
        # The files hold exactly what the job wrote, untagged.
        assert (logs / f"{job_id}.out").read_bytes() == f"out{job_id}\n".encode()
        assert (logs / f"{job_id}.err").read_bytes() == f"err{job_id}".encode()
    assert result.stdout == b"[1|gpu 0] out1\n[2|gpu 0] out2\n"
    stderr = result.stderr.decode().splitlines()
    assert "[1|gpu 0] err1" in stderr and "[2|gpu 0] err2" in stderr


# --- B: a rerun into the same --log-dir --------------------------------------------------


def test_a_rerun_into_the_same_log_dir_keeps_the_first_runs_output(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    args = ["--gpus", "0", "--log-dir", str(logs)]
    first = run_sgs(args, b"echo first run; echo first err >&2\ntrue\n")
    assert first.returncode == 0, first.stderr
    assert (logs / "1.out").read_bytes() == b"first run\n", "no marker in a new file"
    second = run_sgs(args, b"echo second run\ntrue\n")
    assert second.returncode == 0, second.stderr
    lines = (logs / "1.out").read_text().splitlines()
    assert lines[0] == "first run" and lines[-1] == "second run", lines
    assert len(lines) == 3 and MARKER.fullmatch(lines[1]), lines
    assert MARKER.fullmatch(lines[1]).groups() == ("1", "1")  # type: ignore[union-attr]
    # The job wrote nothing to stderr this time: the marker says that it ran.
    err = (logs / "1.err").read_text().splitlines()
    assert err[0] == "first err" and len(err) == 2 and MARKER.fullmatch(err[1]), err
    assert (logs / "2.out").read_bytes() == b""


def test_a_retry_into_a_log_file_with_content_gets_a_marker(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    result = run_sgs(["--gpus", "0", "--log-dir", str(logs), "--retries", "1"],
                     b"echo try; test -e again || { touch again; exit 3; }\n", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = (logs / "1.out").read_text().splitlines()
    assert lines[0] == "try" and lines[2] == "try" and len(lines) == 3, lines
    assert MARKER.fullmatch(lines[1]).groups() == ("1", "2")  # type: ignore[union-attr]


# --- C: a JSON line's name ----------------------------------------------------------------


def test_a_jobs_name_is_in_its_messages_and_its_log_file_names(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    result = run_sgs(
        ["--gpus", "0", "--input", "jsonl", "--log-dir", str(logs)],
        jsonl({"cmd": "echo hi", "name": "lr=0.1,bs=32"},
              {"cmd": "exit 2", "name": "a b/c\u00e9"},
              {"cmd": "echo plain"},
              {"cmd": "true", "name": "x" * 300}))
    assert result.returncode == 1
    said = sgs_lines(result.stderr.decode())
    assert any(x.startswith("job 1 (lr=0.1,bs=32) started on gpu 0: echo hi") for x in said), said
    assert any(x.startswith("job 1 (lr=0.1,bs=32) finished on gpu 0 after ") for x in said)
    assert any(x.startswith("job 2 (a b/c\u00e9) failed on gpu 0 after ") for x in said), said
    assert any(x.startswith("job 3 started on gpu 0: echo plain") for x in said), said
    assert (logs / "1-lr=0.1,bs=32.out").read_bytes() == b"hi\n"
    assert (logs / "1-lr=0.1,bs=32.err").exists()
    assert (logs / "2-a_b_c_.out").exists()
    assert (logs / "3.out").read_bytes() == b"plain\n"
    (long_out,) = [p.name for p in logs.iterdir() if p.name.startswith("4-")
                   and p.name.endswith(".out")]
    assert long_out == "4-" + "x" * 100 + ".out"


def test_a_jobs_name_is_in_the_not_started_list(tmp_path: Path, start_sgs) -> None:
    sgs: Sgs = start_sgs(["--gpus", "0", "--input", "jsonl"])
    sgs.write(jsonl({"cmd": f"touch '{tmp_path}/started'; sleep 0.5", "name": "first"},
                    {"cmd": "true", "name": "second"}))
    wait_for_file(tmp_path / "started")
    sgs.signal(signal.SIGTERM)
    sgs.wait_stderr(r"not started: job 2 \(second\): true$")
    assert sgs.wait() == 143


def test_a_jobs_name_is_in_the_status_table(tmp_path: Path, start_sgs) -> None:
    sgs: Sgs = start_sgs(["--gpus", "0,1", "--input", "jsonl"])
    sgs.write(jsonl({"cmd": f"touch '{tmp_path}/a'; sleep 30", "name": "lr=0.1"},
                    {"cmd": f"touch '{tmp_path}/b'; sleep 30"}))
    wait_for_file(tmp_path / "a")
    wait_for_file(tmp_path / "b")
    sgs.signal(signal.SIGUSR1)
    sgs.wait_stderr(r"^\[sgs\] +JOB +GPU +TIME +NAME +COMMAND$")
    stderr = sgs.stderr()
    assert re.search(r"^\[sgs\] +1 +gpu \d +\S+ +lr=0\.1 +touch ", stderr, re.M), stderr
    assert re.search(r"^\[sgs\] +2 +gpu \d +\S+ +touch ", stderr, re.M), stderr
    sgs.signal(signal.SIGTERM)
    # Two signals sent at once can merge into one (a pending signal is not
    # queued twice): the second goes only once the first was acted on.
    sgs.wait_stderr(r"draining")
    sgs.signal(signal.SIGTERM)
    assert sgs.wait() == 143


# --- D: --progress knows the total of a regular file ---------------------------------------


def test_progress_on_a_regular_file_shows_the_true_queue_and_an_eta(tmp_path: Path) -> None:
    # 30 commands (a comment, blank lines and a continuation that count as the run
    # counts them): far more than the scheduler reads ahead.
    commands = b"# a sweep\n\n" + b"true\n" * 28 + b"echo a \\\n  b\n" + b"exit 0\n"
    result = run_sgs(["--gpus", "0", "--progress"], commands, cwd=tmp_path, from_file=True)
    assert result.returncode == 0, result.stderr
    drawn = [m for m in (STATUS.fullmatch(x[len("progress: "):])
                         for x in sgs_lines(result.stderr.decode())
                         if x.startswith("progress: ")) if m]
    assert drawn, result.stderr
    first = drawn[0]
    assert first.group(5) == "", f"the total is known: {first.group(0)}"
    done, running, queued = int(first.group(1)), int(first.group(3)), int(first.group(4))
    assert done + running + queued == 30, first.group(0)
    assert " | ETA " in first.group(0)
    # The file was not read ahead of the run: every command ran once.
    assert "30 of 30 succeeded" in result.stderr.decode()
