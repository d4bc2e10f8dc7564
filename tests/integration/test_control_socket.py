"""The control socket end to end: real schedulers (the installed console script)
and real Unix sockets, nothing mocked (docs/control.md).

Who may talk (another uid is refused before a request is read), the socket's
life (stale ones replaced, live ones never taken over, removed at exit), the
directory rules, fuzzed and malformed requests, clients that hang, many
clients at once, idle CPU, and what the verbs and a run import.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
from harness import (
    SGS,
    FakeMachine,
    Sgs,
    child_env,
    control_dir,
    cpu_seconds,
    poll_until,
    run_name,
    run_sgs,
    stop,
    verb,
    verb_json,
    wakeups,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SH = "/bin/sh"
#: The server's limit on one request line (control/server.py MAX_REQUEST).
MAX_REQUEST = 1024 * 1024
#: The uid and gid a peer of another user drops to.
NOBODY = 65534


# --- helpers -----------------------------------------------------------------------


def sock_path(name: str, directory: Optional[Path] = None) -> Path:
    return (control_dir() if directory is None else directory) / f"{name}.sock"


class Conn:
    """A raw client on a socket path: bytes in, parsed lines out."""

    def __init__(self, path: Path, timeout: float = 10.0, greet: bool = True) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self._buffer = b""
        self.greeting = self.read() if greet else None

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> Optional[bytes]:
        """The next line's bytes (None at EOF, or a reset after the last line)."""
        while b"\n" not in self._buffer:
            try:
                chunk = self.sock.recv(1 << 16)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def read(self) -> Any:
        line = self.line()
        # The protocol is UTF-8 both ways: a reply that is not fails here.
        return None if line is None else json.loads(line.decode("utf-8"))

    def reply(self) -> Dict[str, Any]:
        """The next line with ``ok`` (the reply to the next request), past the
        lines of a stream (``log``, ``wait``) sent meanwhile."""
        while True:
            message = self.read()
            assert isinstance(message, dict), f"connection ended or not an object: {message!r}"
            if "ok" in message:
                return message
            assert {"id", "end", "started", "ended"} & set(message), message

    def request(self, message: Dict[str, Any]) -> Dict[str, Any]:
        self.send_raw(json.dumps(message).encode() + b"\n")
        return self.reply()

    def rest(self) -> List[bytes]:
        """Every line up to EOF."""
        lines = []
        while True:
            line = self.line()
            if line is None:
                return lines
            lines.append(line)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def greeting_of(path: Path) -> Optional[Dict[str, Any]]:
    """The greeting of the server at `path`, or None while none answers."""
    try:
        with Conn(path, timeout=2.0) as conn:
            return conn.greeting
    except OSError:
        return None


def await_run(name: str, directory: Optional[Path] = None, pid: Optional[int] = None,
              timeout: float = 10.0) -> Dict[str, Any]:
    """Poll until run `name` (of `pid`, if given) greets on its socket."""
    path = sock_path(name, directory)

    def answered() -> Optional[Dict[str, Any]]:
        greeting = greeting_of(path)
        if greeting is not None and pid is not None and greeting.get("pid") != pid:
            return None
        return greeting

    return poll_until(answered, timeout, what=f"run {name} to answer at {path}")


def serve_args(name: str, *extra: str, gpus: str = "0,1") -> List[str]:
    return ["--gpus", gpus, "--serve", "--name", name, "--shell", SH, *extra]


def start(workdir: Path, name: str, *extra: str, gpus: str = "0,1",
          env: Optional[Dict[str, str]] = None, stdout: object = None) -> Sgs:
    """A ``--serve`` run with stdin /dev/null, in a session of its own."""
    return Sgs(serve_args(name, *extra, gpus=gpus), workdir, stdin=subprocess.DEVNULL,
               env=env, stdout=stdout)


def drain(sgs: Sgs, name: str, directory: Optional[Path] = None) -> int:
    """Ask the run to drain over its socket and wait for its exit status."""
    with Conn(sock_path(name, directory)) as conn:
        assert conn.request({"op": "drain"}) == {"ok": True}
    return sgs.wait(15)


def healthy(sgs: Sgs, name: str, directory: Optional[Path] = None) -> Dict[str, Any]:
    """The run is alive, answers ``status`` at once, and has printed no traceback."""
    assert sgs.alive(), f"the run exited with {sgs.proc.returncode}: {sgs.stderr()}"
    began = time.monotonic()
    with Conn(sock_path(name, directory), timeout=5.0) as conn:
        reply = conn.request({"op": "status"})
    assert time.monotonic() - began < 2.0, "status took over 2 s"
    assert reply["ok"] is True and reply["run"]["name"] == name, reply
    err = sgs.stderr()
    assert "Traceback" not in err and "internal error" not in err, err
    return reply["run"]


def submitter_env() -> Dict[str, str]:
    return {k: v for k, v in child_env().items() if k in ("PATH", "HOME", "LANG", "SGS_LOCK_DIR")}


