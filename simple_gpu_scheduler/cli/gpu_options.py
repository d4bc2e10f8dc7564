"""The command line's GPU options, and what they resolve to before a run.

`add_gpu_arguments` declares the options about GPUs (discovery, busy limits,
JSON lines, memory packing, locks); `plan_gpus` turns them into a `GpuPlan`:
the GPU ids to schedule on, what is known of each, and the `GpuGate` that
watches them. ``--list-gpus`` is in `listing`.

The hardware is asked only when an option needs it: ``--gpus 0,1`` with plain
text input loads neither NVML nor ``nvidia-smi``, and then only the lock
module is imported.
"""

from __future__ import annotations

import argparse
import os

from ..errors import UsageError
from . import argtypes

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

    from ..gpus.busy import Limits
    from ..gpus.gate import GpuGate
    from ..model.devices import Backend, Device, Discovery
    from ..placement.pool import GpuPool
    from ..report.console import Console

NO_GPUS = "no GPUs found; pass --gpus"
#: By default a GPU on which processes we did not start hold more than this
#: fraction of the memory is busy (a colleague's job, another container).
DEFAULT_MAX_MEMORY = 0.10
BUSY_FLAGS = "--max-gpu-memory, --max-gpu-util and --only-idle"


def add_gpu_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of this module, in their own help section."""
    from ..gpus.locks import DEFAULT_LOCK_DIR, LOCK_DIR_VARIABLE

    group = parser.add_argument_group(
        "GPUs in use by others, per-job requirements and locks",
        "Without --gpus (or with --gpus all) the GPUs are found through NVML, else "
        "nvidia-smi, limited to CUDA_VISIBLE_DEVICES when that is set.")
    group.add_argument("--list-gpus", action="store_true",
                       help="print the GPUs found, their use and whether they are busy, and exit")
    group.add_argument(
        "--max-gpu-memory", type=argtypes.fraction_or_size, metavar="FRACTION|SIZE",
        help="a GPU on which other processes use more memory than this (0.1, 10%%, 4GiB) "
        "is busy: no job starts there until it falls below (default, whenever NVML or "
        "nvidia-smi answers: 10%%; 100%% turns the check off)")
    group.add_argument(
        "--max-gpu-util", type=argtypes.percent, metavar="PERCENT",
        help="a GPU used above this utilization is busy (judged while none of our "
        "jobs runs on it: utilization is one number for the whole GPU)")
    group.add_argument(
        "--only-idle", action="store_true",
        help="a GPU on which any process this scheduler did not start holds memory is busy")
    group.add_argument(
        "--poll", type=argtypes.interval, default=10.0, metavar="SECONDS",
        help="while a job waits for a busy or locked GPU, look again this often "
        "(default: %(default)g)")
    group.add_argument(
        "--input", choices=("text", "jsonl"), default="text",
        help="text: one shell command per line; jsonl: one JSON object per line with "
        "cmd and optional gpus, mem, on, name, priority, env, cwd, timeout, retries "
        "(default: %(default)s); a priority orders only the jobs already read (the "
        "scheduler reads a few commands ahead of what it runs), not the whole input")
    group.add_argument(
        "--gpu-memory", type=argtypes.size, metavar="SIZE",
        help="memory of each GPU that jobs' mem may add up to "
        "(default: the size NVML or nvidia-smi reports)")
    group.add_argument(
        "--backfill", action="store_true",
        help="when the next job must wait, later jobs that fit now may start first "
        "(default: first in first out, nothing overtakes a waiting job)")
    group.add_argument(
        "--lock-dir", metavar="DIR",
        help="directory of the per-GPU lock files that keep two schedulers off the same "
        f"GPU (default: ${LOCK_DIR_VARIABLE}, else {DEFAULT_LOCK_DIR})")
    group.add_argument("--no-lock", action="store_true",
                       help="take no GPU locks: other schedulers are not kept off our GPUs")


def parse_gpu_ids(values: Sequence[str]) -> Tuple[str, ...]:
    """``--gpus 0,1 2``, ``--gpus 0 1 2`` and ``--gpus 0-2`` all mean GPUs 0, 1 and 2.

    Ids are kept verbatim (UUIDs and MIG ids work); an empty or repeated id is
    an error, because it always means a typo. Numbers are compared as numbers:
    CUDA reads ``00`` as GPU 0, so ``0,00`` would put two jobs on one GPU.
    Whether a UUID names the same GPU as a number only the hardware can say
    (`same_gpu_error`, once it has answered). An argument that is an existing
    file (``--gpus 0,1 jobs.txt``: the option takes every word after it) is
    an error that says how to give a command file.
    """
    ids: List[str] = []
    numbers: Dict[int, str] = {}
    for value in values:
        for part in value.split(","):
            gpu_id = part.strip()
            if not gpu_id:
                raise UsageError(f"--gpus: empty GPU id in {value!r}")
            for one in _expand(gpu_id):
                if one in ids:
                    raise UsageError(f"--gpus: GPU id {one} is given twice")
                # isascii: "²".isdigit() is true, but CUDA (and int) read no such number.
                if one.isascii() and one.isdigit():
                    first = numbers.setdefault(int(one), one)
                    if first != one:
                        raise UsageError(f"--gpus: GPU ids {first} and {one} name the same GPU")
                ids.append(one)
    return tuple(ids)


def _expand(gpu_id: str) -> List[str]:
    """``3`` -> [3], ``0-3`` -> [0, 1, 2, 3]; a file name is refused."""
    low, dash, high = gpu_id.partition("-")
    if dash and low.isascii() and low.isdigit() and high.isascii() and high.isdigit():
        first, last = int(low), int(high)
        if first > last:
            raise UsageError(f"--gpus: the range {gpu_id} is empty (write it low-high)")
        return [str(n) for n in range(first, last + 1)]
    plain = gpu_id.isascii() and gpu_id.isdigit()
    if not plain and not gpu_id.startswith(("GPU-", "MIG-")) and os.path.exists(gpu_id):
        raise UsageError(
            f"--gpus: {gpu_id} is a file, not a GPU id; commands are read from stdin: "
            f"simple_gpu_scheduler --gpus ... < {gpu_id}")
    return [gpu_id]


def same_gpu_error(ids: Sequence[str], found: Discovery) -> Optional[UsageError]:
    """The usage error for two ids that the hardware says are one device
    (``0`` and ``GPU-<uuid of 0>``, a UUID and a prefix of it), or None."""
    from ..model.devices import same_device

    # Lost and left-out devices too: two ids of one of them are a typo as well.
    pair = same_device(ids, [*found.devices, *(d for d, _ in found.left_out)])
    if pair is None:
        return None
    first, second, device = pair
    what = f"MIG instance {device.uuid}" if device.is_mig else f"GPU {device.index} ({device.uuid})"
    return UsageError(f"--gpus: GPU ids {first} and {second} name the same {what}")


class GpuPlan:
    """What a run schedules on, and what is known about it."""

    def __init__(
        self, ids: Tuple[str, ...], jobs_per_gpu: Optional[int],
        memory: Optional[Dict[str, int]] = None, mig: FrozenSet[str] = frozenset(),
        aliases: Optional[Dict[str, str]] = None, gate: Optional[GpuGate] = None,
    ) -> None:
        self.ids = ids
        self.jobs_per_gpu = jobs_per_gpu
        #: GPU id -> bytes that jobs' `mem` may add up to
        self.memory: Dict[str, int] = memory or {}
        self.mig = mig
        #: other names (UUIDs) of GPU ids, for JSONL ``on``
        self.aliases: Dict[str, str] = aliases or {}
        self.gate = gate


def usage_error(message: str) -> Exception:
    return UsageError(message)


def busy_limits(args: argparse.Namespace) -> Optional["Limits"]:
    """The busy limits given, or None when none is (and the module is not loaded)."""
    if args.max_gpu_memory is None and args.max_gpu_util is None and not args.only_idle:
        return None
    from ..gpus.busy import Limits

    return Limits(memory=args.max_gpu_memory, util=args.max_gpu_util, only_idle=args.only_idle)


def limits_or_default(args: argparse.Namespace) -> "Limits":
    """The busy limits that apply whenever the GPUs can be asked: those given,
    else the safe default, `DEFAULT_MAX_MEMORY` of a GPU's memory held by
    processes we did not start (``--max-gpu-memory 100%`` turns it off)."""
    from ..gpus.busy import Limits, MemoryLimit

    given = busy_limits(args)
    if given is not None:
        return given
    return Limits(memory=MemoryLimit(fraction=DEFAULT_MAX_MEMORY))


def wants_all(values: Optional[Sequence[str]]) -> bool:
    """Whether ``--gpus`` asks for every GPU found: not given, or ``all``."""
    if not values:
        return True
    if any(part.strip() == "all" for value in values for part in value.split(",")):
        if len(values) != 1 or values[0].strip() != "all":
            raise usage_error("--gpus all cannot be combined with GPU ids")
        return True
    return False


def discover_all(console: "Console") -> Tuple["Backend", "Discovery", List["Device"]]:
    """Backend, discovery and the devices ``all`` means here (usage error if none)."""
    from ..gpus.discovery import open_backend
    from ..model.devices import select_visible

    backend, found = open_backend()
    if backend is None:
        raise usage_error(f"{NO_GPUS} ({found.error})")
    selection = select_visible(found.devices, [d for d, _ in found.left_out], os.environ)
    for device, why in found.left_out:
        console.line(f"gpu {device.index} left out: {why}")
    for note in (*found.notes, *selection.notes):
        console.line(note)
    if not selection.devices:
        where = " in CUDA_VISIBLE_DEVICES" if "CUDA_VISIBLE_DEVICES" in os.environ else ""
        raise usage_error(f"{NO_GPUS} (none usable{where}; {found.source} found "
                           f"{len(found.devices) + len(found.left_out)})")
    return backend, found, list(selection.devices)


def plan_gpus(args: argparse.Namespace, console: "Console") -> GpuPlan:
    """Resolve ``--gpus`` and the options above into a `GpuPlan`, or a usage error."""
    limits = busy_limits(args)
    devices: Dict[str, "Device"] = {}
    backend = None
    if wants_all(args.gpus):
        backend, found, usable = discover_all(console)
        devices = {d.id: d for d in usable}
        ids = tuple(devices)
        console.info(f"found {len(ids)} GPU(s) through {found.source}: {', '.join(ids)}")
    else:
        ids = parse_gpu_ids(args.gpus)
        # The hardware is always asked when it can answer: an id that names no
        # device is a mistake CUDA would not report (the job would see no GPU),
        # two ids may name one device, and the busy rule needs it.
        from ..gpus.presence import may_answer

        if limits is not None or may_answer():
            backend, devices = _resolve(ids, limits is not None, console)
    if backend is not None and limits is None:
        limits = limits_or_default(args)

    whole = [i for i in ids if not (i in devices and devices[i].is_mig)]
    if args.gpus_per_job > len(ids):
        raise usage_error(
            f"--gpus-per-job {args.gpus_per_job} is more than the {len(ids)} GPU(s) given")
    if 1 < args.gpus_per_job and args.gpus_per_job > len(whole):
        raise usage_error(
            f"--gpus-per-job {args.gpus_per_job}: only {len(whole)} whole GPU(s); MIG "
            "instances cannot be combined (CUDA gives a process one MIG instance)")

    memory: Dict[str, int] = {}
    for gpu_id in ids:
        size = args.gpu_memory or (devices[gpu_id].mem_total if gpu_id in devices else None)
        if size:
            memory[gpu_id] = size
    aliases: Dict[str, str] = {}
    for gpu_id, device in devices.items():
        aliases[device.uuid] = gpu_id
        if not device.is_mig:
            aliases[device.index] = gpu_id
        aliases[gpu_id] = gpu_id

    plan = GpuPlan(
        ids=ids, jobs_per_gpu=args.jobs_per_gpu, memory=memory,
        mig=frozenset(i for i, d in devices.items() if d.is_mig), aliases=aliases,
    )
    plan.gate = _gate(args, ids, devices, backend, limits, console)
    return plan


def resolve_given(
    ids: Sequence[str], console: "Console"
) -> Tuple["Backend", "Discovery", Dict[str, "Device"]]:
    """The hardware behind explicit ids, for ``--list-gpus``: a usage error
    when there is none, or when an id names no device or the same as another."""
    from ..gpus.discovery import open_backend

    backend, found = open_backend()
    if backend is None:
        raise usage_error(f"{NO_GPUS} ({found.error})")
    return backend, found, _devices_of(ids, found)


def _devices_of(ids: Sequence[str], found: "Discovery") -> Dict[str, "Device"]:
    from ..model.devices import resolve_ids

    duplicate = same_gpu_error(ids, found)
    if duplicate is not None:
        raise duplicate
    try:
        return resolve_ids(ids, found.devices)
    except ValueError as exc:
        raise usage_error(f"--gpus: {exc}") from None


def _resolve(
    ids: Sequence[str], required: bool, console: "Console"
) -> Tuple[Optional["Backend"], Dict[str, "Device"]]:
    """The hardware behind explicit ``--gpus`` ids. A usage error when busy
    checks need it; without hardware, ids are taken as given. When the
    hardware answers, an id that names no device is a usage error."""
    from ..gpus.discovery import open_backend

    backend, found = open_backend()
    if backend is None:
        if required:
            raise usage_error(
                f"{BUSY_FLAGS} need NVML (pip install \"simple_gpu_scheduler[nvml]\") or "
                f"nvidia-smi, and neither works here ({found.error})")
        return None, {}
    return backend, _devices_of(ids, found)


def _gate(
    args: argparse.Namespace, ids: Sequence[str], devices: Dict[str, "Device"],
    backend: Optional["Backend"], limits: Optional["Limits"], console: "Console",
) -> Optional["GpuGate"]:
    locks = None
    if not args.no_lock:
        from ..gpus.locks import GpuLocks, LockDirError, default_lock_dir, open_lock_dir

        path = str(args.lock_dir) if args.lock_dir is not None else default_lock_dir()
        try:
            locks = GpuLocks(open_lock_dir(path))
        except LockDirError as exc:
            raise usage_error(f"--lock-dir: {exc} (or pass --no-lock)") from None
    if locks is None and backend is None:
        return None
    from ..gpus.gate import GpuGate

    lock_keys = {gpu_id: _lock_key(gpu_id, devices) for gpu_id in ids}
    return GpuGate(
        devices=devices, backend=backend, limits=limits, locks=locks,
        lock_keys=lock_keys, poll=args.poll, say=console.say,
    )


def admitter(
    args: argparse.Namespace, plan: GpuPlan, pool: "GpuPool"
) -> "Callable[[Sequence[str]], None]":
    """``gpus add``: GPUs new to a running run, checked as ``--gpus`` ids are
    (an id that names no device, or the same device as one in the run, is
    refused; the busy rule and the lock apply from the next look on), then
    added to the pool and the gate. Raises ValueError with the reason."""

    def admit(given: "Sequence[str]") -> None:
        if getattr(args, "ray", None) is not None:
            raise ValueError("with --ray the run uses the cluster's GPUs: give it more by "
                             "starting another node (ray start --address ...)")
        try:
            ids = parse_gpu_ids(list(given))
        except UsageError as exc:
            raise ValueError(str(exc)) from None
        gate = plan.gate
        devices: Dict[str, "Device"] = {}
        if gate is not None and gate.backend is not None:
            from ..gpus.discovery import open_backend

            _, found = open_backend()
            try:
                devices = _devices_of([*pool.ids, *ids], found)
            except UsageError as exc:
                raise ValueError(str(exc).replace("--gpus: ", "")) from None
        for gpu_id in ids:
            device = devices.get(gpu_id)
            size = args.gpu_memory or (device.mem_total if device is not None else None)
            pool.add_gpu(gpu_id, memory=size or None,
                         mig=device is not None and device.is_mig)
            if size:
                plan.memory[gpu_id] = size
            if device is not None:
                plan.aliases[device.uuid] = gpu_id
                if not device.is_mig:
                    plan.aliases[device.index] = gpu_id
            plan.aliases[gpu_id] = gpu_id
            if gate is not None:
                if device is not None:
                    gate.devices[gpu_id] = device
                gate.lock_keys[gpu_id] = _lock_key(gpu_id, devices)
                gate.expire()  # look at it before it takes a job

    return admit


def _lock_key(gpu_id: str, devices: Dict[str, "Device"]) -> str:
    if gpu_id in devices:
        return devices[gpu_id].lock_key
    return str(int(gpu_id)) if gpu_id.isascii() and gpu_id.isdigit() else gpu_id
