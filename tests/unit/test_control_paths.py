"""The control directory and socket files (control.paths), and the client's
connection to a run (control.client), against small in-test servers."""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import stat
import tempfile
import threading
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional

import pytest

from simple_gpu_scheduler.control import paths
from simple_gpu_scheduler.control.client import Connection, ControlError, find_run
from simple_gpu_scheduler.control.paths import (
    CONTROL_DIR_VARIABLE,
    RunInfo,
    check_dir,
    check_name,
    control_dir,
    listen,
    live_runs,
    socket_path,
)
from simple_gpu_scheduler.errors import UsageError


@pytest.fixture
def ctl() -> Iterator[str]:
    """A private (0700) control directory with a short path: a socket address
    holds 108 bytes, and pytest's tmp_path names the test."""
    directory = tempfile.mkdtemp(prefix="sgsctl-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


class FakeRun:
    """A server on `listen`'s socket that greets each connection and then lets
    `serve(sock)` answer (by default: close). Runs in a thread until `stop`."""

    def __init__(self, directory: str, name: str, greeting: Optional[Dict[str, object]] = None,
                 serve: Optional[Callable[[socket.socket], None]] = None) -> None:
        self.listener = listen(directory, name)
        # Bound with `_socket`; the real server takes it over the same way.
        self.listener.sock = socket.socket(fileno=self.listener.sock.detach())
        if greeting is None:
            greeting = {"sgs": 1, "pid": os.getpid(), "name": name, "version": "0.2.0"}
        self.greeting = json.dumps(greeting).encode() + b"\n"
        self.serve = serve
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.listener.sock], [], [], 0.05)
            if not ready:
                continue
            try:
                conn, _ = self.listener.sock.accept()
            except BlockingIOError:
                continue
            with conn:
                conn.setblocking(True)
                try:
                    conn.sendall(self.greeting)
                    if self.serve is not None:
                        self.serve(conn)
                except OSError:
                    pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()


def read_request(conn: socket.socket) -> Dict[str, object]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            raise EOFError
        data += chunk
    return json.loads(data)


# --- control_dir -----------------------------------------------------------------------


def test_control_dir_prefers_override_then_variable_then_runtime_dir(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(CONTROL_DIR_VARIABLE, "/from/env")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/7")
    assert control_dir("/given") == "/given"
    assert control_dir() == "/from/env"
    monkeypatch.delenv(CONTROL_DIR_VARIABLE)
    assert control_dir() == "/run/user/7/simple_gpu_scheduler"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "")
    assert control_dir() == f"/tmp/simple_gpu_scheduler-{os.getuid()}"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert control_dir() == f"/tmp/simple_gpu_scheduler-{os.getuid()}"


# --- check_dir -------------------------------------------------------------------------


def test_check_dir_creates_the_directory_private_whatever_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "ctl"
    old = os.umask(0o277)  # would leave a directory we cannot write
    try:
        check_dir(str(target), create=True)
    finally:
        os.umask(old)
    info = os.lstat(target)
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
    check_dir(str(target), create=True)  # there already: fine
    check_dir(str(target), create=False)