def add_request(tmp_path: Path, *commands: str, **extra: Any) -> Dict[str, Any]:
    return {"op": "add", "cwd": str(tmp_path), "env": submitter_env(),
            "jobs": [{"cmd": c} for c in commands], **extra}


def counts(name: str, directory: Optional[Path] = None) -> Dict[str, int]:
    with Conn(sock_path(name, directory)) as conn:
        return conn.request({"op": "status"})["run"]["counts"]


def imported_modules(stderr: str) -> set:
    return {line.split("|")[-1].strip() for line in stderr.splitlines()
            if line.startswith("import time:")}


# --- 1. who may talk -----------------------------------------------------------------

#: Run as root: drop to uid/gid NOBODY, keeping only CAP_DAC_OVERRIDE (so the
#: private directory and the 0600 socket can still be reached: the uid is what
#: SO_PEERCRED reports, and it is NOBODY's), connect, send requests that would
#: end the run at once, then read to the end. Prints one JSON object; exit 77
#: when privileges cannot be dropped that way.
PEER = r"""
import ctypes, json, os, socket, sys
path = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
class Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]
try:
    if libc.prctl(8, 1, 0, 0, 0) != 0:  # PR_SET_KEEPCAPS
        raise OSError(ctypes.get_errno(), "prctl")
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    data = (Data * 2)()
    data[0].effective = data[0].permitted = 1 << 1  # CAP_DAC_OVERRIDE
    if libc.capset(ctypes.byref(Header(0x20080522, 0)), data) != 0:  # v3
        raise OSError(ctypes.get_errno(), "capset")
except OSError as exc:
    print(json.dumps({"skip": str(exc)}))
    sys.exit(77)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(5)
sock.connect(path)
sent = True
try:
    sock.sendall(b'{"op": "drain"}\n{"op": "stop"}\n{"op": "pause"}\n')
except OSError:
    sent = False
data, end = b"", "eof"
while True:
    try:
        chunk = sock.recv(65536)
    except ConnectionResetError:
        end = "reset"
        break
    except socket.timeout:
        end = "timeout"
        break
    if not chunk:
        break
    data += chunk
print(json.dumps({"uid": os.getuid(), "data": data.decode("utf-8", "replace"), "end": end,
                  "sent": sent}))
""".replace("NOBODY", str(NOBODY))


def other_uid_peer(path: Path) -> Dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", PEER, str(path)], capture_output=True,
                          text=True, timeout=20)
    if done.returncode == 77:
        pytest.skip(f"cannot drop to uid {NOBODY} keeping CAP_DAC_OVERRIDE: {done.stdout}")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")
def test_a_peer_of_another_uid_is_refused_before_any_request_is_read(tmp_path: Path) -> None:
    name = run_name("peer")
    sgs = start(tmp_path, name)
    try:
        poll_until(sock_path(name).exists, 10, what="the socket")
        # The first peer is the other user's: the server is built on its connect.
        for _ in range(2):
            seen = other_uid_peer(sock_path(name))
            assert seen["uid"] == NOBODY
            lines = seen["data"].splitlines()
            assert len(lines) == 1 and seen["data"].endswith("\n"), seen
            refusal = json.loads(lines[0])
            assert set(refusal) == {"ok", "error"} and refusal["ok"] is False, refusal
            assert isinstance(refusal["error"], str) and refusal["error"], refusal
            assert seen["end"] in ("eof", "reset"), seen  # closed, not left open
            # The drain/stop/pause it sent were never read.
            run = healthy(sgs, name)
            assert run["stopping"] is None and run["paused"] is False, run
            assert run["input"] == "serving"
        assert "asked by a control client" not in sgs.stderr()
        assert drain(sgs, name) == 0
    finally:
        stop(sgs.proc)


# --- 2. the socket's life ----------------------------------------------------------------


def test_stale_socket_is_replaced_live_one_never_taken_over_and_removed_at_exit(
        tmp_path: Path) -> None:
    name = run_name("life")
    path = sock_path(name)
    first = start(tmp_path, name)
    second = None
    try:
        await_run(name, pid=first.pid)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        # What SIGKILL leaves: the socket file, refusing connections.
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        with pytest.raises(ConnectionRefusedError):
            Conn(path, greet=False)

        second = start(tmp_path, name)
        await_run(name, pid=second.pid)

        # A live one is never taken over: the third run is a usage error of its own.
        third = run_sgs(["--gpus", "0", "--name", name, "--shell", SH], input="touch third\n",
                        cwd=tmp_path, text=True, timeout=20)
        assert third.returncode == 2, third.stderr
        assert third.stderr.count("\n") == 1 and "Traceback" not in third.stderr
        assert f"a run named {name} is already running" in third.stderr
        assert not (tmp_path / "third").exists()  # it ran nothing
        assert healthy(second, name)["pid"] == second.pid
        assert verb_json("status", "--run", name)[0]["pid"] == second.pid

        # A normal end removes the socket (and leaves no temporary name behind).
        assert drain(second, name) == 0
        assert not path.exists()
        assert not [p for p in os.listdir(control_dir()) if name in p]
    finally:
        stop(first.proc)
        if second is not None:
            stop(second.proc)


