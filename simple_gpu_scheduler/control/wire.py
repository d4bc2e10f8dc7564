"""Values on the wire: commands as text or base64, and added jobs from requests.

A command is bytes (a latin-1 file name reaches the shell unchanged); JSON
holds text. So a command that is valid UTF-8 travels as text, and one that is
not as base64 under a ``_b64`` key (docs/control.md).
"""

from __future__ import annotations

import base64
import binascii

from ..input.jsonl import parse_job, parse_spec
from ..input.lines import MAX_COMMAND_BYTES, RawCommand
from ..model.jobs import Job

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Any, Dict, FrozenSet, Mapping, Tuple

    from ..input.jsonl import Defaults


def command_field(command: bytes, key: str = "command") -> Dict[str, str]:
    """``{"command": text}``, or ``{"command_b64": ...}`` for bytes that are not UTF-8."""
    try:
        return {key: command.decode("utf-8")}
    except UnicodeDecodeError:
        return {key + "_b64": base64.b64encode(command).decode("ascii")}


def output_field(data: bytes) -> Dict[str, str]:
    """A chunk of output: ``{"text": ...}`` or ``{"b64": ...}``."""
    try:
        return {"text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(data).decode("ascii")}


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None


def job_from_spec(item: Any, n: int, defaults: Defaults, cwd: str, env: Mapping[str, str],
                  from_line: bool) -> Job:
    """The job one entry of an ``add`` request describes (invalid, with why,
    when a stdin line like it would be): a job object, or with `from_line` a
    JSON line as stdin's ``--input jsonl`` has them. It runs in `cwd` with
    `env` (the submitter's), plus its own ``env`` and a relative ``cwd``."""
    where = f"job {n}: "
    try:
        if from_line:
            if isinstance(item, dict) and set(item) == {"b64"}:
                text = _b64(item["b64"], "'b64'")
            elif isinstance(item, str):
                text = item.encode("utf-8", "surrogatepass")
            else:
                raise ValueError("a line must be a string (or {\"b64\": ...})")
            job = parse_job(0, RawCommand(text, line=n), defaults)
        else:
            if not isinstance(item, dict):
                raise ValueError("a job must be an object with the keys of a JSON line")
            spec = dict(item)
            raw = None
            if "cmd_b64" in spec:
                if "cmd" in spec:
                    raise ValueError("give 'cmd' or 'cmd_b64', not both")
                raw = _b64(spec.pop("cmd_b64"), "'cmd_b64'")
                spec["cmd"] = "x"  # checked below, as bytes
            job = parse_spec(0, spec, defaults, where)
            if raw is not None and not job.invalid:
                job.command = raw
                if b"\0" in raw:
                    job.invalid = f"{where}the command contains a NUL byte"
                elif not raw.strip():
                    job.invalid = f"{where}the command is empty"
    except ValueError as exc:
        return Job(id=0, command=b"", invalid=f"{where}{exc}")
    if not job.invalid and len(job.command) > MAX_COMMAND_BYTES:
        job.invalid = (f"{where}the command is {len(job.command)} bytes; a shell takes "
                       f"at most {MAX_COMMAND_BYTES}")
    if job.invalid:
        return job
    job.cwd = cwd if job.cwd is None else _joined(cwd, job.cwd)
    if job.env:
        whole = dict(env)
        whole.update(job.env)
        job.env = whole
    else:
        job.env = env  # shared by the jobs of one shell (`EnvCache`)
    job.whole_env = True
    return job


class EnvCache:
    """One dict per distinct submitter environment, shared by every job added
    from it: 100,000 jobs added from one shell hold one copy of its few KiB
    of environment, not 100,000."""

    #: distinct environments kept (a new one past this starts the cache anew)
    LIMIT = 256

    def __init__(self) -> None:
        self._envs: Dict[FrozenSet[Tuple[str, str]], Dict[str, str]] = {}

    def shared(self, env: Dict[str, str]) -> Dict[str, str]:
        key = frozenset(env.items())
        known = self._envs.get(key)
        if known is None:
            if len(self._envs) >= self.LIMIT:
                self._envs.clear()
            known = self._envs[key] = env
        return known


def _joined(base: str, path: str) -> str:
    import os.path

    return os.path.join(base, path)
