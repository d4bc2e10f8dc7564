"""Asking the hardware which GPUs there are and what they use: the backends.

Two backends answer the same two questions, "which devices are there"
(`discover`) and "what is each using now" (`sample`): NVML through `nvml`
(preferred: fast, per MIG instance) and ``nvidia-smi`` through `smi` (two
subprocesses per question). `open_backend` picks the first that works. What
is decided from their answers is pure and lives in `devices`.
"""

from __future__ import annotations

from ..model.devices import Device, Discovery, GpuProcess, Usage
from . import nvml, smi

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Sequence, Tuple

    from ..model.devices import Backend

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
        return device.replace(mem_total=usage.mem_total, mem_used=usage.mem_used,
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