# --- 3. the directory rules ----------------------------------------------------------


def bad_dir(tmp_path: Path, kind: str) -> Tuple[str, str]:
    """A control directory of `kind` that must be refused, and the words that say why."""
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    real.chmod(0o700)
    if kind == "symlink":
        path = tmp_path / "link"
        path.symlink_to(real)
        return str(path), "is a symlink"
    if kind == "symlink-slash":
        link = tmp_path / "link"
        link.symlink_to(real)
        # How tab completion writes it: the path still names the symlink.
        return f"{link}/", "is a symlink"
    if kind == "file":
        path = tmp_path / "file"
        path.write_text("not a directory\n")
        return str(path), "is not a directory"
    if kind == "mode-0755":
        real.chmod(0o755)
        return str(real), "is open to others (mode 0755"
    if kind == "mode-0701":
        real.chmod(0o701)
        return str(real), "is open to others (mode 0701"
    if kind == "other-uid":
        os.chown(real, NOBODY, NOBODY)
        return str(real), f"belongs to uid {NOBODY}"
    raise AssertionError(kind)


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("kind", [
    "symlink", "file", "mode-0755", "mode-0701",
    pytest.param("other-uid", marks=pytest.mark.skipif(
        os.geteuid() != 0, reason="needs root to chown to another uid")),
])
def test_an_unsafe_control_dir_is_refused_by_a_run_and_by_a_verb(tmp_path: Path,
                                                                 kind: str) -> None:
    path, problem = bad_dir(tmp_path, kind)
    before = os.lstat(path)
    done = run_sgs(["--gpus", "0", "--name", run_name("dir"), "--shell", SH,
                    "--control-dir", path], input="touch ran\n", cwd=tmp_path, text=True)
    assert done.returncode == 2, done.stderr
    line = one_line(done.stderr)
    assert f"control directory {path} {problem}" in line, line
    assert not (tmp_path / "ran").exists()  # no job ran
    # Refused, not repaired.
    after = os.lstat(path)
    assert (after.st_mode, after.st_uid) == (before.st_mode, before.st_uid)
    if kind in ("symlink", "mode-0755", "mode-0701", "other-uid"):
        assert not list((tmp_path / "real").iterdir())  # no socket was made
    client = verb("status", "--control-dir", path)
    assert client.returncode == 2, client.stderr
    assert problem in one_line(client.stderr)


def test_a_symlink_control_dir_is_refused_with_a_trailing_slash_too(tmp_path: Path) -> None:
    path, problem = bad_dir(tmp_path, "symlink-slash")
    done = run_sgs(["--gpus", "0", "--name", run_name("dir"), "--shell", SH,
                    "--control-dir", path], input="touch ran\n", cwd=tmp_path, text=True)
    assert done.returncode == 2 and problem in done.stderr, (done.returncode, done.stderr)
    assert not (tmp_path / "ran").exists()
    client = verb("status", "--control-dir", path)
    assert client.returncode == 2 and problem in client.stderr, client.stderr


@pytest.mark.parametrize("umask", [0o022, 0o277])
def test_a_missing_control_dir_is_made_private(tmp_path: Path, umask: int) -> None:
    directory = tmp_path / "made"
    name = run_name("made")
    old = os.umask(umask)  # inherited by the scheduler
    try:
        sgs = start(tmp_path, name, "--control-dir", str(directory))
    finally:
        os.umask(old)
    try:
        await_run(name, directory, pid=sgs.pid)
        info = os.lstat(directory)
        assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
        assert info.st_uid == os.getuid()
        assert stat.S_IMODE(os.lstat(sock_path(name, directory)).st_mode) == 0o600
        shown = verb_json("status", "--control-dir", str(directory))
        assert [run["pid"] for run in shown] == [sgs.pid]
        assert drain(sgs, name, directory) == 0
        assert list(directory.iterdir()) == []
    finally:
        stop(sgs.proc)


def test_missing_control_dirs_a_run_cannot_make_and_a_verb_finds_none(tmp_path: Path) -> None:
    deep = tmp_path / "no" / "such"
    done = run_sgs(["--gpus", "0", "--shell", SH, "--control-dir", str(deep)],
                   input="touch ran\n", cwd=tmp_path, text=True)
    assert done.returncode == 2
    assert f"cannot create control directory {deep}" in one_line(done.stderr)
    assert not (tmp_path / "ran").exists()
    client = verb("status", "--control-dir", str(tmp_path / "absent"))
    assert client.returncode == 2
    assert "does not exist" in one_line(client.stderr)
    assert not (tmp_path / "absent").exists()  # a client makes nothing


# --- 4. fuzzed and malformed requests ---------------------------------------------------


