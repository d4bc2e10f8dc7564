"""The client verbs (``simple_gpu_scheduler status``, ``ls``, ``add``, ...) end to
end: real schedulers started through the installed console script, real
clients talking to them over their control sockets (docs/control.md).

Every run has a unique ``--name`` and every client names it with ``--run``, so
runs of other tests in the suite's control directory never get in the way;
the tests about which run a client picks use a control directory of their own.
Polling for a job's state goes over a raw socket (no interpreter start per
look); what is asserted comes from the verbs themselves.
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import pytest
from harness import (
    SGS,
    Sgs,
    child_env,
    control_dir,
    live_pids,
    not_started,
    poll_until,
    rows_of,
    run_name,
    run_sgs,
    sgs_lines,
    stop,
    unique_sleep,
    verb,
)

#: A job that records "ID GPUS" in started.log of its directory, then waits for
#: the file gate-ID there: the test decides when it ends.
GATED = ('echo "$SGS_JOB_ID $CUDA_VISIBLE_DEVICES" >> started.log; '
         'while [ ! -e "gate-$SGS_JOB_ID" ]; do sleep 0.02; done')


# --- helpers ------------------------------------------------------------------------


def ask(path: Path, message: Dict[str, Any], timeout: float = 5.0) -> Optional[Dict[str, Any]]:
    """One request over a raw connection to the socket at `path`: its reply
    (None when no run answers there)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
        sock.sendall(json.dumps(message).encode() + b"\n")
        data = b""
        while data.count(b"\n") < 2:  # the greeting, then the reply
            chunk = sock.recv(1 << 20)
            if not chunk:
                return None
            data += chunk
        return json.loads(data.split(b"\n")[1])
    except OSError:
        return None
    finally:
        sock.close()


