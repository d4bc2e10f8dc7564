"""JSON lines input: every key, every rejection, and the line numbers (pure)."""

from __future__ import annotations

from typing import List, Optional

import pytest

from simple_gpu_scheduler.input.jsonl import Defaults, parse_job
from simple_gpu_scheduler.input.lines import CommandAssembler, Line, RawCommand
from simple_gpu_scheduler.model.jobs import Job

GiB = 2**30


def assemble(lines: List[bytes], continuation: bool = True) -> List[RawCommand]:
    assembler = CommandAssembler(continuation=continuation)
    out = [assembler.feed(Line(line)) for line in lines]
    out.append(assembler.end())
    return [raw for raw in out if raw is not None]


def test_commands_know_the_line_they_start_on() -> None:
    raws = assemble([b"# comment", b"", b"first", b"second \\", b"continued", b"third"])
    assert [(r.text, r.line) for r in raws] == [
        (b"first", 3), (b"second \\\ncontinued", 4), (b"third", 6)]


def test_json_lines_do_not_continue() -> None:
    raws = assemble([b'{"cmd": "a"} \\', b'{"cmd": "b"}'], continuation=False)
    assert [(r.text, r.line) for r in raws] == [(b'{"cmd": "a"} \\', 1), (b'{"cmd": "b"}', 2)]


def job_from(text: str, line: int = 7, defaults: Optional[Defaults] = None) -> Job:
    return parse_job(3, RawCommand(text.encode(), line=line), defaults or Defaults())


def test_every_key() -> None:
    job = job_from(
        '{"cmd": "python train.py", "gpus": 2, "mem": "12GiB", "on": [0, "1", "GPU-x"],'
        ' "name": "lr=0.1", "priority": -5, "env": {"LR": "0.1"}, "cwd": "/tmp",'
        ' "timeout": "15m", "retries": 2}',
        defaults=Defaults(gpus=1, aliases={"GPU-x": "2"}),
    )
    assert job.invalid is None
    assert (job.id, job.command, job.gpus, job.mem) == (3, b"python train.py", 2, 12 * GiB)
    assert job.on == ("0", "1", "2")
    assert (job.name, job.priority, dict(job.env), job.cwd) == ("lr=0.1", -5, {"LR": "0.1"}, "/tmp")
    assert (job.timeout, job.retries) == (900.0, 2)


def test_defaults_and_plain_values() -> None:
    job = job_from('{"cmd": "x", "mem": 1000, "timeout": 2.5}', defaults=Defaults(gpus=2))
    assert (job.gpus, job.mem, job.timeout, job.on, job.priority, job.retries) == (
        2, 1000, 2.5, None, 0, 0)


def test_unicode_command_is_utf8_bytes() -> None:
    assert job_from('{"cmd": "echo caf\\u00e9"}').command == "echo café".encode()


@pytest.mark.parametrize("text, problem", [
    ('not json', "invalid JSON: Expecting value at column 1"),
    ('{"cmd": "x"', "invalid JSON"),
    ('["cmd"]', "expected a JSON object, got an array"),
    ('{"cmd": "x", "gpu": 2}', "unknown key 'gpu'"),
    ('{"cmd": "x", "cmd": "y"}', "key 'cmd' is given twice"),
    ('{"gpus": 1}', "key 'cmd' is missing"),
    ('{"cmd": 5}', "'cmd' must be a string, got a number"),
    ('{"cmd": "  "}', "'cmd' is empty"),
    ('{"cmd": "a\\u0000b"}', "'cmd' contains a NUL character"),
    ('{"cmd": "\\ud800"}', "not valid Unicode"),
    ('{"cmd": "x", "gpus": 0}', "'gpus' must be at least 1, got 0"),
    ('{"cmd": "x", "gpus": true}', "'gpus' must be a whole number, got a boolean"),
    ('{"cmd": "x", "gpus": 1.5}', "'gpus' must be a whole number, got a number"),
    ('{"cmd": "x", "mem": "12 parsecs"}', "'mem': invalid size"),
    ('{"cmd": "x", "mem": 0}', "'mem' must be more than 0"),
    ('{"cmd": "x", "mem": [1]}', "'mem' must be a size"),
    ('{"cmd": "x", "on": []}', "'on' must be a non-empty array"),
    ('{"cmd": "x", "on": "0"}', "'on' must be a non-empty array of GPU ids, got a string"),
    ('{"cmd": "x", "on": [null]}', "'on' must hold GPU ids"),
    ('{"cmd": "x", "name": 3}', "'name' must be a non-empty string"),
    ('{"cmd": "x", "priority": "high"}', "'priority' must be a whole number"),
    ('{"cmd": "x", "env": ["A=1"]}', "'env' must be an object of strings"),
    ('{"cmd": "x", "env": {"A": 1}}', "'env' value of A must be a string"),
    ('{"cmd": "x", "env": {"A=B": "1"}}', "invalid variable name"),
    ('{"cmd": "x", "env": {"CUDA_VISIBLE_DEVICES": "1"}}', "may not set CUDA_VISIBLE_DEVICES"),
    ('{"cmd": "x", "cwd": ""}', "'cwd' must be a non-empty string"),
    ('{"cmd": "x", "timeout": 0}', "'timeout' must be more than 0 seconds"),
    ('{"cmd": "x", "timeout": "soon"}', "'timeout': invalid duration"),
    ('{"cmd": "x", "timeout": NaN}', "'timeout' must be more than 0 seconds"),
    ('{"cmd": "x", "retries": -1}', "'retries' must be at least 0"),
])
def test_rejections_name_the_line_and_the_problem(text: str, problem: str) -> None:
    job = job_from(text, line=7)
    assert job.invalid is not None
    assert job.invalid.startswith("input line 7: ")
    assert problem in job.invalid
    assert job.command == text.encode()  # shown in the failure message


def test_invalid_utf8_and_assembler_problems() -> None:
    assert "not valid UTF-8" in (parse_job(1, RawCommand(b'{"cmd": "\xff"}', line=2)).invalid or "")
    raw = RawCommand(b"x", invalid="the command contains a NUL byte", line=4)
    assert parse_job(1, raw).invalid == "input line 4: the command contains a NUL byte"
