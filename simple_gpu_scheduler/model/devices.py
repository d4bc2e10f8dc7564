"""What a GPU is to the scheduler, and the pure decisions about which to use.

A `Device` is one schedulable device (a whole GPU or a MIG instance), a `Usage`
what it uses at one moment, a `Discovery` what a backend found; the backends
that ask the hardware live in `discovery`. The decisions made from their
answers are pure functions here (`select_visible`, `resolve_ids`), tested
without hardware.

A device's ``id`` is what a job gets in ``CUDA_VISIBLE_DEVICES``: the NVML
index (PCI bus order, which jobs use because the launcher sets
``CUDA_DEVICE_ORDER=PCI_BUS_ID``) for a whole GPU, the MIG UUID for a MIG
instance (CUDA gives a process one MIG instance, named by UUID).
"""

from __future__ import annotations

from .record import Record

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Dict, List, Mapping, Optional, Protocol, Sequence, Tuple


class Device(Record):
    """One schedulable device: a whole GPU or one MIG instance."""

    __slots__ = (
        "id", "index", "uuid", "name", "mem_total", "mem_used", "util", "mig_parent",
        "compute_mode", "lost",
    )

    def __init__(
        self,
        id: str,
        index: str,
        uuid: str,
        name: str,
        mem_total: Optional[int] = None,
        mem_used: Optional[int] = None,
        util: Optional[int] = None,
        mig_parent: Optional[str] = None,
        compute_mode: str = "default",
        lost: bool = False,
    ) -> None:
        #: What jobs get in CUDA_VISIBLE_DEVICES: "0", or "MIG-…" for a MIG instance.
        self.id = id
        #: NVML's index: "2" for a GPU, "2:1" for MIG instance 1 of GPU 2.
        self.index = index
        self.uuid = uuid
        self.name = name
        self.mem_total = mem_total
        self.mem_used = mem_used
        self.util = util
        #: Index of the GPU this MIG instance belongs to; None for a whole GPU.
        self.mig_parent = mig_parent
        #: "default", "exclusive_process", "prohibited" or "unknown".
        self.compute_mode = compute_mode
        self.lost = lost

    @property
    def is_mig(self) -> bool:
        return self.mig_parent is not None

    @property
    def lock_key(self) -> str:
        """The name two schedulers agree on: the PCI-order index, or the MIG UUID."""
        return self.uuid if self.is_mig else self.index


class GpuProcess(Record):
    """A compute process NVML or nvidia-smi sees on a device."""

    __slots__ = ("pid", "used")

    def __init__(self, pid: int, used: Optional[int] = None) -> None:
        self.pid = pid
        #: Bytes of GPU memory it holds, when the driver says.
        self.used = used


class Usage(Record):
    """One device's usage at one moment; None where it cannot be measured."""

    __slots__ = ("mem_total", "mem_used", "util", "processes", "lost")

    def __init__(
        self,
        mem_total: Optional[int] = None,
        mem_used: Optional[int] = None,
        util: Optional[int] = None,
        processes: Optional[Tuple[GpuProcess, ...]] = None,
        lost: Optional[str] = None,
    ) -> None:
        self.mem_total = mem_total
        self.mem_used = mem_used
        self.util = util
        self.processes = processes
        #: Why the device cannot be used any more (NVML: "GPU is lost"), or None.
        self.lost = lost


class Discovery(Record):
    """What a backend found: usable devices, and those left out with the reason."""

    __slots__ = ("source", "devices", "left_out", "error", "notes")

    def __init__(
        self,
        source: str,
        devices: Tuple[Device, ...] = (),
        left_out: Tuple[Tuple[Device, str], ...] = (),
        error: Optional[str] = None,
        notes: Tuple[str, ...] = (),
    ) -> None:
        self.source = source
        self.devices = devices
        self.left_out = left_out
        #: Why nothing could be asked at all, or None.
        self.error = error
        self.notes = notes


if TYPE_CHECKING:
    # A protocol for the checker only: the backends and the tests' fakes match
    # it by shape, and at run time nothing needs the class (nor `typing`).
    class Backend(Protocol):
        """What the scheduler needs from a backend (`NvmlBackend`, `SmiBackend`)."""

        source: str

        def discover(self) -> Discovery: ...

        def sample(self, devices: Sequence[Device]) -> Dict[str, Usage]: ...


# --- pure decisions -------------------------------------------------------------


class Selection(Record):
    """The devices ``--gpus all`` means, and notes for the user about the choice."""

    __slots__ = ("devices", "notes")

    def __init__(self, devices: Tuple[Device, ...], notes: Tuple[str, ...] = ()) -> None:
        self.devices = devices
        self.notes = notes


