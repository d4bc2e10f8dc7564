"""Which GPUs this machine has and how busy they are: discovery and sampling.

Two backends answer the same two questions, "which devices are there" and
"what is each using now": NVML through `nvml` (preferred: fast, per MIG
instance) and ``nvidia-smi`` through `smi` (a subprocess per question).
`open_backend` picks the first that works. Everything that decides something
from the answers is a pure function here (`select_visible`, `resolve_ids`),
so it is tested without hardware.

A device's ``id`` is what a job gets in ``CUDA_VISIBLE_DEVICES``: the NVML
index (PCI bus order, which jobs use because the launcher sets
``CUDA_DEVICE_ORDER=PCI_BUS_ID``) for a whole GPU, the MIG UUID for a MIG
instance (CUDA gives a process one MIG instance, named by UUID).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

from . import nvml, smi


@dataclass(frozen=True)
class Device:
    """One schedulable device: a whole GPU or one MIG instance."""

    #: What jobs get in CUDA_VISIBLE_DEVICES: "0", or "MIG-…" for a MIG instance.
    id: str
    #: NVML's index: "2" for a GPU, "2:1" for MIG instance 1 of GPU 2.
    index: str
    uuid: str
    name: str
    mem_total: Optional[int] = None
    mem_used: Optional[int] = None
    util: Optional[int] = None
    #: Index of the GPU this MIG instance belongs to; None for a whole GPU.
    mig_parent: Optional[str] = None
    #: "default", "exclusive_process", "prohibited" or "unknown".
    compute_mode: str = "default"
    lost: bool = False

    @property
    def is_mig(self) -> bool:
        return self.mig_parent is not None

    @property
    def lock_key(self) -> str:
        """The name two schedulers agree on: the PCI-order index, or the MIG UUID."""
        return self.uuid if self.is_mig else self.index


@dataclass(frozen=True)
class GpuProcess:
    """A compute process NVML or nvidia-smi sees on a device."""

    pid: int
    #: Bytes of GPU memory it holds, when the driver says.
    used: Optional[int] = None


@dataclass(frozen=True)
class Usage:
    """One device's usage at one moment; None where it cannot be measured."""

    mem_total: Optional[int] = None
    mem_used: Optional[int] = None
    util: Optional[int] = None
    processes: Optional[Tuple[GpuProcess, ...]] = None
    #: Why the device cannot be used any more (NVML: "GPU is lost"), or None.
    lost: Optional[str] = None


@dataclass(frozen=True)
class Discovery:
    """What a backend found: usable devices, and those left out with the reason."""

    source: str
    devices: Tuple[Device, ...] = ()
    left_out: Tuple[Tuple[Device, str], ...] = ()
    #: Why nothing could be asked at all, or None.
    error: Optional[str] = None
    notes: Tuple[str, ...] = ()


_COMPUTE_MODES = {0: "default", 1: "exclusive_thread", 2: "prohibited", 3: "exclusive_process"}


# --- NVML ---------------------------------------------------------------------


