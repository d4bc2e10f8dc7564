"""The control socket's server side: connections, framing, who may talk.

A run's listening socket (`paths.listen`) and every accepted connection are
non-blocking file descriptors in the engine's own ``poll`` (`add_reader`,
`add_writer`): the server has no thread, and a client that says nothing,
sends half a line or stops reading holds up nothing but itself.

- **Who.** ``SO_PEERCRED`` is read as a connection is accepted; a peer of
  another uid gets one refusal line and is closed before anything it sent is
  read.
- **Framing.** One JSON object per line. A line over `MAX_REQUEST` bytes gets
  an error reply and the connection is closed (the rest of the line is not
  worth reading). A line that is not a JSON object gets an error reply.
- **Back-pressure.** What a client does not read waits in its connection's
  buffer, written as the socket takes it; past `MAX_PENDING` bytes the
  client is dropped, so a stuck ``log -f`` cannot make the run hold its
  output in memory.

What a request means is not decided here: each line goes to the `Handlers`
(`control.handlers`), which answer through `Connection.send`.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional

    from ..launch.base import Reactor
    from .handlers import Handlers
    from .paths import Listener

#: The longest request line, in bytes.
MAX_REQUEST = 1024 * 1024
#: Bytes a client may leave unread before it is dropped.
MAX_PENDING = 64 * 1024 * 1024
#: Bytes read from a client at once.
READ = 64 * 1024
#: Clients connected at once; more are refused with a reply (descriptors are
#: what the jobs' pipes and log files need).
MAX_CONNECTIONS = 128
#: Seconds to wait before accepting again when we ran out of descriptors.
ACCEPT_PAUSE = 0.5
#: ``struct ucred``: pid, uid, gid.
UCRED = struct.Struct("3i")


def encode(message: Dict[str, Any]) -> bytes:
    """`message` as a line without its newline. ASCII JSON: a lone surrogate
    (an id or a path a client sent us) travels as its ``\\u`` escape, so that
    every reply is valid UTF-8 whatever it holds."""
    return json.dumps(message, separators=(",", ":")).encode("ascii")


class Connection:
    """One client."""

    def __init__(self, server: ControlServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self._in = bytearray()
        self._out = bytearray()
        self._writing = False
        self._held = False
        self.closed = False
        #: close once what is pending has been written
        self._closing = False
        #: what the handlers keep for this connection (a wait, a log follow)
        self.state: Dict[str, Any] = {}
        #: called (on the engine's thread) once this much is left to write
        self.on_drained: Optional[Callable[[], None]] = None

    @property
    def pending(self) -> int:
        return len(self._out)

    def send(self, message: Dict[str, Any]) -> None:
        self.send_line(encode(message))

    def send_line(self, line: bytes) -> None:
        """One line already encoded (ASCII JSON, without its newline)."""
        if self.closed:
            return
        if len(self._out) > MAX_PENDING:
            # It has not read what waits already: drop it rather than hold
            # more. (One long reply, an `ls` of a million jobs, is not that.)
            self.close()
            return
        self._out += line
        self._out += b"\n"
        self._flush()

    def finish(self) -> None:
        """Close once everything sent so far is written."""
        self._closing = True
        self._flush()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        reactor = self.server.reactor
        reactor.remove_reader(self.fd)
        if self._writing:
            reactor.remove_writer(self.fd)
        self.sock.close()
        self.server.forget(self)

    def flush_blocking(self, timeout: float) -> None:
        """At the run's end: write what is pending, waiting at most `timeout`."""
        if self.closed or not self._out:
            return
        try:
            self.sock.settimeout(timeout)
            self.sock.sendall(bytes(self._out))
            self._out.clear()
        except OSError:
            pass

    # --- the engine's callbacks ---------------------------------------------------

    def readable(self) -> None:
        try:
            data = self.sock.recv(READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()  # the client is gone (or sent all it will)
            return
        self._in += data
        self._take_requests()

    def hold(self) -> None:
        """A reply is being made over several turns (`ls`): read nothing more
        from this client, and take none of its requests, until `release`. One
        request in flight per client: a thousand pipelined `ls` cost one at a
        time, and replies keep their order."""
        if not self._held and not self.closed:
            self._held = True
            self.server.reactor.remove_reader(self.fd)

    def release(self) -> None:
        if self._held and not self.closed:
            self._held = False
            self.server.reactor.add_reader(self.fd, self.guard(self.readable))
            self._take_requests()

    def guard(self, callback: Callable[[], None]) -> Callable[[], None]:
        """`callback` for the engine's loop: a bug in it costs this client (its
        connection closes), never the run."""
        def guarded() -> None:
            try:
                callback()
            except Exception:
                if os.environ.get("SGS_DEBUG"):
                    raise
                self.close()
        return guarded

    def _take_requests(self) -> None:
        while not self.closed and not self._closing and not self._held:
            end = self._in.find(b"\n")
            if end < 0:
                if len(self._in) > MAX_REQUEST:
                    self._refuse_oversized()
                return
            if end > MAX_REQUEST:
                self._refuse_oversized()
                return
            line = bytes(self._in[:end])
            del self._in[: end + 1]
            self._request(line)

    def writable(self) -> None:
        self._flush()

    # --- inside ----------------------------------------------------------------------

    def _request(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            request = json.loads(line)
        except (UnicodeDecodeError, ValueError, RecursionError):
            self.send({"ok": False, "error": "the request is not a JSON object on one line"})
            return
        if not isinstance(request, dict):
            self.send({"ok": False, "error": "the request is not a JSON object"})
            return
        self.server.handlers.handle(self, request)

    def _refuse_oversized(self) -> None:
        self._in.clear()
        self.send({"ok": False, "error": f"a request is over {MAX_REQUEST} bytes; "
                   "closing the connection"})
        self.finish()

    def _flush(self) -> None:
        if self.closed:
            return
        if self._out:
            try:
                sent = self.sock.send(self._out)
                del self._out[:sent]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self.close()
                return
        want = bool(self._out)
        if want != self._writing:
            self._writing = want
            if want:
                self.server.reactor.add_writer(self.fd, self.guard(self.writable))
            else:
                self.server.reactor.remove_writer(self.fd)
        if not self._out:
            if self._closing:
                self.close()
            elif self.on_drained is not None:
                self.on_drained()


class ControlServer:
    def __init__(self, listener: Listener, reactor: Reactor, handlers: Handlers) -> None:
        self.listener = listener
        self.reactor = reactor
        self.handlers = handlers
        self.connections: Dict[int, Connection] = {}
        self._uid = os.getuid()
        if not isinstance(listener.sock, socket.socket):
            # Bound with `_socket` (cheap at start-up); `socket`'s from here on.
            listener.sock = socket.socket(fileno=listener.sock.detach())
            listener.sock.setblocking(False)
        reactor.add_reader(listener.sock.fileno(), self.accept)

    def accept(self) -> None:
        for _ in range(64):  # a burst of clients: take some, come back next turn
            try:
                sock, _ = self.listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: the socket stays readable, so look
                    # again in a while rather than spin; clients wait in the backlog.
                    self._pause_accepting()
                    return
                continue  # the client went away before we took it (ECONNABORTED)
            sock.setblocking(False)
            refusal = None
            if not self._same_user(sock):
                refusal = "this scheduler belongs to another user; refused"
            elif len(self.connections) >= MAX_CONNECTIONS:
                # Each client holds a descriptor; the jobs need theirs more.
                refusal = f"{MAX_CONNECTIONS} clients are connected already; try again later"
            if refusal is not None:
                try:
                    sock.send(encode({"ok": False, "error": refusal}) + b"\n")
                except OSError:
                    pass
                sock.close()
                continue
            connection = Connection(self, sock)
            self.connections[connection.fd] = connection
            self.reactor.add_reader(connection.fd, connection.guard(connection.readable))
            connection.send(self.handlers.greeting())

    def _pause_accepting(self) -> None:
        fd = self.listener.sock.fileno()
        self.reactor.remove_reader(fd)

        def again() -> None:
            if self.listener.sock.fileno() == fd:  # not closed meanwhile
                self.reactor.add_reader(fd, self.accept)

        self.reactor.call_at(self.reactor.time() + ACCEPT_PAUSE, again)

    def _same_user(self, sock: socket.socket) -> bool:
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size)
        except OSError:
            return False
        _, uid, _ = UCRED.unpack(creds)
        return uid == self._uid

    def forget(self, connection: Connection) -> None:
        self.connections.pop(connection.fd, None)
        self.handlers.closed(connection)

    def all(self) -> List[Connection]:
        return list(self.connections.values())

    def close(self, patience: float = 1.0) -> None:
        """The run ends: what clients are owed is written (for `patience`
        seconds in all, so that stuck clients cannot hold up the exit), then
        every connection and the socket go."""
        import time

        self.reactor.remove_reader(self.listener.sock.fileno())
        deadline = time.monotonic() + patience
        for connection in self.all():
            connection.flush_blocking(max(0.01, deadline - time.monotonic()))
            connection.close()
        self.listener.close()
