"""What each control request does: one handler per ``op`` (docs/control.md).

A handler checks its request's arguments (a wrong one is an error reply,
never an exception that reaches the engine), then reads the engine's state
(`views`) or changes it through `engine.steering`, and replies. The ops
that answer later (``wait``, ``log -f``) keep what they wait for on their
connection and are answered from the engine's events (`event`), which the
composition root hands here as well as to the console.
"""

from __future__ import annotations

import os

from .. import __version__
from ..engine.steering import Refused, require_job
from ..model import events as ev
from . import views
from .logs import LogSessions
from .wire import EnvCache, job_from_spec

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional

    from ..engine.loop import Loop
    from ..engine.steering import Steering
    from ..input.jsonl import Defaults
    from ..launch.keeper import OutputKeeper
    from ..launch.streams import OutputMode
    from .server import Connection

    Handler = Callable[[Connection, Dict[str, Any]], None]


#: ``ls`` rows made per turn of the engine's loop.
LS_BATCH = 2000


class BadRequest(Exception):
    """A request's argument is missing or of the wrong type."""


class Handlers:
    def __init__(self, loop: Loop, steering: Steering, name: str, defaults: Defaults,
                 output: OutputMode, keeper: Optional[OutputKeeper] = None) -> None:
        self.loop = loop
        self.steering = steering
        self.name = name
        self.defaults = defaults
        #: when the run started, as wall-clock time (the handlers are made later,
        #: at the first client)
        self.started = loop.wall() - (loop.clock() - loop.state.started_at)
        self.logs = LogSessions(loop, output, keeper)
        self._envs = EnvCache()
        #: connections waiting: connection -> ids still to end (None: the whole run)
        self._waits: Dict[Connection, Any] = {}
        self._ops: Dict[str, Handler] = {
            "status": self._status, "ls": self._ls, "add": self._add,
            "cancel": self._cancel, "kill": self._kill, "log": self._log,
            "pause": self._plain(lambda: steering.pause(True)),
            "unpause": self._plain(lambda: steering.pause(False)),
            "drain": self._plain(steering.drain), "stop": self._plain(steering.stop),
            "gpus": self._gpus, "move": self._move, "wait": self._wait,
        }

    # --- the server's side ----------------------------------------------------------

    def greeting(self) -> Dict[str, Any]:
        return {"sgs": 1, "pid": os.getpid(), "name": self.name, "version": __version__}

    def handle(self, connection: Connection, request: Dict[str, Any]) -> None:
        op = request.get("op")
        handler = self._ops.get(op) if isinstance(op, str) else None
        if handler is None:
            known = ", ".join(sorted(self._ops))
            connection.send(_error(f"unknown op {op!r} (ops: {known})"))
            return
        try:
            handler(connection, request)
        except BadRequest as exc:
            connection.send(_error(f"{op}: {exc}"))
        except Refused as exc:
            connection.send(_error(str(exc)))
        except Exception as exc:  # a bug of ours: it must cost the client, not the run
            if os.environ.get("SGS_DEBUG"):
                raise
            connection.send(_error(f"{op}: internal error: {type(exc).__name__}: {exc} "
                                   "(please report it)"))

    def closed(self, connection: Connection) -> None:
        self._waits.pop(connection, None)
        self.logs.closed(connection)

    # --- the engine's events --------------------------------------------------------

    def event(self, event: ev.Event) -> None:
        if isinstance(event, ev.JobDone):
            self._job_done(event)
        elif isinstance(event, ev.JobStarted):
            self.logs.started(event.job)
        elif isinstance(event, ev.RunEnded):
            self._run_ended()

    def _job_done(self, event: ev.JobDone) -> None:
        self.logs.done(event.job.id)
        for connection, waiting in list(self._waits.items()):
            if waiting is not None and event.job.id in waiting:
                waiting.discard(event.job.id)
                if not waiting:
                    self._answer_wait(connection)

    def _run_ended(self) -> None:
        self.logs.run_ended()
        for connection, waiting in list(self._waits.items()):
            if waiting is None:
                del self._waits[connection]  # first: sending may close it
                connection.send({
                    "end": True, "succeeded": self.loop.exit_status() == 0,
                    "counts": views.counts(self.loop.state)})

    # --- views ----------------------------------------------------------------------

    def _status(self, connection: Connection, request: Dict[str, Any]) -> None:
        connection.send({"ok": True, "run": views.run(self.loop, self.name, self.started)})

    def _ls(self, connection: Connection, request: Dict[str, Any]) -> None:
        """The rows are made `LS_BATCH` at a time, one batch a turn of the
        loop, and sent as one line at the end: listing 110,000 jobs takes
        half a second, and jobs that end meanwhile are seen to at once."""
        import json

        items = views.listing(self.loop)
        head = f'{{"ok":true,"forgotten":{self.loop.state.forgotten},"jobs":['.encode()
        parts: List[str] = []
        connection.hold()

        def step(start: int) -> None:
            if connection.closed:
                return
            end = min(len(items), start + LS_BATCH)
            now = self.loop.clock()
            rows = [views.job(item, now) for item in items[start:end]]
            if rows:
                parts.append(json.dumps(rows, separators=(",", ":"))[1:-1])  # without [ ]
            if end < len(items):
                self.loop.call_soon_threadsafe(connection.guard(lambda: step(end)))
                return
            connection.send_line(head + ",".join(parts).encode("ascii") + b"]}")
            connection.release()

        step(0)

    # --- jobs -----------------------------------------------------------------------

    def _add(self, connection: Connection, request: Dict[str, Any]) -> None:
        cwd = _string(request, "cwd")
        if not os.path.isabs(cwd) or not _os_string(cwd):
            raise BadRequest("'cwd' must be an absolute path (the submitter's directory)")
        env = request.get("env")
        if not isinstance(env, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and k and "=" not in k
                and _os_string(k) and _os_string(v) for k, v in env.items()):
            raise BadRequest("'env' must be an object of strings (the submitter's environment)")
        env = self._envs.shared(env)
        front = _flag(request, "front")
        specs = request.get("jobs")
        lines = request.get("lines")
        if (specs is None) == (lines is None):
            raise BadRequest("give 'jobs' (objects) or 'lines' (JSON lines), one of them")
        given = specs if specs is not None else lines
        if not isinstance(given, list) or not given:
            raise BadRequest("'jobs' or 'lines' must be a non-empty array")
        jobs = [job_from_spec(item, n, self.defaults, cwd, env, from_line=lines is not None)
                for n, item in enumerate(given, 1)]
        ids = self.steering.add(jobs, front)
        connection.send({"ok": True, "ids": ids})

    def _cancel(self, connection: Connection, request: Dict[str, Any]) -> None:
        connection.send({"ok": True, "ids": self.steering.cancel(_ids(request))})

    def _kill(self, connection: Connection, request: Dict[str, Any]) -> None:
        connection.send({"ok": True, "ids": self.steering.kill(_ids(request))})

    def _move(self, connection: Connection, request: Dict[str, Any]) -> None:
        job_id = _int(request, "id")
        to = request.get("to")
        if to not in ("front", "back", "before"):
            raise BadRequest("'to' must be \"front\", \"back\" or \"before\"")
        before = _int(request, "before") if to == "before" else None
        self.steering.move(job_id, to, before)
        connection.send({"ok": True})

    def _wait(self, connection: Connection, request: Dict[str, Any]) -> None:
        if request.get("ids") is None:
            self._waits[connection] = None
            connection.send({"ok": True})
            return
        ids = _ids(request)
        for job_id in ids:
            require_job(self.loop, job_id)
        records = self.loop.state.records
        forgotten = [i for i in ids if i not in records and views.finished_row(
            self.loop.state, i) is None]
        if forgotten:
            raise Refused(f"job {forgotten[0]} finished too long ago to be known here")
        connection.send({"ok": True})
        connection.state["wait_ids"] = ids
        self._waits[connection] = {i for i in ids if i in records}
        if not self._waits[connection]:
            self._answer_wait(connection)

    def _answer_wait(self, connection: Connection) -> None:
        self._waits.pop(connection, None)
        ids: List[int] = connection.state.pop("wait_ids", [])
        rows = [views.finished_row(self.loop.state, i) for i in ids]
        jobs = [{"id": r.id, "state": r.state, "exit": r.exit,
                 "signal": views.signal_field(r.signal)} for r in rows if r is not None]
        connection.send({"end": True, "jobs": jobs,
                         "succeeded": all(j["state"] == "succeeded" for j in jobs)})

    def _log(self, connection: Connection, request: Dict[str, Any]) -> None:
        every = _flag(request, "all")
        ids = [] if every else _ids(request)
        lines = request.get("lines")
        if lines is not None and (isinstance(lines, bool) or not isinstance(lines, int)
                                  or lines < 0):
            raise BadRequest("'lines' must be a whole number of lines, 0 or more")
        self.logs.open(connection, ids, every, _flag(request, "follow"), lines)

    # --- the run --------------------------------------------------------------------

    @staticmethod
    def _plain(action: Callable[[], None]) -> Handler:
        """The handler of an op without arguments (pause, drain, ...)."""
        def handle(connection: Connection, request: Dict[str, Any]) -> None:
            action()
            connection.send({"ok": True})
        return handle

    def _gpus(self, connection: Connection, request: Dict[str, Any]) -> None:
        action = request.get("action")
        ids = request.get("ids")
        if not isinstance(ids, list) or not ids or not all(
                isinstance(i, str) and i and i.isprintable() and _os_string(i) for i in ids):
            raise BadRequest("'ids' must be a non-empty array of GPU ids (printable strings)")
        if action == "remove":
            killed = self.steering.remove_gpus(ids, kill=_flag(request, "kill"))
            reply: Dict[str, Any] = {"ok": True, "killed": killed}
        elif action == "add":
            self.steering.add_gpus(ids)
            reply = {"ok": True}
        else:
            raise BadRequest("'action' must be \"remove\" or \"add\"")
        reply["gpus"] = views.gpus(self.loop)
        connection.send(reply)


def _os_string(text: str) -> bool:
    """Whether `text` can be a path, a variable or an argument: no NUL, and
    bytes behind it (a client's undecodable bytes arrive as surrogate escapes)."""
    if "\0" in text:
        return False
    try:
        os.fsencode(text)
    except UnicodeEncodeError:
        return False
    return True


def _error(text: str) -> Dict[str, Any]:
    return {"ok": False, "error": text}


def _ids(request: Dict[str, Any]) -> List[int]:
    ids = request.get("ids")
    if not isinstance(ids, list) or not ids or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise BadRequest("'ids' must be a non-empty array of job ids (whole numbers)")
    return ids


def _int(request: Dict[str, Any], key: str) -> int:
    value = request.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{key!r} must be a job id (a whole number)")
    return value


def _flag(request: Dict[str, Any], key: str) -> bool:
    value = request.get(key, False)
    if not isinstance(value, bool):
        raise BadRequest(f"{key!r} must be true or false")
    return value


def _string(request: Dict[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{key!r} must be a non-empty string")
    return value