class NvmlBackend:
    """Devices and usage through NVML; handles are kept per UUID."""

    source = "NVML"

    def __init__(self) -> None:
        self._handles: Dict[str, object] = {}

    def discover(self) -> Discovery:
        count = nvml.query("nvmlDeviceGetCount")
        if isinstance(count, nvml.Unavailable):
            return Discovery(self.source, error=count.reason)
        devices: List[Device] = []
        left_out: List[Tuple[Device, str]] = []
        notes: List[str] = []
        for i in range(count):
            handle = nvml.query("nvmlDeviceGetHandleByIndex", i)
            uuid = nvml.query("nvmlDeviceGetUUID", handle) if handle else handle
            if isinstance(uuid, nvml.Unavailable):
                lost = Device(str(i), str(i), "?", "?", lost=uuid.lost)
                left_out.append((lost, f"NVML: {uuid.reason}"))
                continue
            name = nvml.query("nvmlDeviceGetName", handle)
            mode = nvml.query("nvmlDeviceGetComputeMode", handle)
            gpu = Device(
                id=str(i), index=str(i), uuid=nvml.text(uuid),
                name=nvml.text(name) if name else "?",
                compute_mode="unknown" if isinstance(mode, nvml.Unavailable)
                else _COMPUTE_MODES.get(mode, "unknown"),
            )
            if gpu.compute_mode == "prohibited":
                left_out.append((gpu, "its compute mode is Prohibited"))
                continue
            mig = nvml.query("nvmlDeviceGetMigMode", handle)
            if mig and mig[0] == nvml.constant("NVML_DEVICE_MIG_ENABLE", 1):
                instances = self._mig_instances(handle, gpu)
                if not instances:
                    left_out.append((gpu, "MIG is enabled but it has no MIG instance"))
                devices.extend(instances)
                continue
            self._handles[gpu.uuid] = handle
            devices.append(self._measured(gpu, handle))
        return Discovery(self.source, tuple(devices), tuple(left_out), notes=tuple(notes))

    def _mig_instances(self, parent_handle: object, parent: Device) -> List[Device]:
        found: List[Device] = []
        slots = nvml.query("nvmlDeviceGetMaxMigDeviceCount", parent_handle)
        for j in range(slots or 0):
            # Unpopulated slots answer NotFound: simply no instance there.
            handle = nvml.query("nvmlDeviceGetMigDeviceHandleByIndex", parent_handle, j)
            uuid = nvml.query("nvmlDeviceGetUUID", handle) if handle else handle
            if isinstance(uuid, nvml.Unavailable):
                continue
            name = nvml.query("nvmlDeviceGetName", handle)
            instance = Device(
                id=nvml.text(uuid), index=f"{parent.index}:{j}", uuid=nvml.text(uuid),
                name=nvml.text(name) if name else f"{parent.name} MIG {j}",
                mig_parent=parent.index, compute_mode=parent.compute_mode,
            )
            self._handles[instance.uuid] = handle
            found.append(self._measured(instance, handle))
        return found

    def _measured(self, device: Device, handle: object) -> Device:
        usage = self._usage(handle)
        return replace(device, mem_total=usage.mem_total, mem_used=usage.mem_used,
                       util=usage.util)

    def sample(self, devices: Sequence[Device]) -> Dict[str, Usage]:
        """Usage of each device, keyed by device id."""
        result: Dict[str, Usage] = {}
        for device in devices:
            handle = self._handles.get(device.uuid)
            if handle is None:
                handle = nvml.query("nvmlDeviceGetHandleByUUID", device.uuid)
                if isinstance(handle, nvml.Unavailable):
                    result[device.id] = Usage(lost=handle.reason if handle.lost else None)
                    continue
                self._handles[device.uuid] = handle
            result[device.id] = self._usage(handle, with_processes=True)
        return result

    def _usage(self, handle: object, with_processes: bool = False) -> Usage:
        memory = nvml.query("nvmlDeviceGetMemoryInfo", handle)
        util = nvml.query("nvmlDeviceGetUtilizationRates", handle)
        processes: Any = None
        if with_processes:
            processes = nvml.query("nvmlDeviceGetComputeRunningProcesses", handle)
        lost = next((v.reason for v in (memory, util, processes)
                     if isinstance(v, nvml.Unavailable) and v.lost), None)
        return Usage(
            mem_total=memory.total if memory else None,
            mem_used=memory.used if memory else None,
            util=util.gpu if util else None,
            processes=None if processes is None or isinstance(processes, nvml.Unavailable)
            else tuple(GpuProcess(p.pid, p.usedGpuMemory) for p in processes),
            lost=lost,
        )


# --- nvidia-smi ---------------------------------------------------------------


