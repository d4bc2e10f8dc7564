"""Where the control sockets live, and the rules for that directory.

Used by both ends: the server (`listen`) and the client verbs (`live_runs`).
See docs/control.md, "Where the socket is".

The directory is private (mode 0700, ours): nobody else can put a socket in
it, or remove ours, so a client that found a socket there talks to one of our
own runs. Both ends check that before they use it, without following a
symlink, and refuse the directory rather than repair it.

A socket is bound under a temporary name and hard-linked to ``NAME.sock``:
`os.link` fails when the name exists, so of two runs that start with one name
at once, one wins and the other is told the name is taken. A socket file that
outlived its scheduler (SIGKILL) refuses connections; that one is stale and a
new run of its name replaces it. A run removes its socket when it ends only
while the file is still the one it made.
"""

from __future__ import annotations

import _socket  # not `socket`: a run binds here, and `socket` costs 3 ms of start-up
import errno
import os
import stat

from ..errors import UsageError
from ..model.record import Record

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Any, List, Optional, Tuple

#: Environment variable that moves the control directory (as --control-dir does).
CONTROL_DIR_VARIABLE = "SGS_CONTROL_DIR"
#: How long `live_runs` gives each socket to greet. A run's server answers from
#: its own loop within milliseconds; one that does not is skipped, not waited for.
GREETING_TIMEOUT = 1.0
#: The most bytes of a greeting line read (it is a few dozen).
MAX_GREETING = 64 * 1024
#: The longest run name (the socket path must fit ``sockaddr_un``, 108 bytes).
MAX_NAME = 64

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_SUFFIX = ".sock"


def control_dir(override: Optional[str] = None) -> str:
    """The control directory: `override` (--control-dir), else $SGS_CONTROL_DIR,
    else $XDG_RUNTIME_DIR/simple_gpu_scheduler, else /tmp/simple_gpu_scheduler-UID.

    XDG_RUNTIME_DIR is the user's own tmpfs (removed at logout); /tmp is the
    fallback where there is none (cron, ssh without systemd-logind)."""
    if override:
        return override
    configured = os.environ.get(CONTROL_DIR_VARIABLE)
    if configured:
        return configured
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "simple_gpu_scheduler")
    return f"/tmp/simple_gpu_scheduler-{os.getuid()}"