class FuzzRun:
    def __init__(self, sgs: Sgs, name: str, workdir: Path) -> None:
        self.sgs = sgs
        self.name = name
        self.workdir = workdir
        self.path = sock_path(name)


@pytest.fixture(scope="module")
def fuzz_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzRun]:
    """ONE long-lived run for every fuzzed request. Its PATH (and the PATH of
    every job a fuzzed ``add`` submits) names an empty directory, so a job
    that fuzzing makes valid can run shell builtins only."""
    workdir = tmp_path_factory.mktemp("fuzz")
    empty = workdir / "empty-bin"
    empty.mkdir()
    name = run_name("fuzz")
    sgs = start(workdir, name, "--tag", env=child_env({"PATH": str(empty)}),
                stdout=subprocess.DEVNULL)
    try:
        await_run(name, pid=sgs.pid)
        yield FuzzRun(sgs, name, workdir)
        healthy(sgs, name)
        assert drain(sgs, name) in (0, 1)  # 1: some fuzzed job failed
    finally:
        stop(sgs.proc)


NOWHERE = "/nonexistent-sgs-fuzz-bin"
KNOWN_OPS = ["status", "ls", "add", "cancel", "kill", "log", "pause", "unpause", "gpus",
             "move", "wait"]

scalars = (st.none() | st.booleans() | st.integers(-10, 100)
           | st.integers(min_value=-(2 ** 80), max_value=2 ** 80)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=10)
#: Anything but a string: never a command the shell could run.
not_strings = values.filter(lambda v: not isinstance(v, str))
job_ids = (st.integers(-3, 40) | st.integers(min_value=2 ** 63, max_value=10 ** 30)
           | st.floats() | st.text(max_size=4) | st.booleans() | st.none()
           | st.integers(-(10 ** 30), -(2 ** 63)))
ids_arg = st.lists(job_ids, max_size=4) | values
#: Commands that are safe to run: builtins and words no PATH finds.
commands = (st.sampled_from(["true", "false", "exit 3", ":", "echo fuzz", "", " ", "\t"])
            | st.text(alphabet="abcxyz019 ", max_size=10) | not_strings)
safe_bytes = st.binary(max_size=10).map(lambda raw: bytes(
    b if (97 <= b <= 122 or 48 <= b <= 57 or b in (0, 32) or b >= 128) else 97 for b in raw))
b64 = (safe_bytes.map(lambda raw: base64.b64encode(raw).decode())
       | st.text(alphabet="ABCab+/=0-_ !\n", max_size=12) | not_strings)


def defanged_env(value: Any) -> Any:
    """An ``env`` that is an object gets PATH set to a directory that does not exist."""
    if isinstance(value, dict):
        return {**value, "PATH": NOWHERE}
    return value


job_specs = st.fixed_dictionaries({}, optional={
    "cmd": commands, "cmd_b64": b64,
    "gpus": st.integers(-2, 3) | st.integers(min_value=2 ** 40) | values,
    "mem": st.sampled_from(["1GiB", "0", "-1", "12XB", "1e400"]) | values,
    "on": st.sampled_from(["0", "1", "0,1", "7", ""]) | values,
    "name": values, "priority": st.integers(-5, 5) | values,
    "env": st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2) | values,
    "cwd": st.sampled_from([".", "sub", "/nonexistent-sgs"]) | not_strings,
    "timeout": st.sampled_from([0.5, 5, "2s", 0, -1]) | values,
    "retries": st.integers(-1, 2) | values,
    "surprise": values,
}).map(lambda spec: {**spec, "env": defanged_env(spec["env"])} if "env" in spec else spec)
safe_lines = st.builds(lambda cmd, extra: json.dumps({"cmd": cmd, **extra}),
                       st.sampled_from(["true", "exit 1", "echo line"]),
                       st.dictionaries(st.sampled_from(["gpus", "name", "priority", "bad"]),
                                       scalars, max_size=2))
jsonl_lines = st.lists(
    safe_lines | st.text(alphabet="{}[]\":,0aq ", max_size=20)
    | st.fixed_dictionaries({"b64": st.text(alphabet="e30=ABab", max_size=8)}) | not_strings,
    max_size=3) | values


def op_arguments(op: str) -> st.SearchStrategy:
    flag = st.booleans() | values
    if op in ("cancel", "kill"):
        return st.fixed_dictionaries({}, optional={"ids": ids_arg})
    if op == "log":
        return st.fixed_dictionaries({}, optional={
            "ids": ids_arg, "all": flag, "follow": flag,
            "lines": st.integers(-2, 5) | st.integers(min_value=2 ** 64) | values})
    if op == "move":
        return st.fixed_dictionaries({}, optional={
            "id": job_ids, "to": st.sampled_from(["front", "back", "before"]) | values,
            "before": job_ids})
    if op == "wait":
        return st.fixed_dictionaries({}, optional={"ids": ids_arg})
    if op == "gpus":
        return st.fixed_dictionaries({}, optional={
            "action": st.sampled_from(["add", "remove"]) | values,
            "ids": st.lists(st.sampled_from(["0", "1", "9", "gpu-x", ""]) | not_strings,
                            max_size=3) | not_strings,
            "kill": flag})
    if op == "add":
        return st.fixed_dictionaries({}, optional={
            "cwd": st.sampled_from(["/nonexistent-sgs", "relative", "/"]) | not_strings,
            "env": (st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=3)
                    | values).map(defanged_env),
            "front": flag,
            "jobs": st.lists(job_specs | not_strings, max_size=3) | not_strings,
            "lines": jsonl_lines,
        })
    return st.dictionaries(st.text(max_size=6), values, max_size=3)