@pytest.fixture
def private_dir() -> Iterable[Path]:
    """A control directory no other test's runs use (mode 0700, as required),
    short enough for socket paths (under /tmp, not pytest's deep tmp_path)."""
    path = Path(tempfile.mkdtemp(prefix="sgs-c-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def one_line(text: str) -> str:
    """`text` must be exactly one non-empty line (the verbs' error rule); it."""
    lines = text.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"not one line: {text!r}"
    return lines[0]


class Run:
    """One scheduler started for a test, and its clients (``--run NAME``)."""

    def __init__(self, sgs: Sgs, name: str, workdir: Path, cdir: Path,
                 env: Dict[str, str]) -> None:
        self.sgs, self.name, self.workdir, self.cdir = sgs, name, workdir, cdir
        self.client_env = env
        self.socket = cdir / f"{name}.sock"

    @property
    def pid(self) -> int:
        return self.sgs.pid

    # The verbs.

    def verb(self, name: str, *args: Any, input: Optional[str] = None,
             env: Optional[Dict[str, str]] = None, cwd: Optional[Path] = None
             ) -> subprocess.CompletedProcess:
        return verb(name, "--run", self.name, *args, input=input,
                    env=self.client_env if env is None else env,
                    cwd=self.workdir if cwd is None else cwd)

    def ok(self, name: str, *args: Any, **kwargs: Any) -> str:
        """A verb that must succeed; its stdout."""
        done = self.verb(name, *args, **kwargs)
        assert done.returncode == 0, (name, args, done.returncode, done.stderr,
                                      self.sgs.stderr())
        return done.stdout

    def refused(self, name: str, *args: Any, **kwargs: Any) -> str:
        """A verb that the run must refuse: exit 1, one line on stderr; that line."""
        done = self.verb(name, *args, **kwargs)
        assert done.returncode == 1, (name, args, done.returncode, done.stdout, done.stderr)
        assert done.stdout == ""
        return one_line(done.stderr)

    def status(self) -> Dict[str, Any]:
        runs = json.loads(self.ok("status", "--json"))
        assert isinstance(runs, list) and len(runs) == 1, runs
        return runs[0]

    def ls(self) -> List[Dict[str, Any]]:
        reply = json.loads(self.ok("ls", "--json"))
        assert reply["forgotten"] == 0
        return reply["jobs"]

    def add(self, *args: str, cwd: Optional[Path] = None,
            env: Optional[Dict[str, str]] = None) -> int:
        """``add [OPTIONS] -- CMD`` (`args` hold the ``--``); the one new id."""
        return int(one_line(self.ok("add", *args, cwd=cwd, env=env)))

    # Polling, over the raw socket.

    def jobs(self) -> Dict[int, Dict[str, Any]]:
        reply = ask(self.socket, {"op": "ls"})
        assert reply is not None and reply["ok"], (reply, self.sgs.stderr())
        return {job["id"]: job for job in reply["jobs"]}

    def raw_status(self) -> Dict[str, Any]:
        reply = ask(self.socket, {"op": "status"})
        assert reply is not None and reply["ok"], (reply, self.sgs.stderr())
        return reply["run"]

    def wait_state(self, job_id: int, *states: str, timeout: float = 10.0) -> Dict[str, Any]:
        """Poll until job `job_id` is in one of `states`; its ls row."""
        def found() -> Any:
            job = self.jobs().get(job_id)
            return job if job is not None and job["state"] in states else None

        return poll_until(found, timeout, what=lambda: (
            f"job {job_id} to be {'/'.join(states)}: {self.jobs().get(job_id)}; "
            f"stderr:\n{self.sgs.stderr()}"))

    def queued(self) -> List[int]:
        """The ids of the queued jobs, in ls order (the order they will start);
        over the raw socket (test_ls_rows checks the verb's order)."""
        return [job["id"] for job in self.jobs().values() if job["state"] == "queued"]

    def release(self, job_id: int) -> None:
        """Let a `GATED` job end."""
        (self.workdir / f"gate-{job_id}").touch()

    def end(self, timeout: float = 15.0) -> int:
        """Wait for the run's exit (stdin closed first); its status."""
        return self.sgs.wait(timeout)

    def drain(self, timeout: float = 15.0) -> int:
        self.ok("drain")
        return self.end(timeout)

    def finish(self) -> int:
        """Stop the run (its running jobs terminated) and wait for its exit."""
        self.ok("stop")
        return self.end()


Starter = Callable[..., Run]


@pytest.fixture
def start(tmp_path: Path, markers: List[str]) -> Iterable[Callable[..., Run]]:
    """Start a scheduler (``--name``, ``--shell /bin/sh``, ``--serve`` and stdin
    /dev/null unless told otherwise) and wait until it answers on its socket.
    At teardown any still running is stopped (SIGTERM twice, then SIGKILL)."""
    started: List[Run] = []

    def start_run(*args: str, stdin: Any = subprocess.DEVNULL, serve: bool = True,
                  env: Optional[Dict[str, str]] = None, cdir: Optional[Path] = None,
                  listen: bool = True) -> Run:
        name = run_name("verbs")
        env = child_env(env)
        if cdir is not None:
            env["SGS_CONTROL_DIR"] = str(cdir)
        named = ["--name", name] if listen else []  # --name needs the socket
        argv = [*named, "--shell", "/bin/sh", *(["--serve"] if serve else []), *args]
        run = Run(Sgs(argv, tmp_path, stdin=stdin, env=env), name, tmp_path,
                  control_dir() if cdir is None else cdir, env)
        started.append(run)
        if listen:
            poll_until(lambda: ask(run.socket, {"op": "status"}) is not None
                       or not run.sgs.alive(), 10, what=f"run {name} to answer")
            assert run.sgs.alive(), run.sgs.stderr()
        return run

    yield start_run
    for run in started:
        stop(run.sgs.proc)
        if run.sgs.proc.stdin is not None:
            run.sgs.proc.stdin.close()


def mark(markers: List[str]) -> str:
    found = unique_sleep()
    markers.append(found)
    return found


def gone(*marks: str, timeout: float = 5.0) -> None:
    poll_until(lambda: not any(live_pids(m) for m in marks), timeout,
               what=lambda: f"no process left: {[live_pids(m) for m in marks]}")


class Reader:
    """A client's stdout (a Popen pipe) read as it comes, with deadlines."""

    def __init__(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        self.proc, self.fd, self.data = proc, proc.stdout.fileno(), b""

    def until(self, wanted: bytes, timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        while wanted not in self.data:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {wanted!r} in the client's output: {self.data!r}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    pytest.fail(f"the client's output ended without {wanted!r}: {self.data!r}")
                self.data += chunk
        return self.data

    def rest(self, timeout: float = 10.0) -> bytes:
        out, _ = self.proc.communicate(timeout=timeout)
        self.data += out
        return self.data


def popen_verb(run: Run, *args: str) -> subprocess.Popen:
    assert SGS is not None
    return subprocess.Popen([SGS, args[0], "--run", run.name, *args[1:]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=run.client_env, cwd=run.workdir)


def finish_client(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


# --- status ---------------------------------------------------------------------------


def test_status_json_fields_and_text(start: Starter, markers: List[str]) -> None:
    m = mark(markers)
    run = start("--gpus", "0,1,2", stdin=subprocess.PIPE)
    before = time.time()
    run.sgs.write(f"sleep {m}\n".encode())
    run.wait_state(1, "running")
    out = run.ok("gpus", "remove", "2")
    assert re.search(r"^\s*2\s+removed\b", out, re.M), out

    st = run.status()
    assert st["name"] == run.name and st["pid"] == run.pid
    assert isinstance(st["started"], (int, float)) and before - 60 < st["started"] <= time.time()
    assert isinstance(st["elapsed"], (int, float)) and st["elapsed"] >= 0
    assert st["paused"] is False
    assert st["input"] == "open"
    assert st["stopping"] is None
    assert st["gpus"] == [
        {"id": "0", "state": "running", "jobs": [1], "why": None},
        {"id": "1", "state": "free", "jobs": [], "why": None},
        {"id": "2", "state": "removed", "jobs": [], "why": None},
    ]
    assert st["counts"] == {"running": 1, "queued": 0, "succeeded": 0, "failed": 0,
                            "not_started": 0, "skipped": 0}
    (job,) = st["running"]
    assert job["id"] == 1 and job["name"] is None and job["gpus"] == ["0"]
    assert job["command"] == f"sleep {m}"
    assert isinstance(job["runtime"], (int, float)) and job["runtime"] >= 0
    assert job["pid"] in live_pids(m)

    text = run.ok("status")
    assert text.startswith(f"{run.name} (pid {run.pid}): "), text
    assert "reading input" in text and f"sleep {m}" in text

    run.sgs.close_stdin()
    poll_until(lambda: run.raw_status()["input"] == "serving", what="input serving")
    assert "serving adds" in run.ok("status")
    assert run.finish() != 0  # job 1 was terminated
    gone(m)


def test_status_with_no_run_live(private_dir: Path) -> None:
    cdir = private_dir
    for name in ("status", "ls"):
        done = verb(name, "--control-dir", str(cdir))
        assert done.returncode == 2, (name, done)
        assert done.stdout == ""
        assert "no run" in one_line(done.stderr), done.stderr


def test_two_runs_live_need_run_to_pick_one(start: Starter, private_dir: Path) -> None:
    cdir = private_dir
    one = start("--gpus", "0", cdir=cdir)
    two = start("--gpus", "1", cdir=cdir)
    env = child_env({"SGS_CONTROL_DIR": str(cdir)})

    # A verb that talks to one run: a usage error that lists both.
    for name in ("ls", "pause"):
        done = verb(name, env=env)
        assert done.returncode == 2, (name, done)
        line = one_line(done.stderr)
        assert one.name in line and two.name in line and "--run" in line, line

    # status without --run shows every live run.
    shown = verb("status", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    assert sorted(r["name"] for r in json.loads(shown.stdout)) == sorted([one.name, two.name])
    text = verb("status", env=env).stdout
    assert one.name in text and two.name in text

    # --run NAME and --run PID select.
    for pick in (one.name, str(one.pid)):
        got = verb("status", "--run", pick, "--json", env=env)
        assert got.returncode == 0, got.stderr
        assert [r["name"] for r in json.loads(got.stdout)] == [one.name]
    got = verb("ls", "--run", str(two.pid), "--json", env=env)
    assert got.returncode == 0 and json.loads(got.stdout)["jobs"] == []
    done = verb("status", "--run", "nosuchrun", env=env)
    assert done.returncode == 2 and "nosuchrun" in one_line(done.stderr)

    assert one.drain() == 0 and two.drain() == 0


# --- add ------------------------------------------------------------------------------


def test_add_ids_continue_after_stdins(start: Starter, markers: List[str]) -> None:
    m1, m2 = mark(markers), mark(markers)
    run = start("--gpus", "0", stdin=subprocess.PIPE, serve=False)
    run.sgs.write(f"sleep {m1}\nsleep {m2}\n".encode())
    run.wait_state(1, "running")
    run.wait_state(2, "queued")
    assert run.ok("add", "--", "echo", "added") == "3\n"
    run.sgs.write(b"echo from stdin\n")
    job = run.wait_state(4, "queued")
    assert job["command"] == "echo from stdin"
    out = run.ok("add", "--json", "--", "echo", "json")
    assert json.loads(out) == {"ids": [5]}
    jobs = run.jobs()
    assert [jobs[i]["command"] for i in (3, 5)] == ["echo added", "echo json"]
    assert run.queued() == [2, 3, 4, 5]
    run.sgs.close_stdin()
    run.finish()
    gone(m1, m2)


def test_add_options(start: Starter, tmp_path: Path, markers: List[str]) -> None:
    m = mark(markers)
    run = start("--gpus", "0,1")
    run.ok("pause")
    plain = run.add("--name", "plain", "--", "true")
    # Lower runs first (docs/gpus.md; `add --help` says the opposite).
    urgent = run.add("--priority", "-5", "--name", "urgent", "--", "true")
    front = run.add("--front", "--name", "front", "--", "true")
    assert run.queued() == [urgent, front, plain]
    rows = {job["id"]: job for job in run.ls()}
    assert [rows[i]["name"] for i in (plain, urgent, front)] == ["plain", "urgent", "front"]
    assert [rows[i]["priority"] for i in (plain, urgent, front)] == [0, -5, 0]

    both = run.add("--gpus", "2", "--", 'echo "$CUDA_VISIBLE_DEVICES" > gpus.txt')
    timed = run.add("--timeout", "0.3", "--", f"sleep {m}")
    retried = run.add("--retries", "1", "--", "echo x >> tries.txt; exit 1")
    run.ok("unpause")
    done = run.verb("wait", "--json", str(both), str(timed), str(retried))
    assert done.returncode == 1, (done, run.sgs.stderr())
    end = json.loads(done.stdout)
    assert end["end"] is True and end["succeeded"] is False
    states = {job["id"]: (job["state"], job["exit"]) for job in end["jobs"]}
    assert states[both] == ("succeeded", 0)
    assert states[timed][0] == "timed_out"
    assert states[retried] == ("failed", 1)
    assert (tmp_path / "gpus.txt").read_text() == "0,1\n"
    assert (tmp_path / "tries.txt").read_text() == "x\nx\n"
    rows = {job["id"]: job for job in run.ls()}
    assert rows[both]["gpus"] == ["0", "1"]
    assert rows[retried]["attempts"] == 2 and rows[timed]["attempts"] == 1
    gone(m)
    assert run.drain() == 1


def test_an_added_job_gets_the_submitters_directory_and_environment(
        start: Starter, tmp_path: Path) -> None:
    run = start("--gpus", "0", env={"SGS_T_SCHEDULER": "scheduler's"})
    here = tmp_path / "submitter"
    here.mkdir()
    client_env = child_env({"SGS_T_CLIENT": "client's"})
    client_env.pop("SGS_T_SCHEDULER", None)
    job = run.add("--", 'echo "$SGS_T_CLIENT|${SGS_T_SCHEDULER-unset}|$(pwd)|$SGS_JOB_ID"'
                  " > seen.txt", cwd=here, env=client_env)
    assert run.verb("wait", str(job)).returncode == 0
    assert (here / "seen.txt").read_text() == f"client's|unset|{here}|{job}\n"
    assert not (tmp_path / "seen.txt").exists()
    assert run.drain() == 0


def test_add_rejections_add_nothing(start: Starter) -> None:
    run = start("--gpus", "0,1")
    run.ok("pause")
    first = run.add("--", "true")
    before = run.jobs()

    line = run.refused("add", "--gpus", "3", "--", "true")
    assert "3" in line, line
    assert run.jobs() == before

    lines = '{"cmd": "echo a"}\n{"cmd": "echo b", "bogus": 1}\n{"cmd": "echo c"}\n'
    line = run.refused("add", "--jsonl", input=lines)
    assert "bogus" in line, line
    assert run.jobs() == before
    run.refused("add", "--jsonl", input='{"cmd": "echo a"}\nnot json\n')
    assert run.jobs() == before

    out = run.ok("add", "--jsonl", input='{"cmd": "echo a", "name": "a"}\n\n'
                 '{"cmd": "echo b", "priority": -2}\n')
    ids = [int(x) for x in out.split()]
    assert len(ids) == 2 and min(ids) > first
    rows = {job["id"]: job for job in run.ls()}
    assert rows[ids[0]]["name"] == "a" and rows[ids[1]]["priority"] == -2
    assert run.queued() == [ids[1], first, ids[0]]
    run.ok("unpause")
    assert run.verb("wait", str(first), *map(str, ids)).returncode == 0
    assert run.drain() == 0


def test_a_long_jsonl_input_is_added_in_batches(start: Starter) -> None:
    """More lines than one request may hold (the server takes 1 MiB): the verb
    sends batches; each is all or nothing, and a refused one says which ids
    the batches before it added."""
    run = start("--gpus", "0")
    run.ok("pause")
    lines = "".join(f'{{"cmd": "echo {i}"}}\n' for i in range(60000))
    ids = [int(x) for x in run.ok("add", "--jsonl", input=lines).split()]
    assert ids == list(range(ids[0], ids[0] + 60000))
    assert len(run.queued()) == 60000

    bad = "".join(f'{{"cmd": "echo {i}"}}\n' for i in range(9000)) + "not json\n"
    done = run.verb("add", "--jsonl", input=bad)
    assert done.returncode == 1, done.stderr
    added = [int(x) for x in done.stdout.split()]
    assert added and added[0] == ids[-1] + 1 and len(added) < 9000
    assert f"jobs {added[0]}-{added[-1]}" in one_line(done.stderr)
    assert len(run.queued()) == 60000 + len(added)
    run.ok("cancel", *map(str, ids[:3]))
    assert run.drain() == 1  # cancelled and unstarted jobs: not all done


def test_add_a_command_that_is_not_utf8(start: Starter, tmp_path: Path) -> None:
    run = start("--gpus", "0")
    name = b"f\xff\xfe.txt"
    assert SGS is not None
    done = subprocess.run([SGS, "add", "--run", run.name, "--", "touch", name],
                          capture_output=True, env=run.client_env, cwd=tmp_path, timeout=30)
    assert done.returncode == 0, done.stderr
    job = int(done.stdout)
    assert run.verb("wait", str(job)).returncode == 0, run.sgs.stderr()
    assert name in os.listdir(bytes(tmp_path))
    (row,) = [r for r in run.ls() if r["id"] == job]
    assert "command" not in row or row["command"] is None
    assert base64.b64decode(row["command_b64"]) == b"touch " + name
    assert run.drain() == 0


# --- ls, cancel, kill ----------------------------------------------------------------


def test_ls_rows(start: Starter, markers: List[str]) -> None:
    m = mark(markers)
    run = start("--gpus", "0")
    ok = run.add("--", "true")
    bad = run.add("--name", "three", "--", "exit 3")
    run.wait_state(bad, "failed")
    sleeper = run.add("--", f"sleep {m}")
    run.wait_state(sleeper, "running")
    second = run.add("--name", "q1", "--", "true")
    third = run.add("--", "true")
    first = run.add("--front", "--name", "first", "--", "true")
    dropped = run.add("--", "true")
    run.ok("cancel", str(dropped))

    rows = {job["id"]: job for job in run.ls()}
    r = rows[sleeper]
    assert r["state"] == "running" and r["gpus"] == ["0"] and r["attempts"] == 1
    assert r["pid"] in live_pids(m) and r["started"] is not None and r["runtime"] is not None
    assert r["exit"] is None and r["signal"] is None

    run.ok("pause")
    run.ok("kill", str(sleeper))
    run.wait_state(sleeper, "killed")
    jobs = run.ls()
    assert sorted(job["id"] for job in jobs) == list(range(1, dropped + 1))
    assert [job["id"] for job in jobs if job["state"] == "queued"] == [first, second, third]
    rows = {job["id"]: job for job in jobs}
    assert {k: rows[ok][k] for k in ("state", "exit", "signal", "attempts", "gpus", "pid",
                                     "name", "reason", "command")} == {
        "state": "succeeded", "exit": 0, "signal": None, "attempts": 1, "gpus": ["0"],
        "pid": None, "name": None, "reason": None, "command": "true"}
    assert (rows[bad]["state"], rows[bad]["exit"], rows[bad]["name"]) == ("failed", 3, "three")
    r = rows[sleeper]
    assert (r["state"], r["exit"], r["signal"], r["attempts"], r["pid"]) == (
        "killed", None, "SIGTERM", 1, None)
    r = rows[dropped]
    assert (r["state"], r["reason"], r["gpus"], r["attempts"], r["started"]) == (
        "not_started", "cancelled", [], 0, None)
    for job_id in (first, second, third):
        r = rows[job_id]
        assert (r["pid"], r["gpus"], r["attempts"], r["started"], r["exit"]) == (
            None, [], 0, None, None)
    assert (rows[first]["name"], rows[second]["name"]) == ("first", "q1")

    table = run.ok("ls")
    assert table.splitlines()[0].split() == ["ID", "NAME", "STATE", "GPUS", "START", "TIME",
                                             "EXIT", "TRIES", "COMMAND"]
    assert re.search(rf"^\s*{bad}\s+three\s+failed\b.*\bexit 3$", table, re.M), table
    assert re.search(rf"^\s*{sleeper}\s+-\s+killed\b.*SIGTERM", table, re.M), table
    assert run.drain() == 1
    gone(m)


def test_cancel(start: Starter) -> None:
    run = start("--gpus", "0")
    running = run.add("--", GATED)
    run.wait_state(running, "running")
    cancelled = run.add("--", "echo cancelled")
    kept = run.add("--", "echo kept")
    run.ok("cancel", str(cancelled))
    row = run.wait_state(cancelled, "not_started")
    assert row["reason"] == "cancelled"

    before = run.jobs()
    for ids in ([running], [cancelled], [99], [kept, 99], [kept, running]):
        run.refused("cancel", *map(str, ids))
        assert {i: j["state"] for i, j in run.jobs().items()} == {
            i: j["state"] for i, j in before.items()}, ids
    run.release(running)
    assert run.verb("wait", str(kept)).returncode == 0
    assert run.drain() == 1, run.sgs.stderr()
    stderr = run.sgs.stderr()
    assert re.search(rf"^\[sgs\] not started \(cancelled\): job {cancelled}: echo cancelled$",
                     stderr, re.M), stderr
    assert re.search(r"^\[sgs\] done in .*: 2 of 3 succeeded, 0 failed, 1 not started$",
                     stderr, re.M), stderr


def test_kill_ends_the_tree_without_retry_and_joblog_rows(
        start: Starter, tmp_path: Path, markers: List[str]) -> None:
    m1, m2 = mark(markers), mark(markers)
    joblog = tmp_path / "jobs.log"
    run = start("--gpus", "0", "--retries", "2", "--joblog", str(joblog))
    added = run.add("--name", "quick", "--", "true")
    tree = run.add("--", f"sh -c 'sleep {m1} & sleep {m2}'")
    run.wait_state(tree, "running")
    poll_until(lambda: live_pids(m1) and live_pids(m2), what="both sleeps")
    run.refused("kill", str(added))  # not running: nothing changed
    run.ok("kill", str(tree))
    gone(m1, m2)
    row = run.wait_state(tree, "killed")
    assert (row["signal"], row["exit"], row["attempts"]) == ("SIGTERM", None, 1)
    after = run.add("--", "true")
    assert run.verb("wait", str(after)).returncode == 0
    row = run.jobs()[tree]
    assert (row["state"], row["attempts"]) == ("killed", 1), row
    done = run.verb("wait", "--json", str(tree))
    assert done.returncode == 1
    assert json.loads(done.stdout)["jobs"] == [
        {"id": tree, "state": "killed", "exit": None, "signal": "SIGTERM"}]
    run.refused("kill", str(tree))  # no longer running
    assert run.drain() == 1

    rows = rows_of(joblog)
    assert [(r.seq, r.exitval, r.signal) for r in rows] == [
        (added, 0, 0), (tree, rows[1].exitval, 15), (after, 0, 0)], rows
    assert rows[1].command == f"sh -c 'sleep {m1} & sleep {m2}'".encode()


def test_kill_escalates_to_sigkill_after_the_grace(start: Starter, markers: List[str]) -> None:
    m = mark(markers)
    run = start("--gpus", "0", "--kill-grace", "0.5")
    job = run.add("--", f'trap "" TERM; sleep {m}')
    run.wait_state(job, "running")
    poll_until(lambda: live_pids(m), what="the sleep")
    t0 = time.monotonic()
    run.ok("kill", str(job))
    row = run.wait_state(job, "killed")
    assert time.monotonic() - t0 >= 0.4
    assert (row["signal"], row["attempts"]) == ("SIGKILL", 1)
    gone(m)
    assert run.drain() == 1


# --- wait -------------------------------------------------------------------------------


def waiting_for_the_end(proc: subprocess.Popen) -> None:
    """Poll until the `wait` client `proc` has its request answered and waits for
    the end: it then blocks in a plain recv (before, while it connects and reads
    the greeting and the reply, it polls with a timeout), which /proc shows."""
    def blocked() -> bool:
        assert proc.poll() is None, proc.communicate(timeout=5)
        try:
            return "unix_stream" in Path(f"/proc/{proc.pid}/wchan").read_text()
        except OSError:
            return False

    poll_until(blocked, what="the wait client to wait for the run's end")


def test_wait(start: Starter) -> None:
    run = start("--gpus", "0")
    good = run.add("--", "sleep 0.2")
    bad = run.add("--", "sleep 0.1; exit 4")
    gated = run.add("--", GATED)
    done = run.verb("wait", str(good))
    assert (done.returncode, done.stdout) == (0, "1 job succeeded\n")
    done = run.verb("wait", str(bad))
    assert done.returncode == 1
    assert done.stdout == f"job {bad}: failed (exit 4)\n1 of 1 job did not succeed\n"
    done = run.verb("wait", "--json", str(good), str(bad))
    assert done.returncode == 1
    assert json.loads(done.stdout) == {
        "end": True, "succeeded": False,
        "jobs": [{"id": good, "state": "succeeded", "exit": 0, "signal": None},
                 {"id": bad, "state": "failed", "exit": 4, "signal": None}]}
    line = run.refused("wait", "99")
    assert "99" in line, line

    waiter = popen_verb(run, "wait", str(gated))
    whole = popen_verb(run, "wait", "--json")
    try:
        run.wait_state(gated, "running")
        assert waiter.poll() is None
        run.release(gated)
        out, err = waiter.communicate(timeout=10)
        assert waiter.returncode == 0, err
        waiting_for_the_end(whole)  # the run goes on (--serve)
        run.ok("drain")
        out, err = whole.communicate(timeout=10)
        assert whole.returncode == 1, err  # job 2 failed
        end = json.loads(out)
        assert end["end"] is True and end["succeeded"] is False
        assert run.end() == 1
    finally:
        finish_client(waiter)
        finish_client(whole)


def test_wait_for_a_run_that_succeeds(start: Starter) -> None:
    run = start("--gpus", "0")
    job = run.add("--", "true")
    whole = popen_verb(run, "wait", "--json")
    try:
        run.wait_state(job, "succeeded")
        waiting_for_the_end(whole)
        run.ok("drain")
        out, err = whole.communicate(timeout=10)
        assert whole.returncode == 0, (out, err)
        end = json.loads(out)
        assert end["end"] is True and end["succeeded"] is True
        assert run.end() == 0
    finally:
        finish_client(whole)


def test_wait_for_the_whole_run_reports_its_counts(start: Starter) -> None:
    """docs/control.md: for the whole run the end line holds the run's counts
    (a list of every job could be long), and `succeeded` is its exit status."""
    run = start("--gpus", "0")
    ok, bad = run.add("--", "true"), run.add("--", "exit 2")
    as_json, as_text = popen_verb(run, "wait", "--json"), popen_verb(run, "wait")
    try:
        run.wait_state(ok, "succeeded")
        run.wait_state(bad, "failed")
        waiting_for_the_end(as_json)
        waiting_for_the_end(as_text)
        run.ok("drain")
        out, err = as_json.communicate(timeout=10)
        assert as_json.returncode == 1, err
        end = json.loads(out)
        assert end["end"] is True and end["succeeded"] is False and "jobs" not in end
        assert end["counts"]["succeeded"] == 1 and end["counts"]["failed"] == 1
        out, err = as_text.communicate(timeout=10)
        assert as_text.returncode == 1, err
        assert out == b"the run ended: 1 succeeded, 1 failed, 0 not started\n", out
        assert run.end() == 1
    finally:
        finish_client(as_json)
        finish_client(as_text)


# --- log --------------------------------------------------------------------------------


def test_log_under_tag(start: Starter) -> None:
    run = start("--gpus", "0", "--tag")
    three = run.add("--", "echo one; echo two; echo three")
    alpha = run.add("--", "echo alpha; echo beta")
    assert run.verb("wait", str(three), str(alpha)).returncode == 0
    assert run.ok("log", str(three)) == "one\ntwo\nthree\n"
    assert run.ok("log", "-n", "1", str(three)) == "three\n"
    assert run.ok("log", str(three), str(alpha)) == (
        f"[{three}] one\n[{three}] two\n[{three}] three\n[{alpha}] alpha\n[{alpha}] beta\n")

    job = run.add("--", GATED.replace("; while", "; echo first; while") + "; echo second")
    run.wait_state(job, "running")
    poll_until(lambda: run.ok("log", str(job)) == "first\n", what="job's first line")
    run.release(job)
    assert run.verb("wait", str(job)).returncode == 0
    assert run.ok("log", str(job)) == "first\nsecond\n"
    run.refused("log", "99")
    assert run.drain() == 0


#: A job that prints "first", waits for gate-ID, prints "second", waits for
#: more-ID, and ends: what it prints is not racing with its end.
TWO_LINES = ('echo first; while [ ! -e "gate-$SGS_JOB_ID" ]; do sleep 0.02; done; echo second; '
             'while [ ! -e "more-$SGS_JOB_ID" ]; do sleep 0.02; done')


def test_log_follow(start: Starter, tmp_path: Path) -> None:
    run = start("--gpus", "0", "--tag")
    job = run.add("--", TWO_LINES)
    follower = popen_verb(run, "log", "-f", str(job))
    try:
        reader = Reader(follower)
        reader.until(b"first\n")
        assert follower.poll() is None
        run.release(job)
        reader.until(b"second\n")
        assert follower.poll() is None
        (tmp_path / f"more-{job}").touch()
        assert reader.rest() == b"first\nsecond\n"
        assert follower.returncode == 0
    finally:
        finish_client(follower)
    assert run.drain() == 0


def test_log_follow_while_another_client_reads_the_log(start: Starter, tmp_path: Path) -> None:
    run = start("--gpus", "0", "--tag")
    job = run.add("--", TWO_LINES)
    follower = popen_verb(run, "log", "-f", str(job))
    try:
        reader = Reader(follower)
        reader.until(b"first\n")
        assert run.ok("log", str(job)) == "first\n"  # another client, not following
        run.release(job)
        reader.until(b"second\n", timeout=2)
        (tmp_path / f"more-{job}").touch()
        assert reader.rest() == b"first\nsecond\n"
    finally:
        (tmp_path / f"more-{job}").touch()
        finish_client(follower)
    assert run.drain() == 0


def test_log_follow_gets_what_a_job_prints_just_before_it_ends(start: Starter) -> None:
    # Five at once: a race between the job's end and its last chunk shows in most runs.
    run = start("--gpus", "0-4", "--tag")
    jobs = [run.add("--", GATED.replace("; while", "; echo first; while") + "; echo second")
            for _ in range(5)]
    followers = [popen_verb(run, "log", "-f", str(job)) for job in jobs]
    try:
        readers = [Reader(follower) for follower in followers]
        for reader in readers:
            reader.until(b"first\n")
        for job in jobs:
            run.release(job)
        assert run.verb("wait", *map(str, jobs)).returncode == 0
        for job in jobs:
            assert run.ok("log", str(job)) == "first\nsecond\n"
        got = {job: reader.rest() for job, reader in zip(jobs, readers)}
        assert got == {job: b"first\nsecond\n" for job in jobs}  # each ended right after it
        assert [follower.returncode for follower in followers] == [0] * 5
    finally:
        for follower in followers:
            finish_client(follower)
    assert run.drain() == 0


# --- pause, drain, stop -----------------------------------------------------------------


def test_pause_and_unpause(start: Starter) -> None:
    run = start("--gpus", "0")
    first = run.add("--", GATED)
    run.wait_state(first, "running")
    run.ok("pause")
    st = run.status()
    assert st["paused"] is True
    assert ", paused" in run.ok("status").splitlines()[0]
    second = run.add("--", "true")
    assert run.raw_status()["counts"]["queued"] == 1
    run.release(first)
    run.wait_state(first, "succeeded")
    st = run.status()
    assert st["counts"]["queued"] == 1 and st["counts"]["running"] == 0, st
    assert st["gpus"][0]["state"] == "free"
    assert run.jobs()[second]["state"] == "queued"
    run.ok("unpause")
    assert run.status()["paused"] is False
    run.wait_state(second, "succeeded")
    assert run.drain() == 0


def test_drain_is_the_first_ctrl_c(start: Starter) -> None:
    run = start("--gpus", "0", stdin=subprocess.PIPE, serve=False)
    run.sgs.write(f"{GATED}\necho never\n".encode())
    run.wait_state(1, "running")
    run.wait_state(2, "queued")
    run.ok("drain")
    st = run.raw_status()
    assert st["stopping"] == "drain", st
    assert run.sgs.alive()
    run.release(1)
    assert run.end() == 1
    stderr = run.sgs.stderr()
    assert "job 1 finished" in stderr
    assert not_started(stderr) == {2: "echo never"}, stderr
    assert (run.workdir / "started.log").read_text() == "1 0\n"


def test_stop_terminates_running_jobs(start: Starter, markers: List[str]) -> None:
    m = mark(markers)
    run = start("--gpus", "0")
    job = run.add("--", f"sleep {m}")
    run.wait_state(job, "running")
    run.ok("stop")
    assert run.end() == 1
    gone(m)
    assert re.search(rf"^\[sgs\] job {job} failed .*killed by SIGTERM", run.sgs.stderr(), re.M)


# --- gpus -------------------------------------------------------------------------------


def started_on(run: Run) -> Dict[int, str]:
    path = run.workdir / "started.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return {int(line.split()[0]): line.split()[1] for line in lines}


def test_gpus_remove_and_add(start: Starter) -> None:
    run = start("--gpus", "0,1")
    a, b = run.add("--", GATED), run.add("--", GATED)
    poll_until(lambda: len(started_on(run)) == 2, what="jobs a and b")
    on_one = [job for job, gpu in started_on(run).items() if gpu == "1"][0]
    on_zero = a if on_one == b else b

    out = run.ok("gpus", "remove", "1")
    assert re.search(r"^\s*1\s+removed\b", out, re.M), out
    later = [run.add("--", "echo \"$SGS_JOB_ID $CUDA_VISIBLE_DEVICES\" >> started.log")
             for _ in range(3)]
    run.release(on_zero)
    for job in later:
        run.wait_state(job, "succeeded")
    assert [started_on(run)[job] for job in later] == ["0", "0", "0"]
    assert run.jobs()[on_one]["state"] == "running"
    gpus = {g["id"]: g for g in run.raw_status()["gpus"]}
    assert (gpus["1"]["state"], gpus["1"]["jobs"]) == ("removed", [on_one])
    assert (gpus["0"]["state"], gpus["0"]["jobs"]) == ("free", [])
    assert "removed" in run.ok("gpus")

    run.refused("gpus", "remove", "7")
    run.ok("gpus", "add", "1")
    assert {g["id"]: g["state"] for g in run.raw_status()["gpus"]} == {"0": "free", "1": "running"}
    run.ok("gpus", "remove", "--kill", "1")
    row = run.wait_state(on_one, "killed")
    assert row["signal"] == "SIGTERM"
    assert {g["id"]: g["state"] for g in run.raw_status()["gpus"]}["1"] == "removed"

    run.ok("gpus", "add", "1")
    c, d = run.add("--", GATED), run.add("--", GATED)
    poll_until(lambda: c in started_on(run) and d in started_on(run), what="jobs c and d")
    assert sorted([started_on(run)[c], started_on(run)[d]]) == ["0", "1"]
    run.release(c)
    run.release(d)
    assert run.verb("wait", str(c), str(d)).returncode == 0
    assert run.drain() == 1  # the killed one


# --- move -------------------------------------------------------------------------------


def test_move(start: Starter) -> None:
    run = start("--gpus", "0")
    running = run.add("--", GATED)
    run.wait_state(running, "running")
    run.ok("pause")
    j2, j3, j4, j5 = (run.add("--", "true") for _ in range(4))
    assert run.queued() == [j2, j3, j4, j5]
    run.ok("move", str(j5), "--front")
    assert run.queued() == [j5, j2, j3, j4]
    run.ok("move", str(j5), "--back")
    assert run.queued() == [j2, j3, j4, j5]
    run.ok("move", str(j4), "--before", str(j2))
    assert run.queued() == [j4, j2, j3, j5]
    high = run.add("--priority", "-3", "--", "true")
    assert run.queued() == [high, j4, j2, j3, j5]
    run.ok("move", str(j5), "--before", str(high))
    assert run.queued() == [j5, high, j4, j2, j3]
    assert {job["id"]: job["priority"] for job in run.ls()}[j5] == -3

    before = run.queued()
    run.refused("move", str(running), "--front")
    run.refused("move", "99", "--back")
    run.refused("move", str(j2), "--before", str(running))
    assert run.queued() == before
    run.ok("unpause")
    run.release(running)
    assert run.verb("wait", *map(str, before)).returncode == 0
    assert run.drain() == 0


# --- serve and the end of the input ----------------------------------------------------


def test_serve_keeps_the_run_taking_adds(start: Starter) -> None:
    run = start("--gpus", "0")
    poll_until(lambda: run.raw_status()["input"] == "serving", what="input serving")
    first = run.add("--", "true")
    run.wait_state(first, "succeeded")
    assert run.sgs.alive()
    second = run.add("--", "true")
    run.wait_state(second, "succeeded")
    assert run.status()["input"] == "serving" and run.sgs.alive()
    assert run.drain() == 0


def test_without_serve_the_run_ends_with_its_input_and_added_jobs(start: Starter) -> None:
    run = start("--gpus", "0", stdin=subprocess.PIPE, serve=False)
    run.sgs.write(f"{GATED}\n".encode())
    run.wait_state(1, "running")
    added = run.add("--", GATED)
    run.sgs.close_stdin()
    poll_until(lambda: run.raw_status()["input"] == "ended", what="input ended")
    run.release(1)
    run.wait_state(added, "running")
    assert run.sgs.alive()
    run.release(added)
    assert run.end() == 0, run.sgs.stderr()
    assert not run.socket.exists()


# --- on-finish --------------------------------------------------------------------------


def test_on_finish(start: Starter, tmp_path: Path, markers: List[str]) -> None:
    m = mark(markers)
    record = tmp_path / "finished.txt"
    run = start("--gpus", "0",
                "--on-finish", f'echo "$SGS_JOB_ID $SGS_STATUS $SGS_EXIT $SGS_GPUS" >> {record}')
    ok = run.add("--", "true")
    bad = run.add("--", "exit 3")
    killed = run.add("--", f"sleep {m}")
    run.wait_state(killed, "running")
    cancelled = run.add("--", "true")
    run.ok("cancel", str(cancelled))
    run.ok("kill", str(killed))
    run.wait_state(killed, "killed")
    assert run.drain() == 1
    lines = record.read_text().splitlines()
    assert sorted(lines) == sorted(
        [f"{ok} succeeded 0 0", f"{bad} failed 3 0", f"{killed} killed  0"]), lines


def test_a_failing_on_finish_is_reported_not_fatal(tmp_path: Path) -> None:
    done = run_sgs(["--name", run_name("verbs"), "--shell", "/bin/sh", "--gpus", "0",
                    "--on-finish", "exit 5"], b"true\ntrue\n", cwd=tmp_path, from_file=True)
    assert done.returncode == 0, done.stderr
    stderr = done.stderr.decode()
    reported = [line for line in sgs_lines(stderr) if "on-finish" in line]
    assert len(reported) == 2 and all("5" in line for line in reported), stderr


# --- no control, the run verb -----------------------------------------------------------


def test_no_control(start: Starter, private_dir: Path) -> None:
    cdir = private_dir
    run = start("--gpus", "0", "--no-control", cdir=cdir, stdin=subprocess.PIPE,
                serve=False, listen=False)
    run.sgs.write(f"{GATED}\n".encode())
    poll_until(lambda: started_on(run), what="the job to start")
    assert os.listdir(cdir) == []
    assert not (control_dir() / f"{run.pid}.sock").exists()
    done = verb("status", "--control-dir", str(cdir))
    assert done.returncode == 2 and "no run" in one_line(done.stderr)
    done = verb("status", "--run", str(run.pid))
    assert done.returncode == 2 and str(run.pid) in one_line(done.stderr)
    run.release(1)
    assert run.end() == 0


def test_the_run_verb(tmp_path: Path) -> None:
    def args(verb: Sequence[str]) -> List[str]:
        return [*verb, "--gpus", "0", "--shell", "/bin/sh", "--name", run_name("verbs")]

    jobs = b'echo "one $CUDA_VISIBLE_DEVICES"\necho two\n'
    with_verb = run_sgs(args(["run"]), jobs, cwd=tmp_path, from_file=True)
    without = run_sgs(args([]), jobs, cwd=tmp_path, from_file=True)
    assert with_verb.returncode == 0 == without.returncode, with_verb.stderr
    assert with_verb.stdout == without.stdout == b"one 0\ntwo\n"
    assert sgs_lines(with_verb.stderr.decode())[-1].endswith("2 of 2 succeeded, 0 failed, "
                                                             "0 not started")


# --- edges a review found --------------------------------------------------------------


def test_on_finish_of_a_line_with_a_nul_byte_does_not_crash_the_run(start: Starter,
                                                                    tmp_path: Path) -> None:
    """A line with a NUL fails at once; its --on-finish gets the command with
    the NUL escaped (an environment cannot hold one), and the run goes on."""
    marks = tmp_path / "finished.txt"
    run = start("--gpus", "0", "--on-finish", f'printf "%s|%s\\n" "$SGS_JOB_ID" '
                f'"$SGS_STATUS" >> {marks}', stdin=subprocess.PIPE, serve=False)
    run.sgs.write(b"true\nbad\0line\ntrue\n")
    run.sgs.close_stdin()
    assert run.end() == 1
    assert "internal error" not in run.sgs.stderr()
    assert sorted(marks.read_text().splitlines()) == ["1|succeeded", "2|failed", "3|succeeded"]


def test_an_on_finish_command_that_leaves_its_session_is_never_killed(
        start: Starter, markers: List[str]) -> None:
    """What an --on-finish command starts in a session of its own (a
    notification daemon) is not a job's orphan: the run's end leaves it be."""
    mark = unique_sleep()
    markers.append(mark)
    run = start("--gpus", "0", "--on-finish",
                f'[ "$SGS_JOB_ID" = 1 ] && setsid sleep {mark} &', serve=False,
                stdin=subprocess.PIPE)
    # Job 2 ends after job 1's command has left its child to us: the orphans
    # are looked at then, and the child must not be taken for job 1's.
    run.sgs.write(b"true\nsleep 0.5\n")
    run.sgs.close_stdin()
    assert run.end() == 0
    alive = poll_until(lambda: live_pids(mark), 5, what="the on-finish command's child")
    for pid in alive:
        os.kill(pid, 9)


def test_a_kill_is_no_failure_that_halts_the_run(start: Starter) -> None:
    run = start("--gpus", "0,1", "--halt-on-failure", "now")
    doomed = run.add("--", "sleep 300")
    other = run.add("--", GATED)
    run.wait_state(doomed, "running")
    run.wait_state(other, "running")
    run.ok("kill", str(doomed))
    run.wait_state(doomed, "killed")
    assert run.jobs()[other]["state"] == "running"  # not terminated by the halt
    later = run.add("--", "true")
    run.release(other)
    run.wait_state(later, "succeeded")
    assert run.drain() == 1


def test_pipelined_requests_are_answered_in_order_one_at_a_time(start: Starter) -> None:
    run = start("--gpus", "0")
    run.ok("pause")
    run.ok("add", "--jsonl", input="".join('{"cmd": "true"}\n' for _ in range(5000)))
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(20)
        sock.connect(str(run.socket))
        sock.sendall(b'{"op":"ls"}\n{"op":"status"}\n' * 3)
        replies = read_lines(sock, 1 + 6)
    assert [("jobs" in r, "run" in r) for r in replies[1:]] == [(True, False), (False, True)] * 3
    assert all(len(r["jobs"]) == 5000 for r in replies[1::2][:3])
    assert run.drain() == 1


def read_lines(sock: socket.socket, count: int) -> List[Dict[str, Any]]:
    data = b""
    while data.count(b"\n") < count:
        chunk = sock.recv(1 << 20)
        assert chunk, data[-200:]
        data += chunk
    return [json.loads(line) for line in data.split(b"\n")[:count]]


def test_clients_past_the_limit_are_refused_with_a_reply(start: Starter) -> None:
    run = start("--gpus", "0")
    held = []
    try:
        for _ in range(128):
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(10)
            sock.connect(str(run.socket))
            assert read_lines(sock, 1)[0]["sgs"] == 1
            held.append(sock)
        with socket.socket(socket.AF_UNIX) as extra:
            extra.settimeout(10)
            extra.connect(str(run.socket))
            refusal = read_lines(extra, 1)[0]
            assert refusal["ok"] is False and "128 clients" in refusal["error"]
    finally:
        for sock in held:
            sock.close()
    poll_until(lambda: ask(run.socket, {"op": "status"}) is not None, 10,
               what="room again once the clients left")
    assert run.drain() == 0


def test_log_follow_all_under_tag_ends_when_the_run_ends(start: Starter) -> None:
    run = start("--gpus", "0", "--tag")
    job = run.add("--", "echo one; " + GATED)
    run.wait_state(job, "running")
    follower = subprocess.Popen([SGS or "", "log", "-f", "--all", "--run", run.name],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=run.client_env, cwd=run.workdir)
    try:
        waiting_for_the_end(follower)
        run.release(job)
        run.wait_state(job, "succeeded")
        run.ok("drain")
        out, err = follower.communicate(timeout=10)
        assert follower.returncode == 0, err
        assert b"one" in out
        assert run.end() == 0
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()


def test_a_log_file_that_is_not_a_regular_file_is_not_read(start: Starter,
                                                           tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    run = start("--gpus", "0", "--log-dir", str(logs))
    job = run.add("--", f"rm -f {logs}/$SGS_JOB_ID.out; ln -s /dev/zero {logs}/$SGS_JOB_ID.out")
    run.wait_state(job, "succeeded")
    done = run.verb("log", str(job))
    assert done.returncode == 0 and done.stdout == ""
    assert run.drain() == 0