def test_check_dir_without_create_says_no_run_is_live(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^no run is live: .*ctl does not exist$"):
        check_dir(str(tmp_path / "ctl"), create=False)
    assert not (tmp_path / "ctl").exists()


def test_check_dir_needs_the_parent(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot create control directory"):
        check_dir(str(tmp_path / "no" / "ctl"), create=True)


def test_check_dir_refuses_a_symlink_even_to_a_good_directory(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    os.chmod(real, 0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    for create in (False, True):
        with pytest.raises(UsageError, match=f"^control directory {link} is a symlink; refusing"):
            check_dir(str(link), create=create)


def test_check_dir_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "ctl").write_text("")
    with pytest.raises(UsageError, match="is not a directory"):
        check_dir(str(tmp_path / "ctl"), create=True)


@pytest.mark.parametrize("mode", [0o755, 0o701, 0o720, 0o770])
def test_check_dir_refuses_a_directory_open_to_others(tmp_path: Path, mode: int) -> None:
    target = tmp_path / "ctl"
    target.mkdir()
    os.chmod(target, mode)
    with pytest.raises(UsageError, match=f"is open to others \\(mode {mode:04o}"):
        check_dir(str(target), create=True)
    assert stat.S_IMODE(os.lstat(target).st_mode) == mode  # refused, not repaired


def test_check_dir_refuses_a_directory_of_another_user(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("only root can give a directory to another uid")
    target = tmp_path / "ctl"
    target.mkdir(mode=0o700)
    os.chmod(target, 0o700)
    os.chown(target, 54321, -1)
    with pytest.raises(UsageError, match="belongs to uid 54321, not to you"):
        check_dir(str(target), create=False)


# --- names -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sweep", "4242", "a", "lr-0.1_x", "x" * 64, "a.b"])
def test_good_names(name: str) -> None:
    check_name(name)


@pytest.mark.parametrize("name", ["", ".hidden", "..", "a/b", "a b", "x" * 65, "é", "a\n"])
def test_bad_names(name: str) -> None:
    with pytest.raises(UsageError, match="invalid run name"):
        check_name(name)


def test_socket_path() -> None:
    assert socket_path("/run/ctl", "sweep") == "/run/ctl/sweep.sock"


# --- listen ----------------------------------------------------------------------------


def test_listen_makes_a_private_non_blocking_socket_and_nothing_else(ctl: str) -> None:
    listener = listen(ctl, "sweep")
    try:
        assert listener.path == socket_path(ctl, "sweep")
        info = os.lstat(listener.path)
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
        assert os.listdir(ctl) == ["sweep.sock"]  # the temporary name is gone
        assert not listener.sock.getblocking()
        assert not os.get_inheritable(listener.sock.fileno())
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(listener.path)
    finally:
        listener.close()
    assert os.listdir(ctl) == []
    listener.close()  # twice is fine


def test_listen_makes_and_checks_the_directory(ctl: str) -> None:
    listener = listen(os.path.join(ctl, "new"), "sweep")
    listener.close()
    assert stat.S_IMODE(os.lstat(os.path.join(ctl, "new")).st_mode) == 0o700
    os.chmod(ctl, 0o755)
    with pytest.raises(UsageError, match="is open to others"):
        listen(ctl, "sweep")
    assert os.listdir(ctl) == ["new"]


def test_a_second_live_run_of_the_name_is_refused(ctl: str) -> None:
    first = listen(ctl, "sweep")
    try:
        with pytest.raises(UsageError, match=r"a run named sweep is already running \(.*answers"):
            listen(ctl, "sweep")
        assert os.listdir(ctl) == ["sweep.sock"]
        other = listen(ctl, "other")  # another name is fine
        other.close()
    finally:
        first.close()
    again = listen(ctl, "sweep")  # the name is free again
    again.close()


def test_a_stale_socket_is_replaced(ctl: str) -> None:
    path = socket_path(ctl, "sweep")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.listen(1)
    dead.close()  # as after a SIGKILL: the file stays, nobody listens
    stale = os.lstat(path).st_ino
    listener = listen(ctl, "sweep")
    try:
        assert os.lstat(path).st_ino != stale
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
    finally:
        listener.close()


def test_a_file_that_is_not_a_socket_is_refused_and_kept(ctl: str) -> None:
    path = Path(socket_path(ctl, "sweep"))
    path.write_text("mine")
    with pytest.raises(UsageError, match="exists and is not a socket"):
        listen(ctl, "sweep")
    assert path.read_text() == "mine"
    assert os.listdir(ctl) == ["sweep.sock"]


def test_a_symlink_of_the_name_is_not_followed(ctl: str, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    os.symlink(target, socket_path(ctl, "sweep"))
    with pytest.raises(UsageError, match="not a socket"):
        listen(ctl, "sweep")
    assert not target.exists()


def test_close_removes_only_its_own_socket(ctl: str) -> None:
    first = listen(ctl, "sweep")
    os.unlink(first.path)  # someone removed it, and a new run took the name
    second = listen(ctl, "sweep")
    try:
        first.close()
        assert os.path.exists(second.path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(second.path)
    finally:
        second.close()
    assert os.listdir(ctl) == []


def test_a_path_too_long_for_a_socket_is_a_usage_error(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100)
    deep.mkdir(mode=0o700)
    with pytest.raises(UsageError, match="too long for a Unix socket"):
        listen(str(deep), "sweep")
    assert os.listdir(deep) == []


# --- live_runs and find_run ------------------------------------------------------------


def test_live_runs_lists_the_runs_that_greet(ctl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paths, "GREETING_TIMEOUT", 0.2)  # for the silent one
    runs = [FakeRun(ctl, "zeta", {"sgs": 1, "pid": 12, "name": "zeta", "version": "0.2.0"}),
            FakeRun(ctl, "alpha", {"sgs": 1, "pid": 345, "name": "alpha"}),
            FakeRun(ctl, "future", {"sgs": 2, "pid": 9, "name": "future"})]
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(socket_path(ctl, "dead"))
    dead.close()
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # accepts, never greets
    silent.bind(socket_path(ctl, "silent"))
    silent.listen(1)
    Path(ctl, "notes.txt").write_text("")
    try:
        found = live_runs(ctl)
    finally:
        silent.close()
        for run in runs:
            run.stop()
    assert found == [RunInfo("alpha", 345, socket_path(ctl, "alpha"), None),
                     RunInfo("zeta", 12, socket_path(ctl, "zeta"), "0.2.0")]
    assert os.path.exists(socket_path(ctl, "dead"))  # stale ones are left to the runs


def test_live_runs_checks_the_directory(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    with pytest.raises(UsageError, match="open to others"):
        live_runs(str(tmp_path))


def test_find_run_by_name_pid_or_alone(ctl: str) -> None:
    with pytest.raises(UsageError, match=f"^no run of yours is live in {ctl}$"):
        find_run(ctl, None)
    sweep = FakeRun(ctl, "sweep", {"sgs": 1, "pid": 12, "name": "sweep"})
    try:
        assert find_run(ctl, None).name == "sweep"
        assert find_run(ctl, "12").name == "sweep"
        other = FakeRun(ctl, "345", {"sgs": 1, "pid": 345, "name": "345"})
        try:
            with pytest.raises(UsageError) as caught:
                find_run(ctl, None)
            assert str(caught.value) == (
                "2 runs are live (345 pid 345, sweep pid 12): pick one with --run NAME|PID")
            assert find_run(ctl, "sweep").pid == 12
            assert find_run(ctl, "345").pid == 345
            with pytest.raises(UsageError, match="no run named 7 is live in .*; live: 345 pid"):
                find_run(ctl, "7")
        finally:
            other.stop()
    finally:
        sweep.stop()


# --- Connection ------------------------------------------------------------------------


def test_a_connection_greets_requests_and_streams(ctl: str) -> None:
    big = "x" * (3 << 20)  # longer than one recv: the line is assembled

    def serve(conn: socket.socket) -> None:
        request = read_request(conn)
        assert request == {"op": "ls", "env": {"BAD": "\udcff"}}
        conn.sendall(json.dumps({"ok": True, "big": big}).encode() + b"\n"
                     + b'{"id": 1, "text": "a"}\n{"id": 1, "te')
        conn.sendall(b'xt": "b"}\n{"end": true}\n')

    run = FakeRun(ctl, "sweep", serve=serve)
    try:
        with Connection.open(socket_path(ctl, "sweep")) as conn:
            assert (conn.name, conn.pid) == ("sweep", os.getpid())
            assert conn.greeting["version"] == "0.2.0"
            # An environment value that is not UTF-8 (a surrogate escape) travels.
            reply = conn.request({"op": "ls", "env": {"BAD": "\udcff"}})
            assert reply == {"ok": True, "big": big}
            assert list(conn.replies()) == [
                {"id": 1, "text": "a"}, {"id": 1, "text": "b"}, {"end": True}]
    finally:
        run.stop()


def test_a_run_that_ends_mid_stream_is_a_control_error(ctl: str) -> None:
    def serve(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b'{"ok": true}\n{"id": 1, "text": "a"}\n')

    run = FakeRun(ctl, "sweep", serve=serve)
    try:
        with Connection.open(socket_path(ctl, "sweep")) as conn:
            assert conn.request({"op": "wait"}) == {"ok": True}
            replies = conn.replies()
            assert next(replies) == {"id": 1, "text": "a"}
            with pytest.raises(ControlError, match="the run ended"):
                next(replies)
    finally:
        run.stop()


def test_a_refusal_line_instead_of_a_greeting(ctl: str) -> None:
    refusal: Dict[str, object] = {"ok": False, "error": "uid 1000 may not talk to this run"}
    run = FakeRun(ctl, "sweep", refusal)
    try:
        with pytest.raises(ControlError, match="^uid 1000 may not talk to this run$"):
            Connection.open(socket_path(ctl, "sweep"))
    finally:
        run.stop()


def test_another_protocol_version_is_refused(ctl: str) -> None:
    run = FakeRun(ctl, "sweep", {"sgs": 2, "pid": 1, "name": "sweep"})
    try:
        with pytest.raises(ControlError, match="speaks control protocol 2, not 1"):
            Connection.open(socket_path(ctl, "sweep"))
    finally:
        run.stop()


def test_no_socket_or_a_stale_one(ctl: str) -> None:
    with pytest.raises(ControlError, match="no run is live at"):
        Connection.open(socket_path(ctl, "gone"))
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(socket_path(ctl, "dead"))
    dead.close()
    with pytest.raises(ControlError, match="stale"):
        Connection.open(socket_path(ctl, "dead"))


def test_a_silent_run_times_out(ctl: str) -> None:
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(socket_path(ctl, "silent"))
    silent.listen(1)
    try:
        with pytest.raises(ControlError, match="did not answer in time"):
            Connection.open(socket_path(ctl, "silent"), timeout=0.1)
    finally:
        silent.close()


def test_a_line_that_is_not_an_object(ctl: str) -> None:
    def serve(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"[1, 2]\n")

    run = FakeRun(ctl, "sweep", serve=serve)
    try:
        with Connection.open(socket_path(ctl, "sweep")) as conn:
            with pytest.raises(ControlError, match="not a JSON object"):
                conn.request({"op": "status"})
    finally:
        run.stop()
