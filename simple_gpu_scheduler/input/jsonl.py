"""JSON lines input (``--input jsonl``): one JSON object per line, one job each.

Pure: `parse_job` turns one input line into a `Job`, or into a job marked
invalid with a message that names the input line and the problem, so that a
bad line fails on its own and the rest of the input runs. The rules are
strict on purpose: an unknown key is far more often a typo (``"gpu": 2``) than
something to ignore.
"""

from __future__ import annotations

import json
import math

from ..model.jobs import Job
from ..model.record import Record
from ..model.units import parse_duration, parse_size

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Any, Dict, List, Mapping, Optional, Tuple

    from .lines import RawCommand

#: Every key a line may have; only ``cmd`` is required.
KEYS = ("cmd", "gpus", "mem", "on", "name", "priority", "env", "cwd", "timeout", "retries")

#: Variables the scheduler sets for each job; a job may not set them itself.
RESERVED_ENV = ("CUDA_VISIBLE_DEVICES", "SGS_JOB_ID")


class SpecError(ValueError):
    """One problem with one line; the message is for the user."""


class Defaults(Record):
    """What a line gets for the keys it leaves out (the command-line options)."""

    __slots__ = ("gpus", "aliases", "timeout", "retries")

    def __init__(
        self, gpus: int = 1, aliases: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None, retries: int = 0,
    ) -> None:
        self.gpus = gpus
        #: Other names of GPU ids for ``on`` (a UUID for the index "0", ...).
        self.aliases: Mapping[str, str] = {} if aliases is None else aliases
        #: ``--timeout`` and ``--retries``, for lines without ``timeout``/``retries``
        self.timeout = timeout
        self.retries = retries


#: The defaults without command-line options; built once, not per line.
NO_OPTIONS = Defaults()


def parse_job(seq: int, raw: RawCommand, defaults: Defaults = NO_OPTIONS) -> Job:
    """The job that input line `raw` describes; invalid (with why) if it is wrong."""
    where = f"input line {raw.line}" if raw.line else f"command {seq}"
    if raw.invalid:
        return Job(id=seq, command=raw.text, invalid=f"{where}: {raw.invalid}")
    try:
        return _build(seq, _decode(raw.text), defaults)
    except SpecError as exc:
        return Job(id=seq, command=raw.text, invalid=f"{where}: {exc}")


def parse_spec(seq: int, spec: Dict[str, Any], defaults: Defaults = NO_OPTIONS,
               where: str = "") -> Job:
    """The job a decoded JSON line (a control client's ``add``) describes,
    with the checks of `parse_job`; invalid (with why) if it is wrong."""
    try:
        return _build(seq, spec, defaults)
    except SpecError as exc:
        return Job(id=seq, command=b"", invalid=f"{where}{exc}")


def _decode(text: bytes) -> Dict[str, Any]:
    def no_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
        result: Dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise SpecError(f"key {key!r} is given twice")
            result[key] = value
        return result

    try:
        value = json.loads(text, object_pairs_hook=no_duplicates)
    except UnicodeDecodeError:
        raise SpecError("the line is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise SpecError(f"invalid JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise SpecError("invalid JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise SpecError(f"expected a JSON object, got {_kind(value)}")
    return value


def _build(seq: int, spec: Dict[str, Any], defaults: Defaults) -> Job:
    unknown = [k for k in spec if k not in KEYS]
    if unknown:
        raise SpecError(f"unknown key {unknown[0]!r} (keys: {', '.join(KEYS)})")
    if "cmd" not in spec:
        raise SpecError("key 'cmd' is missing")
    job = Job(
        id=seq, command=_command(spec["cmd"]), gpus=defaults.gpus,
        timeout=defaults.timeout, retries=defaults.retries,
    )
    if "gpus" in spec:
        job.gpus = _integer(spec, "gpus", minimum=1)
    if "mem" in spec:
        job.mem = _memory(spec["mem"])
    if "on" in spec:
        job.on = _gpu_ids(spec["on"], defaults.aliases)
    if "name" in spec:
        job.name = _string(spec, "name")
    if "priority" in spec:
        job.priority = _integer(spec, "priority")
    if "env" in spec:
        job.env = _environment(spec["env"])
    if "cwd" in spec:
        job.cwd = _string(spec, "cwd")
    if "timeout" in spec:
        job.timeout = _timeout(spec["timeout"])
    if "retries" in spec:
        job.retries = _integer(spec, "retries", minimum=0)
    return job


def _kind(value: Any) -> str:
    """A JSON type name for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _encode(value: str, what: str) -> bytes:
    if "\0" in value:
        raise SpecError(f"{what} contains a NUL character")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise SpecError(f"{what} is not valid Unicode (a lone surrogate)") from None


def _command(value: Any) -> bytes:
    if not isinstance(value, str):
        raise SpecError(f"'cmd' must be a string, got {_kind(value)}")
    if not value.strip():
        raise SpecError("'cmd' is empty")
    return _encode(value, "'cmd'")


def _string(spec: Dict[str, Any], key: str) -> str:
    value = spec[key]
    if not isinstance(value, str) or not value:
        raise SpecError(f"{key!r} must be a non-empty string, got {_kind(value)}")
    _encode(value, repr(key))
    return value


def _integer(spec: Dict[str, Any], key: str, minimum: Optional[int] = None) -> int:
    value = spec[key]
    # bool is an int in Python; `true` is never meant as 1 here.
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{key!r} must be a whole number, got {_kind(value)}")
    if minimum is not None and value < minimum:
        raise SpecError(f"{key!r} must be at least {minimum}, got {value}")
    return value


def _memory(value: Any) -> int:
    if isinstance(value, str):
        try:
            size = parse_size(value)
        except ValueError as exc:
            raise SpecError(f"'mem': {exc}") from None
    elif isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        raise SpecError(f"'mem' must be a size such as \"12GiB\" or a number of bytes, "
                        f"got {_kind(value)}")
    if size <= 0:
        raise SpecError("'mem' must be more than 0")
    return size


def _gpu_ids(value: Any, aliases: Mapping[str, str]) -> Tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise SpecError(f"'on' must be a non-empty array of GPU ids, got {_kind(value)}")
    ids: List[str] = []
    for item in value:
        # GPU indices are naturally written as numbers: [0, 1].
        if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            item = str(item)
        if not isinstance(item, str) or not item.strip():
            raise SpecError(f"'on' must hold GPU ids (strings or indices), got {_kind(item)}")
        gpu_id = aliases.get(item.strip(), item.strip())
        if gpu_id not in ids:
            ids.append(gpu_id)
    return tuple(ids)


def _environment(value: Any) -> Dict[str, str]:
    if not isinstance(value, dict):
        raise SpecError(f"'env' must be an object of strings, got {_kind(value)}")
    env: Dict[str, str] = {}
    for key, item in value.items():
        if not key or "=" in key:
            raise SpecError(f"'env' has an invalid variable name {key!r}")
        if key in RESERVED_ENV:
            raise SpecError(f"'env' may not set {key}: the scheduler sets it")
        if not isinstance(item, str):
            raise SpecError(f"'env' value of {key} must be a string, got {_kind(item)}")
        _encode(key, "'env'")
        _encode(item, f"'env' value of {key}")
        env[key] = item
    return env


def _timeout(value: Any) -> float:
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise SpecError(f"'timeout': {exc}") from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value > 0 and not math.isinf(value):
            return float(value)
        raise SpecError(f"'timeout' must be more than 0 seconds, got {value}")
    raise SpecError(f"'timeout' must be seconds or a duration such as \"15m\", got {_kind(value)}")
