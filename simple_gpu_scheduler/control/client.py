"""The client's end of the control socket: one blocking connection to a run.

The verbs (`cli.verbs`) open a `Connection`, send requests and read replies,
one JSON object a line (docs/control.md). Blocking, with a timeout, is right
here: a client talks to one run and has nothing else to do meanwhile, and the
timeout keeps a run that stopped answering from hanging ``watch ... status``.
Nothing here imports the engine, launchers, GPUs or reports: a client verb
starts in the time of a bare interpreter.
"""

from __future__ import annotations

import json
import socket

from ..errors import UsageError
from .paths import live_runs

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Any, Dict, Iterator, List, Optional

    from .paths import RunInfo

#: The protocol version this client speaks (the greeting's ``sgs``).
PROTOCOL = 1
#: Bytes asked of each recv: large, since an ``ls`` of 100,000 jobs is tens of MB.
RECV_SIZE = 1 << 20
#: The longest reply line accepted. Far above any real reply, it only keeps a
#: peer that never sends a newline from filling our memory.
MAX_LINE = 1 << 30


class ControlError(Exception):
    """The connection to a run failed or broke; the message is for the user."""


class Connection:
    """A connection to one run's control socket, after its greeting."""

    def __init__(self, sock: socket.socket, path: str) -> None:
        self._sock = sock
        self.path = path
        self._buffer = bytearray()
        #: Where the next search for a newline starts: what is before it holds
        #: none, so a long line is scanned once, not once per recv.
        self._scanned = 0
        self.greeting: Dict[str, Any] = {}

    @classmethod
    def open(cls, path: str, timeout: Optional[float] = 5.0) -> Connection:
        """Connect to the socket at `path` and read its greeting. `timeout`
        bounds each wait for the run (None: wait for ever)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn = cls(sock, path)
        try:
            sock.settimeout(timeout)
            try:
                sock.connect(path)
            except FileNotFoundError:
                raise ControlError(f"no run is live at {path}") from None
            except ConnectionRefusedError:
                raise ControlError(f"the run of {path} has ended (its socket is stale)") from None
            except socket.timeout:
                raise ControlError(f"the run at {path} does not answer") from None
            except OSError as exc:
                raise ControlError(f"cannot connect to {path}: {exc.strerror or exc}") from None
            greeting = conn._read(eof="the run closed the connection before it greeted us")
            if greeting.get("ok") is False:
                # How a server refuses a peer of another uid, before any request.
                raise ControlError(str(greeting.get("error") or f"{path} refused the connection"))
            if greeting.get("sgs") != PROTOCOL:
                raise ControlError(
                    f"{path} speaks control protocol {greeting.get('sgs')!r}, not {PROTOCOL} "
                    "(a different version of simple_gpu_scheduler?)")
        except BaseException:
            sock.close()
            raise
        conn.greeting = greeting
        return conn

    @property
    def name(self) -> str:
        return str(self.greeting.get("name"))

    @property
    def pid(self) -> int:
        pid = self.greeting.get("pid")
        return pid if isinstance(pid, int) else 0

    def settimeout(self, timeout: Optional[float]) -> None:
        """None for the waits that may last long (``wait``, ``log -f``)."""
        self._sock.settimeout(timeout)

    def request(self, obj: Dict[str, Any]) -> Dict[str, Any]:
        """Send one request and return its reply (``ok`` true or false)."""
        # ensure_ascii (the default): an environment variable that is not UTF-8
        # reaches us as a string with surrogate escapes, which UTF-8 cannot
        # encode; as a \\udcXX escape it travels, and decodes back to the same
        # string, which the server's os.fsencode turns into the same bytes.
        data = json.dumps(obj, separators=(",", ":")).encode("ascii") + b"\n"
        try:
            self._sock.sendall(data)
        except socket.timeout:
            raise ControlError("the run does not read our request") from None
        except OSError as exc:
            # The run may have answered before it closed (a request it would
            # not read, over 1 MiB): that answer says more than EPIPE does.
            try:
                return self._read(eof="")
            except (ControlError, OSError):
                raise ControlError(f"the run ended ({exc.strerror or exc})") from None
        return self._read(eof="the run ended before it answered")

    def replies(self) -> Iterator[Dict[str, Any]]:
        """The further lines of a streaming op, up to and with ``"end": true``."""
        while True:
            reply = self._read(eof="the run ended before it was done")
            yield reply
            if reply.get("end") is True:
                return

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self, eof: str) -> Dict[str, Any]:
        line = self._line(eof)
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            raise ControlError(f"{self.path} sent a line that is not a JSON object")
        return obj

    def _line(self, eof: str) -> bytes:
        buffer = self._buffer
        while True:
            end = buffer.find(b"\n", self._scanned)
            if end >= 0:
                line = bytes(buffer[:end])
                del buffer[: end + 1]  # cheap: a bytearray drops its head in place
                self._scanned = 0
                return line
            self._scanned = len(buffer)
            if len(buffer) > MAX_LINE:
                raise ControlError(f"{self.path} sent a line over {MAX_LINE >> 20} MiB")
            try:
                chunk = self._sock.recv(RECV_SIZE)
            except socket.timeout:
                raise ControlError("the run did not answer in time") from None
            except OSError as exc:
                raise ControlError(f"the connection to the run broke: {exc.strerror or exc}") \
                    from None
            if not chunk:
                raise ControlError(eof)
            buffer += chunk


def find_run(directory: str, run: Optional[str]) -> RunInfo:
    """The live run in `directory` that `run` names (a name, or a pid when it
    is all digits), or the only live run when `run` is None; a `UsageError`
    that lists the live runs otherwise."""
    runs = live_runs(directory)
    if run is not None:
        for found in runs:
            if found.name == run:
                return found
        if run.isdigit():
            for found in runs:
                if found.pid == int(run):
                    return found
        raise UsageError(f"no run named {run} is live in {directory}" + _listed(runs, "; live: "))
    if len(runs) == 1:
        return runs[0]
    if not runs:
        raise UsageError(f"no run of yours is live in {directory}")
    raise UsageError(
        f"{len(runs)} runs are live ({_listed(runs)}): pick one with --run NAME|PID")


def _listed(runs: List[RunInfo], lead: str = "") -> str:
    if not runs:
        return ""
    return lead + ", ".join(run.describe() for run in runs)