class SmiBackend:
    """Devices and usage through ``nvidia-smi`` (two subprocesses per sample)."""

    source = "nvidia-smi"

    def discover(self) -> Discovery:
        gpus, problems, error = self._query()
        if error is not None:
            return Discovery(self.source, error=error)
        devices: List[Device] = []
        left_out: List[Tuple[Device, str]] = []
        migs: Optional[Dict[str, List[Tuple[str, str, str]]]] = None
        for row in gpus:
            gpu = Device(
                id=row.index, index=row.index, uuid=row.uuid, name=row.name,
                mem_total=row.mem_total, mem_used=row.mem_used, util=row.util,
                compute_mode=row.compute_mode.lower(),
            )
            if gpu.compute_mode == "prohibited":
                left_out.append((gpu, "its compute mode is Prohibited"))
            elif row.mig:
                if migs is None:
                    migs = smi.parse_mig_list(smi.run("-L").out)
                instances = [
                    Device(id=uuid, index=f"{row.index}:{j}", uuid=uuid,
                           name=f"{row.name} MIG {profile}", mig_parent=row.index,
                           compute_mode=gpu.compute_mode)
                    for j, profile, uuid in migs.get(row.index, [])
                ]
                if not instances:
                    left_out.append((gpu, "MIG is enabled but it has no MIG instance"))
                devices.extend(instances)
            else:
                devices.append(gpu)
        return Discovery(self.source, tuple(devices), tuple(left_out),
                         notes=tuple(f"nvidia-smi: {p}" for p in problems))

    def _query(self) -> Tuple[List[smi.SmiGpu], List[str], Optional[str]]:
        result = smi.run(f"--query-gpu={','.join(smi.GPU_FIELDS)}",
                         "--format=csv,noheader,nounits")
        if result.error is not None:
            return [], [], result.error
        gpus, problems = smi.parse_gpus(result.out)
        return gpus, problems, None

    def sample(self, devices: Sequence[Device]) -> Dict[str, Usage]:
        """Usage of each device. nvidia-smi does not say which MIG instance a
        process is on, so a MIG instance is charged with its whole GPU's
        processes (the safe side) and its memory use is unknown."""
        gpus, _, error = self._query()
        apps = smi.run(f"--query-compute-apps={','.join(smi.APP_FIELDS)}",
                       "--format=csv,noheader,nounits")
        by_index = {g.index: g for g in gpus}
        processes: Optional[Dict[str, List[GpuProcess]]] = None
        if apps.error is None:
            processes = {}
            for app in smi.parse_apps(apps.out):
                processes.setdefault(app.gpu_uuid, []).append(GpuProcess(app.pid, app.used))
        result: Dict[str, Usage] = {}
        for device in devices:
            row = by_index.get(device.mig_parent or device.index)
            if row is None or (row.uuid != device.uuid and not device.is_mig):
                # A whole GPU that vanished from the list is as good as lost.
                result[device.id] = Usage(lost=None if error else "nvidia-smi no longer lists it")
                continue
            procs = None if processes is None else tuple(processes.get(row.uuid, ()))
            if device.is_mig:
                result[device.id] = Usage(processes=procs)
            else:
                result[device.id] = Usage(row.mem_total, row.mem_used, row.util, procs)
        return result


class Backend(Protocol):
    """What the scheduler needs from a backend (`NvmlBackend`, `SmiBackend`)."""

    source: str

    def discover(self) -> Discovery: ...

    def sample(self, devices: Sequence[Device]) -> Dict[str, Usage]: ...


def open_backend() -> Tuple[Optional[Backend], Discovery]:
    """The first backend that can list the GPUs, with what it found.

    NVML first, then ``nvidia-smi``; when neither works the discovery's error
    says why each failed.
    """
    reasons: List[str] = []
    if nvml.available():
        backend = NvmlBackend()
        found = backend.discover()
        if found.error is None:
            return backend, found
        reasons.append(f"NVML: {found.error}")
    else:
        reasons.append(nvml.init() or "NVML is not available")
    fallback = SmiBackend()
    found = fallback.discover()
    if found.error is None:
        return fallback, found
    reasons.append(found.error)
    return None, Discovery("none", error="; ".join(reasons))


# --- pure decisions -------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    devices: Tuple[Device, ...]
    notes: Tuple[str, ...] = field(default_factory=tuple)


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
        chosen = [d if d.is_mig else replace(d, id=d.uuid) for d in chosen]
    return Selection(tuple(chosen), tuple(notes))


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