def check_dir(path: str, create: bool) -> None:
    """Refuse (`UsageError`) a control directory that is not private and ours.

    With `create` (a run) it is made, mode 0700, when missing; its parent must
    exist. Without (a client) a missing directory means no run is live."""
    # "link/" makes lstat follow the link: the name itself is what is checked.
    path = path.rstrip("/") or "/"
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass  # there already, or another run made it just now: checked below
        except OSError as exc:
            raise UsageError(
                f"cannot create control directory {path}: {exc.strerror}") from None
        else:
            # mkdir's mode is cut by the umask; a umask of 0277 would leave us
            # a directory we cannot write. 0700 is never wider than asked.
            os.chmod(path, 0o700)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise UsageError(f"no run is live: control directory {path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"control directory {path}: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        problem = "is a symlink"
    elif not stat.S_ISDIR(info.st_mode):
        problem = "is not a directory"
    elif info.st_uid != os.getuid():
        problem = f"belongs to uid {info.st_uid}, not to you (uid {os.getuid()})"
    elif info.st_mode & 0o077:
        problem = f"is open to others (mode {stat.S_IMODE(info.st_mode):04o}; chmod 700 it)"
    else:
        return
    raise UsageError(f"control directory {path} {problem}; refusing it")


def check_name(name: str) -> None:
    """A run name is a file name: letters, digits, ``.``, ``_`` and ``-``, at most
    64, not starting with ``.`` (hidden, and the temporary names start so)."""
    if not 1 <= len(name) <= MAX_NAME or name.startswith(".") or not _NAME_CHARS.issuperset(name):
        raise UsageError(
            f"invalid run name {name!r}: use 1 to {MAX_NAME} letters, digits, '.', '_' "
            "or '-', not starting with '.'")


def socket_path(directory: str, name: str) -> str:
    return os.path.join(directory, name + _SUFFIX)


# --- the server's end ------------------------------------------------------------------


class Listener:
    """A run's listening socket (non-blocking, close-on-exec) at `path`."""

    def __init__(self, sock: Any, path: str, identity: Tuple[int, int]) -> None:
        #: a `_socket.socket` until the server takes it over (`socket.socket`)
        self.sock = sock
        self.path = path
        #: (st_dev, st_ino) of the socket file we linked: `close` removes only that
        self._identity = identity

    def close(self) -> None:
        """Close the socket and remove its file, unless another run's has taken
        the name meanwhile (someone removed ours and a new run linked its own).
        Safe to call more than once."""
        self.sock.close()
        try:
            info = os.lstat(self.path)
            if (info.st_dev, info.st_ino) == self._identity:
                os.unlink(self.path)
        except OSError:
            pass  # gone already


def listen(directory: str, name: str) -> Listener:
    """Listen on ``directory/NAME.sock``; the directory is made if missing and
    checked (`check_dir`) first.

    A usage error when the name is taken by a live run or by something that is
    not a socket, or when the path does not fit a socket address."""
    check_name(name)
    check_dir(directory, create=True)
    final = socket_path(directory, name)
    # Private to this process: no other run uses our pid at the same time.
    temp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    # Left by a dead process that had our pid: the directory is ours, remove it.
    _unlink_quietly(temp)
    # Python's sockets are close-on-exec already: the jobs do not inherit it.
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            sock.bind(temp)
        except OSError as exc:
            raise UsageError(_bind_problem(final, exc)) from None
        try:
            # The directory is 0700, so nobody reaches the socket before this;
            # 0600 keeps it ours should the directory be opened up later.
            os.chmod(temp, 0o600)
            sock.listen(64)
            sock.setblocking(False)
            info = os.lstat(temp)
            _link(temp, final, directory, name)
        finally:
            _unlink_quietly(temp)
    except BaseException:
        sock.close()
        raise
    return Listener(sock, final, (info.st_dev, info.st_ino))


def _link(temp: str, final: str, directory: str, name: str) -> None:
    """Link `temp` to `final`; replace a stale socket there once."""
    for attempt in (1, 2):
        try:
            os.link(temp, final, follow_symlinks=False)
            return
        except FileExistsError:
            if attempt == 2:
                break
        except OSError as exc:
            raise UsageError(f"cannot create control socket {final}: {exc.strerror}") from None
        try:
            info = os.lstat(final)
        except FileNotFoundError:
            continue  # its run removed it just now: try again
        if not stat.S_ISSOCK(info.st_mode):
            raise UsageError(f"{final} exists and is not a socket; refusing to replace it")
        if _answers(final):
            raise _taken(directory, name)
        # Stale: its scheduler is gone. A run starting with the same name at
        # this very moment could have replaced it between the connect and here;
        # comparing the inode first keeps that window as small as it can be
        # (there is no "unlink if still this file").
        try:
            again = os.lstat(final)
            if (again.st_dev, again.st_ino) == (info.st_dev, info.st_ino):
                os.unlink(final)
        except FileNotFoundError:
            pass
    # Lost a race to another run of this name: it is live, or the retry is spent.
    raise _taken(directory, name)


def _taken(directory: str, name: str) -> UsageError:
    return UsageError(
        f"a run named {name} is already running ({socket_path(directory, name)} answers); "
        "give this one another --name")


def _answers(path: str) -> bool:
    """Whether a server accepts connections at `path` (refused: a stale socket)."""
    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        probe.settimeout(GREETING_TIMEOUT)
        probe.connect(path)
        return True
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        # A full backlog (EAGAIN) or a timeout: somebody is there, and a live
        # run is never taken over.
        return True
    finally:
        probe.close()


def _bind_problem(final: str, exc: OSError) -> str:
    if exc.errno == errno.ENAMETOOLONG or "too long" in str(exc):
        # sockaddr_un holds 108 bytes; the temporary name is the longest we bind.
        return (f"control socket path {final} is too long for a Unix socket; "
                "use a shorter --control-dir or --name")
    return f"cannot create control socket {final}: {exc.strerror or exc}"


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# --- the client's end ------------------------------------------------------------------


class RunInfo(Record):
    """A live run, from its greeting: its name, pid and version, and its socket."""

    __slots__ = ("name", "pid", "path", "version")

    def __init__(self, name: str, pid: int, path: str, version: Optional[str] = None) -> None:
        self.name = name
        self.pid = pid
        self.path = path
        self.version = version

    def describe(self) -> str:
        """``sweep pid 12``, as messages list runs."""
        return f"{self.name} pid {self.pid}"


def live_runs(directory: str) -> List[RunInfo]:
    """The runs whose server answers in `directory` (checked first), by name.

    Stale sockets (refused) and servers that do not greet within
    `GREETING_TIMEOUT` are skipped, and left alone: a stale one is replaced by
    the next run of its name; removing it here could remove the socket that
    such a run has just linked."""
    check_dir(directory, create=False)
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise UsageError(f"control directory {directory}: {exc.strerror}") from None
    runs = []
    for entry in names:
        if not entry.endswith(_SUFFIX) or entry.startswith("."):
            continue
        path = os.path.join(directory, entry)
        try:
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                continue
        except OSError:
            continue
        greeting = read_greeting(path, GREETING_TIMEOUT)
        if greeting is None:
            continue
        name, pid = greeting.get("name"), greeting.get("pid")
        if not isinstance(name, str) or not isinstance(pid, int):
            continue
        version = greeting.get("version")
        runs.append(RunInfo(name, pid, path, version if isinstance(version, str) else None))
    runs.sort(key=lambda run: (run.name, run.pid))
    return runs


def read_greeting(path: str, timeout: float) -> Optional[dict]:
    """The greeting of the server at `path`, or None when there is none (refused,
    no answer in time, not protocol 1, or a refusal line)."""
    import json
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        data = b""
        # One timeout for the whole greeting would need a deadline; a server
        # that trickles a byte a second is not one of ours, and MAX_GREETING
        # bounds it.
        while b"\n" not in data:
            chunk = sock.recv(4096)
            if not chunk or len(data) > MAX_GREETING:
                return None
            data += chunk
    except OSError:
        return None
    finally:
        sock.close()
    try:
        greeting = json.loads(data[: data.index(b"\n")])
    except ValueError:
        return None
    if not isinstance(greeting, dict) or greeting.get("sgs") != 1:
        return None
    return greeting
