"""The client verbs' pure parts: what `status`, `ls`, `log` and `wait` print for
a reply, the request `add` builds, and the usage errors, without a server."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from simple_gpu_scheduler.cli.verb_add import add_request
from simple_gpu_scheduler.cli.verb_output import (
    LogLines,
    gpu_lines,
    ls_footer,
    ls_lines,
    status_lines,
    wait_lines,
)
from simple_gpu_scheduler.cli.verbs import VERBS, gpu_ids, parse_args, run_verb
from simple_gpu_scheduler.errors import UsageError


def make_run(**changes: Any) -> Dict[str, Any]:
    run: Dict[str, Any] = {
        "name": "sweep", "pid": 4242, "started": 1000.0, "elapsed": 3725.0, "paused": False,
        "input": "open", "stopping": None,
        "gpus": [
            {"id": "0", "state": "running", "jobs": [3, 5], "why": None},
            {"id": "1", "state": "running", "jobs": [4], "why": None},
            {"id": "2", "state": "running", "jobs": [4], "why": None},
            {"id": "3", "state": "busy", "jobs": [], "why": "another scheduler's lock"},
            {"id": "4", "state": "free", "jobs": [], "why": None},
        ],
        "counts": {"running": 3, "queued": 7, "succeeded": 2, "failed": 1,
                   "not_started": 0, "skipped": 0},
        "running": [
            {"id": 3, "name": None, "gpus": ["0"], "runtime": 185.0, "pid": 10,
             "command": "python train.py --lr 0.1"},
            {"id": 4, "name": None, "gpus": ["1", "2"], "runtime": 5.0, "pid": 11,
             "command": "torchrun " + "x" * 200 + " --seed 9"},
            {"id": 5, "name": None, "gpus": ["0"], "runtime": 30.0, "pid": 12,
             "command_b64": base64.b64encode(b"echo \xff\nls").decode()},
        ],
    }
    run.update(changes)
    return run


# --- status ----------------------------------------------------------------------------


def test_status_header_and_counts() -> None:
    lines = status_lines(make_run())
    assert lines[0] == "sweep (pid 4242): up 1h02m, reading input"
    assert lines[1] == "  3 running, 7 queued, 2 succeeded, 1 failed"
    lines = status_lines(make_run(paused=True, input="serving", stopping="drain",
                                  counts={"running": 0, "not_started": 4, "skipped": 1}))
    assert lines[0] == ("sweep (pid 4242): up 1h02m, input ended, serving adds, paused, "
                        "stopping (drain)")
    assert lines[1] == "  0 running, 0 queued, 0 succeeded, 0 failed, 4 not started, 1 skipped"


def test_status_has_a_row_per_gpu_and_job() -> None:
    lines = status_lines(make_run())
    assert lines[2].split() == ["GPU", "STATE", "JOB", "TIME", "COMMAND"]  # no names: no column
    rows = [line.split(None, 4) for line in lines[3:]]
    assert rows[0] == ["0", "running", "3", "3m05s", "python train.py --lr 0.1"]
    # A second job on gpu 0: the GPU is not repeated; the command is on one line.
    assert rows[1] == ["5", "30s", "echo", "\\xff\\x0als"]
    assert lines[4].startswith(" " * 12)
    assert rows[2][:4] == ["1", "running", "4", "5.0s"] and rows[2][4].endswith("--seed 9")
    assert lines[6].split(None, 3) == ["2", "running", "4", "(see gpu 1)"]  # shown once
    assert lines[7].split(None, 2) == ["3", "busy", "(another scheduler's lock)"]
    assert lines[7].index("(") == lines[2].index("COMMAND")
    assert lines[8].split() == ["4", "free"]
    assert len(lines) == 9
    assert all(line == line.rstrip() for line in lines)


def test_status_commands_are_whole_without_a_width_and_cut_with_one() -> None:
    whole = status_lines(make_run())
    assert any(("x" * 200) in line for line in whole)
    cut = status_lines(make_run(), width=80)
    assert all(len(line) <= 80 for line in cut[2:]), cut
    row = next(line for line in cut if "torchrun" in line)
    assert "..." in row and row.endswith("--seed 9")  # cut in the middle: the end kept


def test_status_shows_a_name_column_when_a_job_has_a_name() -> None:
    run = make_run()
    run["running"][0]["name"] = "lr0.1"
    lines = status_lines(run)
    assert lines[2].split() == ["GPU", "STATE", "JOB", "NAME", "TIME", "COMMAND"]
    assert lines[3].split(None, 5) == ["0", "running", "3", "lr0.1", "3m05s",
                                       "python train.py --lr 0.1"]
    assert lines[2].index("COMMAND") == lines[3].index("python")


def test_a_running_job_on_no_listed_gpu_still_shows() -> None:
    lines = gpu_lines([], [{"id": 8, "name": None, "gpus": ["7"], "runtime": 1.0,
                            "command": "true"}])
    assert lines[1].split() == ["-", "8", "1.0s", "true"]
    assert gpu_lines([], []) == []


# --- ls --------------------------------------------------------------------------------


def job(**fields: Any) -> Dict[str, Any]:
    base: Dict[str, Any] = {
        "id": 1, "name": None, "state": "queued", "gpus": [], "started": None,
        "runtime": None, "exit": None, "signal": None, "attempts": 0, "priority": 0,
        "pid": None, "command": "true", "reason": None}
    base.update(fields)
    return base


def test_ls_table() -> None:
    started = 1_700_000_000.0
    jobs = [
        job(id=1, state="succeeded", gpus=["0"], started=started, runtime=12.0, exit=0,
            attempts=1, command="python a.py"),
        job(id=2, name="lr0.1", state="killed", gpus=["0", "1"], started=started,
            runtime=3725.0, signal="SIGTERM", attempts=2, command="python b.py --lr 0.1"),
        job(id=10, state="queued", command_b64=base64.b64encode(b"\xfe").decode(),
            command=None),
    ]
    lines = ls_lines(jobs)
    assert lines[0].split() == ["ID", "NAME", "STATE", "GPUS", "START", "TIME", "EXIT",
                                "TRIES", "COMMAND"]
    clock = time.strftime("%H:%M:%S", time.localtime(started))
    assert lines[1].split(None, 8) == ["1", "-", "succeeded", "0", clock, "12s", "0", "1",
                                       "python a.py"]
    assert lines[2].split(None, 8) == ["2", "lr0.1", "killed", "0,1", clock, "1h02m",
                                       "SIGTERM", "2", "python b.py --lr 0.1"]
    assert lines[3].split() == ["10", "-", "queued", "-", "-", "-", "-", "0", "\\xfe"]
    # Columns line up: each command starts where the heading does.
    assert {line.index(cmd) for line, cmd in zip(lines, ["COMMAND", "python", "python"])} \
        == {lines[0].index("COMMAND")}
    assert lines[1].index(" 1 ") < lines[1].index("python")


def test_ls_commands_are_whole_and_on_one_line() -> None:
    long = "python train.py " + "--flag " * 100
    lines = ls_lines([job(command=long.strip()), job(id=2, command="a\\\n  b")])
    assert lines[1].endswith(long.strip())
    assert lines[2].endswith("a\\\\x0a  b")  # the newline escaped, the row one line


def test_ls_of_no_jobs_and_the_footer() -> None:
    assert ls_lines([]) == ["ID  NAME  STATE  GPUS  START  TIME  EXIT  TRIES  COMMAND"]
    assert ls_footer(0) is None
    assert ls_footer(1) == ("(1 older finished job not listed: a run keeps the latest "
                            "100,000, fewer for long commands)")
    assert "5 older finished jobs" in (ls_footer(5) or "")


# --- log -------------------------------------------------------------------------------


def test_log_without_prefix_passes_chunks_through() -> None:
    printer = LogLines(prefix=False)
    assert printer.feed(3, "out", b"half") == b"half"
    assert printer.feed(3, "out", b" line\n") == b" line\n"
    assert printer.finish() == []


def test_log_prefixes_whole_lines_and_holds_partial_ones() -> None:
    printer = LogLines(prefix=True)
    assert printer.feed(3, "out", b"step 1\nstep") == b"[3] step 1\n"
    assert printer.feed(4, "out", b"other\n") == b"[4] other\n"
    assert printer.feed(3, "err", b"warn") == b""  # each stream its own partial line
    assert printer.feed(3, "out", b" 2\nstep 3\n\n") == b"[3] step 2\n[3] step 3\n[3] \n"
    assert printer.feed(4, "out", b"no newline") == b""
    assert printer.finish(3) == [("err", b"[3] warn\n")]  # job 3 ended
    assert printer.finish(3) == []
    assert printer.finish() == [("out", b"[4] no newline\n")]
    assert printer.finish() == []


# --- add -------------------------------------------------------------------------------


def request(argv: List[str], stdin: bytes = b"") -> Dict[str, Any]:
    return add_request(parse_args("add", argv), "/work/dir", {"PATH": "/bin"}, stdin)


def test_add_one_command_with_only_the_keys_given() -> None:
    assert request(["--", "python", "train.py", "--lr", "0.1"]) == {
        "op": "add", "cwd": "/work/dir", "env": {"PATH": "/bin"}, "front": False,
        "jobs": [{"cmd": "python train.py --lr 0.1"}]}
    assert request(["python train.py > out.log"])["jobs"] == [{"cmd": "python train.py > out.log"}]


def test_add_every_option() -> None:
    sent = request(["--gpus", "2", "--mem", "12GiB", "--on", "0, 1,,2", "--priority", "-3",
                    "--name", "lr0.1", "--timeout", "2h", "--retries", "0", "--front",
                    "--", "python", "t.py"])
    assert sent["front"] is True
    assert sent["jobs"] == [{"cmd": "python t.py", "gpus": 2, "mem": "12GiB",
                             "on": ["0", "1", "2"], "priority": -3, "name": "lr0.1",
                             "timeout": "2h", "retries": 0}]


def test_add_a_command_that_is_not_utf8_goes_as_base64() -> None:
    word = os.fsdecode(b"caf\xe9")  # as sys.argv holds such an argument
    assert request(["--", "echo", word])["jobs"] == [
        {"cmd_b64": base64.b64encode(b"echo caf\xe9").decode()}]


def test_add_jsonl_sends_stdins_lines() -> None:
    stdin = b'{"cmd": "a"}\n\n   \n{"cmd": "b", "gpus": 2}\r\n\xff{"cmd": 1}\n'
    sent = request(["--jsonl", "--front"], stdin)
    assert "jobs" not in sent and sent["front"] is True
    assert sent["lines"] == ['{"cmd": "a"}', '{"cmd": "b", "gpus": 2}\r',
                             {"b64": base64.b64encode(b'\xff{"cmd": 1}').decode()}]


@pytest.mark.parametrize("argv, stdin, message", [
    ([], b"", "give the command after --"),
    (["--gpus", "2"], b"", "give the command after --"),
    (["--jsonl", "--", "echo"], b'{"cmd": "a"}\n', "no CMD"),
    (["--jsonl", "--gpus", "2"], b'{"cmd": "a"}\n', "--gpus"),
    (["--jsonl"], b"\n\n", "stdin holds no job lines"),
    (["--gpus", "0", "--", "x"], b"", "positive"),
    (["--retries", "-1", "--", "x"], b"", "retries"),
    (["--priority", "high", "--", "x"], b"", "priority"),
    (["--gpu", "2", "--", "x"], b"", "unrecognized"),  # no abbreviations
    (["python", "train.py", "--lr", "0.1"], b"", "unrecognized arguments: --lr"),
])
def test_add_usage_errors(argv: List[str], stdin: bytes, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        request(argv, stdin)


# --- other verbs' arguments ------------------------------------------------------------


def test_gpu_ids_split_on_commas_and_spaces() -> None:
    assert gpu_ids(["0,1", "2", " 3 , 4", "GPU-ab"]) == ["0", "1", "2", "3", "4", "GPU-ab"]


def test_move_needs_exactly_one_place() -> None:
    assert parse_args("move", ["9", "--before", "4"]).before == 4
    for argv in (["9"], ["9", "--front", "--back"], ["x", "--front"]):
        with pytest.raises(UsageError):
            parse_args("move", argv)


def test_wait_lines() -> None:
    end = {"end": True, "succeeded": False, "jobs": [
        {"id": 3, "state": "succeeded", "exit": 0, "signal": None},
        {"id": 4, "state": "failed", "exit": 2, "signal": None},
        {"id": 5, "state": "timed_out", "exit": None, "signal": "SIGTERM"},
        {"id": 6, "state": "not_started", "exit": None, "signal": None}]}
    assert wait_lines(end) == ["job 4: failed (exit 2)", "job 5: timed out (SIGTERM)",
                               "job 6: not started", "3 of 4 jobs did not succeed"]
    assert wait_lines({"end": True, "succeeded": True, "jobs": [end["jobs"][0]]}) == [
        "1 job succeeded"]


# --- exit statuses without a run -------------------------------------------------------


def private_dir(tmp_path: Path) -> str:
    directory = tmp_path / "ctl"
    directory.mkdir(mode=0o700)
    os.chmod(directory, 0o700)
    return str(directory)


@pytest.mark.parametrize("verb, argv, message", [
    ("status", [], "no run of yours is live in "),
    ("ls", ["--run", "sweep"], "no run named sweep is live in "),
    ("cancel", ["x"], "argument ID: expected a whole number >= 0, got 'x'"),
    ("kill", [], "the following arguments are required: ID"),
    ("log", ["--all", "3"], "give job ids or --all"),
    ("pause", ["now"], "unrecognized arguments: now"),
    ("gpus", ["remove"], "gpus remove: give GPU ids"),
    ("gpus", ["add", "--kill", "1"], "--kill goes with gpus remove"),
    ("add", [], "give the command after --"),
])
def test_usage_errors_are_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], verb: str, argv: List[str],
    message: str,
) -> None:
    assert run_verb(verb, ["--control-dir", private_dir(tmp_path), *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"simple_gpu_scheduler {verb}: error: ") and message in err
    assert err.count("\n") == 1


def test_a_control_dir_open_to_others_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    os.chmod(tmp_path, 0o755)
    assert run_verb("status", ["--control-dir", str(tmp_path)]) == 2
    assert "is open to others" in capsys.readouterr().err


def test_the_verbs() -> None:
    assert VERBS == ("status", "ls", "add", "cancel", "kill", "log", "pause", "unpause",
                     "drain", "stop", "gpus", "move", "wait")
    for verb in VERBS:
        parse_args(verb, _minimal(verb))


def _minimal(verb: str) -> List[str]:
    """The fewest arguments each verb parses."""
    return {"add": ["--", "true"], "cancel": ["1"], "kill": ["1"], "log": ["--all"],
            "move": ["1", "--front"]}.get(verb, [])


def test_the_command_line_dispatches_exactly_the_client_verbs() -> None:
    # cli.main names them itself, so that a run never imports the client.
    from simple_gpu_scheduler.cli.main import VERBS as DISPATCHED

    assert DISPATCHED == VERBS


def test_a_long_jsonl_input_goes_in_batches_in_order() -> None:
    import json

    from simple_gpu_scheduler.cli.verb_add import BATCH, add_batches

    lines = [json.dumps({"cmd": f"echo {i}"}) for i in range(20000)]
    request = {"op": "add", "cwd": "/", "env": {}, "front": False, "lines": lines}
    batches = list(add_batches(request))
    assert len(batches) > 1
    assert [line for b in batches for line in b["lines"]] == lines
    for batch in batches:
        assert len(json.dumps(batch["lines"], separators=(",", ":"))) <= BATCH + 2
        assert batch["cwd"] == "/" and batch["op"] == "add"
    one = {"op": "add", "cwd": "/", "env": {}, "front": False, "jobs": [{"cmd": "true"}]}
    assert list(add_batches(one)) == [one]
