"""The control socket on a run, at almost no start-up cost.

A run binds its socket before the first job (clients can find it at once),
but the server itself (JSON, the handlers, the views) is imported and built
only when the first client connects: a run nobody steers pays for a bind
and a link, not for the modules. Until then the run's events need not reach
the handlers either: what they answer later (``ls``, ``wait`` for a job that
is done) is read from the engine's state.
"""

from __future__ import annotations

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Callable, Optional

    from ..engine.loop import Loop
    from ..model.events import Event
    from .handlers import Handlers
    from .paths import Listener
    from .server import ControlServer


class Control:
    def __init__(self, listener: Listener, loop: Loop,
                 make_handlers: Callable[[], Handlers],
                 say: Callable[[str], None] = lambda text: None) -> None:
        self.listener = listener
        #: tells the user the control socket failed (the run goes on without it)
        self._say = say
        self._loop = loop
        self._make_handlers = make_handlers
        self.handlers: Optional[Handlers] = None
        self.server: Optional[ControlServer] = None
        self._fd = listener.sock.fileno()
        loop.add_reader(self._fd, self._first_client)

    def _first_client(self) -> None:
        self._loop.remove_reader(self._fd)
        try:
            from .server import ControlServer

            self.handlers = self._make_handlers()
            self.server = ControlServer(self.listener, self._loop, self.handlers)
            self.server.accept()
        except Exception as exc:
            # Say, a package upgraded under a long run: its modules no longer
            # load. The jobs matter more than the socket: it goes, they go on.
            import os

            if os.environ.get("SGS_DEBUG"):
                raise
            self.handlers = self.server = None
            self.listener.close()
            self._say(f"the control socket failed and is closed ({type(exc).__name__}: "
                      f"{exc}); the run goes on")

    def event(self, event: Event) -> None:
        if self.handlers is None:
            return
        try:
            self.handlers.event(event)
        except Exception:
            # A bug in answering clients must not stop the jobs: the run goes
            # on, and the clients waiting see their connections close.
            import os

            if os.environ.get("SGS_DEBUG"):
                raise
            if self.server is not None:
                for connection in self.server.all():
                    connection.close()

    def close(self) -> None:
        """The run ends: answer what is owed, remove the socket."""
        if self.server is not None:
            self.server.close()
        else:
            self.listener.close()