def request_object(op: Any, arguments: Dict[str, Any]) -> Dict[str, Any]:
    return {**arguments, "op": op}


requests = st.one_of(
    st.sampled_from(KNOWN_OPS).flatmap(
        lambda op: op_arguments(op).map(lambda arguments: request_object(op, arguments))),
    # Unknown ops only: a drain or stop would end the run; a known op's
    # arguments are drawn above, where every env is defanged.
    st.builds(request_object,
              (st.text(max_size=10) | values).filter(
                  lambda op: op not in [*KNOWN_OPS, "drain", "stop"]),
              st.dictionaries(st.text(max_size=6), values, max_size=3)),
)


def corrupted(line: bytes, at: int, junk: bytes) -> bytes:
    at %= len(line) + 1
    return line[:at] + junk + line[at:]


#: (kind, line bytes without its newline)
fuzz_lines = st.one_of(
    st.binary(max_size=300).map(lambda raw: ("bytes", raw.replace(b"\n", b""))),
    values.map(lambda value: ("value", json.dumps(value).encode())),
    requests.map(lambda request: ("request", json.dumps(request).encode())),
    requests.map(lambda request: ("request", json.dumps(request, ensure_ascii=False).encode())),
    st.builds(lambda request, at, junk: ("broken", corrupted(json.dumps(request).encode(),
                                                             at, junk)),
              requests, st.integers(0, 10 ** 6),
              st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"}", b"\"", b"\\"])),
    st.sampled_from([b"", b" ", b"\t", b"\r", b" \x0b\x0c"]).map(lambda raw: ("blank", raw)),
)


def expect_reply(kind: str, line: bytes, reply: Dict[str, Any]) -> None:
    assert isinstance(reply.get("ok"), bool), reply
    if reply["ok"] is False:
        assert isinstance(reply.get("error"), str) and reply["error"], reply
        assert "internal error" not in reply["error"], (line, reply)
    if kind in ("bytes", "broken"):
        try:
            parsed = json.loads(line)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            assert reply["ok"] is False, (line, reply)
    elif kind == "value" and not line.startswith(b"{"):
        assert reply == {"ok": False, "error": "the request is not a JSON object"}, reply
    elif kind == "request":
        op = json.loads(line)["op"]
        if op not in KNOWN_OPS:
            assert reply["ok"] is False and reply["error"].startswith("unknown op"), reply