def _match(entry: str, devices: Sequence[Device]) -> List[Device]:
    """The devices one CUDA_VISIBLE_DEVICES entry names (empty: none, i.e. invalid).

    As in CUDA: a number is a GPU index, ``GPU-…`` and ``MIG-…`` are UUIDs or
    unique prefixes of one. A GPU split into MIG instances stands for its
    instances, the parts of it that can be scheduled.
    """
    if entry.isdigit():
        index = str(int(entry))
        whole = [d for d in devices if d.index == index and not d.is_mig]
        return whole or [d for d in devices if d.mig_parent == index]
    if entry.startswith(("GPU-", "MIG-")):
        hits = [d for d in devices if d.uuid.startswith(entry)]
        if len({d.uuid for d in hits}) > 1 and not any(d.uuid == entry for d in hits):
            return []  # an ambiguous prefix is an invalid entry for CUDA too
        return hits
    return []


def select_visible(
    devices: Sequence[Device], left_out: Sequence[Device], env: Mapping[str, str]
) -> Selection:
    """The devices ``--gpus all`` means in an environment; with the ids jobs get.

    Without ``CUDA_VISIBLE_DEVICES`` that is every usable device. With it, only
    the devices it names, in its order; like CUDA, reading stops at the first
    entry that names no device. Numbers are read in PCI bus order, the order
    jobs run with; when the scheduler itself runs in another order and the
    GPUs differ (so the orders can differ), a note says so.

    When ``CUDA_DEVICE_ORDER`` is set to something else than ``PCI_BUS_ID``,
    jobs would read an index in that order, so whole GPUs are given by UUID.
    """
    notes: List[str] = []
    chosen: List[Device] = list(devices)
    visible = env.get("CUDA_VISIBLE_DEVICES")
    order = env.get("CUDA_DEVICE_ORDER")
    if visible is not None:
        everything = [*devices, *left_out]
        chosen = []
        numbers = False
        for raw in visible.split(","):
            entry = raw.strip()
            hits = _match(entry, everything)
            if not hits:
                notes.append(
                    f"CUDA_VISIBLE_DEVICES={visible}: {entry!r} names no GPU here; "
                    "it and the entries after it are ignored, as CUDA ignores them")
                break
            numbers = numbers or entry.isdigit()
            chosen.extend(d for d in hits if d in devices and d not in chosen)
        names = {d.name for d in everything if not d.is_mig}
        if numbers and order != "PCI_BUS_ID" and len(names) > 1:
            notes.append(
                f"CUDA_VISIBLE_DEVICES={visible}: numbers are read in PCI bus order, as "
                "nvidia-smi numbers GPUs; set CUDA_DEVICE_ORDER=PCI_BUS_ID so that CUDA "
                "programs agree")
    if order is not None and order != "PCI_BUS_ID":
        chosen = [d if d.is_mig else d.replace(id=d.uuid) for d in chosen]
    return Selection(tuple(chosen), tuple(notes))


def same_device(
    ids: Sequence[str], devices: Sequence[Device]
) -> Optional[Tuple[str, str, Device]]:
    """The first two ids that name one device, and that device; None if none do.

    Ids are read as CUDA reads them (`_match`): a number, a UUID or a unique
    prefix of one. A number of a GPU split into MIG instances names each
    instance, so ``2`` and a MIG id of GPU 2 are one device too. An id that
    names nothing here is compared with nothing (`resolve_ids` judges it).
    """
    named: Dict[str, str] = {}  # device index ("2", "2:1": unique) -> first id naming it
    for gpu_id in ids:
        for device in _match(gpu_id, devices):
            first = named.setdefault(device.index, gpu_id)
            if first != gpu_id:
                return first, gpu_id, device
    return None


def resolve_ids(ids: Sequence[str], devices: Sequence[Device]) -> Dict[str, Device]:
    """The device each ``--gpus`` id names; `ValueError` naming the first that
    names none. Ids stay as the user wrote them: this only finds the hardware
    behind them (for busy checks, memory sizes and lock names)."""
    found: Dict[str, Device] = {}
    for gpu_id in ids:
        hits = _match(gpu_id, devices)
        whole = [d for d in hits if not d.is_mig]
        if gpu_id.startswith("MIG-") and len(hits) == 1:
            found[gpu_id] = hits[0]
        elif len(whole) == 1:
            found[gpu_id] = whole[0]
        elif hits:
            raise ValueError(
                f"GPU {gpu_id} is split into MIG instances; name them by UUID: "
                + ", ".join(d.uuid for d in hits))
        else:
            known = ", ".join(d.id for d in devices) or "none"
            raise ValueError(f"no GPU {gpu_id} here (found: {known})")
    return found