@settings(max_examples=60, deadline=None, database=None, derandomize=False,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(st.lists(fuzz_lines, min_size=1, max_size=6))
def test_fuzzed_requests_get_a_reply_each_and_never_disturb_the_run(
        fuzz_run: FuzzRun, lines: List[Tuple[str, bytes]]) -> None:
    with Conn(fuzz_run.path) as conn:
        assert conn.greeting is not None and conn.greeting["sgs"] == 1
        conn.send_raw(b"".join(line + b"\n" for _, line in lines) + b'{"op": "ls"}\n')
        for kind, line in lines:
            if not line.strip():
                continue  # a blank line is no request: no reply
            expect_reply(kind, line, conn.reply())
        last = conn.reply()  # the ls after them: nothing answered twice, nothing skipped
        assert last["ok"] is True and "forgotten" in last, last
    assert fuzz_run.sgs.alive(), fuzz_run.sgs.stderr()


def test_after_fuzzing_the_run_answers_and_printed_no_traceback(fuzz_run: FuzzRun) -> None:
    healthy(fuzz_run.sgs, fuzz_run.name)


def test_a_line_over_one_mib_is_refused_and_the_connection_closed(fuzz_run: FuzzRun) -> None:
    request = b'{"op": "status"}'
    # Exactly the limit is a request.
    with Conn(fuzz_run.path) as conn:
        conn.send_raw(request + b" " * (MAX_REQUEST - len(request)) + b"\n")
        assert conn.reply()["ok"] is True
        assert conn.request({"op": "ls"})["ok"] is True  # and the connection lives on
    # One byte more is not: with its newline, and without (the rest never read).
    for tail in (b"\n", b" " * MAX_REQUEST):
        with Conn(fuzz_run.path) as conn:
            try:
                conn.send_raw(request + b" " * (MAX_REQUEST + 1 - len(request)) + tail)
                conn.send_raw(b'{"op": "drain"}\n')
            except (BrokenPipeError, ConnectionResetError):
                pass  # it closed while we wrote: what it sent is still to read
            refusal = conn.read()
            assert refusal["ok"] is False and "over 1048576 bytes" in refusal["error"], refusal
            assert conn.rest() == []  # then closed: the drain after it was never read
    run = healthy(fuzz_run.sgs, fuzz_run.name)
    assert run["stopping"] is None


def test_a_request_split_across_many_tiny_writes(fuzz_run: FuzzRun) -> None:
    name = "split-\u00e9\u4e2d"  # UTF-8 sequences cut between writes
    first = json.dumps(add_request(fuzz_run.workdir, "true"), ensure_ascii=False)
    first = first.replace('"cmd": "true"', f'"cmd": "true", "name": "{name}"')
    data = first.encode() + b'\n{"op": "ls"}\n'
    with Conn(fuzz_run.path) as conn, Conn(fuzz_run.path) as other:
        for at in range(0, len(data), 2):
            conn.send_raw(data[at:at + 2])
            # A round trip on another connection: the loop went round meanwhile.
            assert other.request({"op": "status"})["ok"] is True
        added = conn.reply()
        assert added["ok"] is True and len(added["ids"]) == 1, added
        listed = conn.reply()
        assert listed["ok"] is True
        job = [j for j in listed["jobs"] if j["id"] == added["ids"][0]]
        assert job and job[0]["name"] == name, job


def test_many_requests_in_one_write_are_all_answered_in_order(fuzz_run: FuzzRun) -> None:
    add = json.dumps(add_request(fuzz_run.workdir, "true")).encode()
    kinds = ["status", "ls", "garbage", "unknown", "add", "blank", "notobject"] * 40
    lines = {"status": b'{"op": "status"}', "ls": b'{"op": "ls"}', "garbage": b"\xff{nope",
             "unknown": b'{"op": "fly"}', "add": add, "blank": b"   ",
             "notobject": b"[1, 2]"}
    with Conn(fuzz_run.path, timeout=20) as conn:
        conn.send_raw(b"".join(lines[kind] + b"\n" for kind in kinds))
        ids = []
        for kind in kinds:
            if kind == "blank":
                continue
            reply = conn.reply()
            if kind == "status":
                assert reply["ok"] is True and "run" in reply, reply
            elif kind == "ls":
                assert reply["ok"] is True and "forgotten" in reply, reply
            elif kind == "add":
                assert reply["ok"] is True and len(reply["ids"]) == 1, reply
                ids += reply["ids"]
            elif kind == "unknown":
                assert reply["ok"] is False and reply["error"].startswith("unknown op 'fly'")
            else:
                assert reply["ok"] is False and "JSON object" in reply["error"], reply
        assert ids == list(range(ids[0], ids[0] + 40))
    healthy(fuzz_run.sgs, fuzz_run.name)


def test_gpu_ids_that_no_job_can_use_are_refused_and_replies_stay_utf8(tmp_path: Path) -> None:
    """``gpus add`` ids that --gpus could never get (a NUL byte, a lone
    surrogate) would be put in CUDA_VISIBLE_DEVICES of every job there; and a
    reply must stay UTF-8 whatever a request held."""
    name = run_name("gpuid")
    sgs = start(tmp_path, name, gpus="0")
    try:
        await_run(name, pid=sgs.pid)
        with Conn(sock_path(name)) as conn:
            for odd in ("\u0000", "\ud800", "a\u0000b"):
                conn.send_raw(json.dumps({"op": "gpus", "action": "add", "ids": [odd]})
                              .encode() + b"\n")
                reply = conn.reply()  # a reply that is not UTF-8 fails here
                assert reply["ok"] is False, reply
            status = conn.request({"op": "status"})
            assert [gpu["id"] for gpu in status["run"]["gpus"]] == ["0"], status
        shown = verb("status", "--run", name)
        assert shown.returncode == 0, shown.stderr
        assert drain(sgs, name) == 0
    finally:
        stop(sgs.proc)


# --- 5. clients that hang -----------------------------------------------------------------


#: 50 MB in lines of 1000 bytes (``yes | head`` prints 2-byte lines, 25 million
#: of them, which --tag alone takes some 40 s to copy), each byte \x01, which a
#: log line spells ``\u0001``: some 300 MB for a follower, far over the 64 MiB
#: that may wait for a client.
BIG_OUTPUT = 'yes "$(head -c 999 /dev/zero | tr "\\0" "\\1")" | head -c 50000000'


def test_silent_stalled_and_unread_clients_block_nothing(tmp_path: Path) -> None:
    name = run_name("hang")
    sgs = start(tmp_path, name, "--tag", stdout=subprocess.DEVNULL)
    held: List[Conn] = []
    try:
        await_run(name, pid=sgs.pid)
        path = sock_path(name)
        silent = Conn(path, greet=False)  # connects, never reads nor writes
        held.append(silent)
        stalled = Conn(path)
        held.append(stalled)
        stalled.send_raw(b'{"op": "sta')  # half a line, then nothing
        reader = Conn(path)
        held.append(reader)
        with Conn(path) as control:
            # The big job is followed from before its first byte by a client that
            # never reads what it is sent.
            assert control.request({"op": "pause"}) == {"ok": True}
            big = reader.request(add_request(tmp_path, BIG_OUTPUT))["ids"][0]
            reader.send_raw(json.dumps({"op": "log", "ids": [big], "follow": True}).encode()
                            + b"\n")
            assert control.request({"op": "unpause"}) == {"ok": True}
            short = control.request(add_request(
                tmp_path, *[f"touch short-{i}" for i in range(20)]))["ids"]

            slowest = 0.0

            def done() -> bool:
                nonlocal slowest
                began = time.monotonic()
                reply = control.request({"op": "ls"})
                slowest = max(slowest, time.monotonic() - began)
                states = {job["id"]: job["state"] for job in reply["jobs"]}
                return all(states[i] == "succeeded" for i in [big, *short])

            poll_until(done, 30, what=lambda: f"the jobs to finish; {counts(name)}")
            assert slowest < 3.0, f"a request took {slowest:.1f}s while clients hung"
        assert all((tmp_path / f"short-{i}").exists() for i in range(20))
        # The client that did not read was dropped, not fed for ever: what the
        # socket holds, then EOF, and never the end of the log.
        reader.sock.settimeout(10)
        unread = b""
        while True:
            try:
                chunk = reader.sock.recv(1 << 20)
            except ConnectionResetError:
                break
            if not chunk:
                break
            unread += chunk
        assert b'"end":true' not in unread.replace(b" ", b"")
        assert len(unread) < 32 * 2**20, len(unread)
        # Nor did it cost the run its memory (64 MiB is the most kept unread).
        with open(f"/proc/{sgs.pid}/status") as f:
            peak = [int(line.split()[1]) for line in f if line.startswith("VmHWM:")][0]
        assert peak < 300 * 1024, f"the run's peak RSS was {peak} KiB"
        # The stalled line is still there to finish; the silent client still waits.
        stalled.send_raw(b'tus"}\n')
        assert stalled.reply()["run"]["name"] == name
        silent_greeting = json.loads(silent.sock.recv(65536).split(b"\n")[0])
        assert silent_greeting["name"] == name
        healthy(sgs, name)
        assert drain(sgs, name) == 0
    finally:
        for conn in held:
            conn.close()
        stop(sgs.proc)


# --- 6. many clients at once ----------------------------------------------------------------


def test_twenty_clients_at_once_while_jobs_run(tmp_path: Path) -> None:
    name = run_name("many")
    sgs = start(tmp_path, name, gpus="0,1,2,3")
    record = tmp_path / "ids.txt"
    job = f'sleep 0.05; echo "$SGS_JOB_ID" >> {record}'
    try:
        await_run(name, pid=sgs.pid)
        barrier = threading.Barrier(20)
        added: Dict[int, List[int]] = {}
        errors: List[str] = []

        def raw_client(n: int) -> None:
            with Conn(sock_path(name), timeout=20) as conn:
                barrier.wait(20)
                assert conn.request({"op": "status"})["ok"] is True
                assert conn.request({"op": "ls"})["ok"] is True
                reply = conn.request(add_request(tmp_path, job, job, job))
                assert reply["ok"] is True, reply
                added[n] = reply["ids"]
                assert conn.request({"op": "status"})["ok"] is True

        def verb_client(n: int) -> None:
            barrier.wait(20)
            done = verb("add", "--json", "--run", name, "--", job, cwd=tmp_path)
            assert done.returncode == 0, done.stderr
            added[n] = json.loads(done.stdout)["ids"]
            assert verb("ls", "--run", name).returncode == 0

        def client(n: int) -> None:
            try:
                (raw_client if n % 2 else verb_client)(n)
            except BaseException as exc:  # noqa: B036 - reported below
                errors.append(f"client {n}: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=client, args=(n,)) for n in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        assert sorted(added) == list(range(20))
        for n, ids in added.items():
            assert len(ids) == (3 if n % 2 else 1), (n, ids)
            assert ids == list(range(ids[0], ids[0] + len(ids))), ids  # one add: consecutive
        every = sorted(i for ids in added.values() for i in ids)
        assert every == list(range(1, 41))  # unique, and nothing skipped
        poll_until(lambda: counts(name)["succeeded"] == 40, 30,
                   what=lambda: f"40 jobs to succeed; {counts(name)}")
        assert sorted(int(x) for x in record.read_text().split()) == every  # each ran once
        assert counts(name)["failed"] == 0
        healthy(sgs, name)
        assert drain(sgs, name) == 0
    finally:
        stop(sgs.proc)


# --- 7. idle CPU ----------------------------------------------------------------------------


def settled(pid: int) -> bool:
    """The process slept through a short look (start-up, or a request, is over)."""
    before = wakeups(pid), cpu_seconds(pid)
    time.sleep(0.15)
    return (wakeups(pid), cpu_seconds(pid)) == before


def assert_idle(pid: int, when: str) -> None:
    poll_until(lambda: settled(pid), 10, what=f"the run to settle {when}")
    before, woke = cpu_seconds(pid), wakeups(pid)
    time.sleep(1.5)  # the measurement window: an idle run must stay asleep in it
    used, woke = cpu_seconds(pid) - before, wakeups(pid) - woke
    assert used < 0.05, f"idle run used {used:.3f}s of CPU in 1.5s {when}"
    assert woke <= 3, f"idle run woke {woke} times in 1.5s {when}"


def test_an_idle_serving_run_uses_no_cpu_with_its_socket_open(tmp_path: Path) -> None:
    name = run_name("idle")
    sgs = start(tmp_path, name)
    try:
        poll_until(sock_path(name).exists, 10, what="the socket")
        assert_idle(sgs.pid, "before any client")
        with Conn(sock_path(name)) as conn:  # the server is built now
            assert conn.request({"op": "status"})["ok"] is True
        assert_idle(sgs.pid, "after a client came and went")
        with Conn(sock_path(name)) as idle_client:
            assert idle_client.request({"op": "ls"})["ok"] is True
            assert_idle(sgs.pid, "with an idle client connected")
        assert drain(sgs, name) == 0
    finally:
        stop(sgs.proc)


# --- 8. what is imported --------------------------------------------------------------------

HEAVY = ("simple_gpu_scheduler.engine", "simple_gpu_scheduler.launch",
         "simple_gpu_scheduler.gpus", "simple_gpu_scheduler.report")


#: Of `report`, the verbs use only the pure status-table helpers (cutting a
#: command in the middle, a terminal's width), which import nothing but `model`.
LIGHT = ("simple_gpu_scheduler.report", "simple_gpu_scheduler.report.status")


def heavy(modules: set) -> List[str]:
    return sorted(m for m in modules if m.startswith(HEAVY) and m not in LIGHT)


def test_client_verbs_import_no_engine_launcher_gpu_or_report_code(tmp_path: Path) -> None:
    assert SGS is not None
    found: Dict[str, List[str]] = {}
    bare = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import simple_gpu_scheduler.cli.verbs"],
        capture_output=True, text=True, timeout=30, env=child_env())
    assert bare.returncode == 0, bare.stderr
    assert "simple_gpu_scheduler.cli.verbs" in imported_modules(bare.stderr)
    found["import simple_gpu_scheduler.cli.verbs"] = heavy(imported_modules(bare.stderr))

    name = run_name("cheap")
    sgs = start(tmp_path, name)
    try:
        await_run(name, pid=sgs.pid)
        for args in (["status"], ["ls"], ["add", "--json", "--", "true"], ["gpus"]):
            timed = subprocess.run(
                [sys.executable, "-X", "importtime", SGS, args[0], "--run", name, *args[1:]],
                capture_output=True, text=True, timeout=30, env=child_env(), cwd=tmp_path)
            assert timed.returncode == 0, (args, timed.stderr[-2000:])
            modules = imported_modules(timed.stderr)
            assert "simple_gpu_scheduler.control.client" in modules
            found[" ".join(args)] = heavy(modules)
        assert drain(sgs, name) == 0
    finally:
        stop(sgs.proc)
    assert not any(found.values()), found


def test_a_run_no_client_talks_to_never_imports_the_server(tmp_path: Path) -> None:
    assert SGS is not None
    machine = FakeMachine(tmp_path, [])
    env = machine.env("none")
    del env["PYTHONPATH"]  # no pynvml at all, not even the fake
    name = run_name("quiet")
    timed = subprocess.run(
        [sys.executable, "-X", "importtime", SGS, "--gpus", "0", "--name", name,
         "--lock-dir", str(machine.locks)],
        input="true\n", env=env, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert timed.returncode == 0, timed.stderr
    modules = imported_modules(timed.stderr)
    assert "simple_gpu_scheduler.control.paths" in modules  # it did bind its socket
    for module in ("json", "simple_gpu_scheduler.control.server",
                   "simple_gpu_scheduler.control.handlers", "simple_gpu_scheduler.control.views"):
        assert module not in modules, module
    assert not sock_path(name).exists()

    # The same check sees the server once a client has connected.
    err_path = tmp_path / "served-stderr.txt"
    with open(err_path, "wb") as err_file:
        served = subprocess.Popen(
            [sys.executable, "-X", "importtime", SGS, *serve_args(name, gpus="0"),
             "--lock-dir", str(machine.locks)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err_file, env=env,
            cwd=tmp_path, start_new_session=True)
    try:
        await_run(name, pid=served.pid)
        with Conn(sock_path(name)) as conn:
            assert conn.request({"op": "drain"}) == {"ok": True}
        assert served.wait(20) == 0, err_path.read_text()
        assert "simple_gpu_scheduler.control.server" in imported_modules(err_path.read_text())
    finally:
        stop(served)

