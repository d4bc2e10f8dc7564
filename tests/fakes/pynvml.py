"""A fake ``pynvml`` (nvidia-ml-py) for tests without a GPU.

Tests put this directory first on PYTHONPATH. Every call re-reads the JSON file
named by $SGS_FAKE_GPUS, so a test can change the GPUs' usage while a scheduler
runs; every call is logged as ``nvml NAME`` in $SGS_FAKE_LOG when that is set.

The file::

    {"nvml": true,                 # false: nvmlInit fails (library not found)
     "gpus": [{"uuid": "GPU-…", "name": "…", "memory_total": bytes,
               "memory_used": bytes (default: the processes' sum), "util": percent,
               "compute_mode": 0 default | 2 prohibited | 3 exclusive process,
               "lost": false, "processes": [{"pid": 1, "used": bytes or null}],
               "errors": {"nvmlDeviceGetUtilizationRates": "NotSupported"},
               "mig": [{"uuid": "MIG-…", "name": "…", "memory_total": …,
                        "memory_used": …, "processes": […]}, …]}]}

Only the subset of the API that simple_gpu_scheduler calls is here, with the
same names, error classes and return shapes as nvidia-ml-py.
"""

import json
import os

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999

NVML_COMPUTEMODE_DEFAULT = 0
NVML_COMPUTEMODE_PROHIBITED = 2
NVML_COMPUTEMODE_EXCLUSIVE_PROCESS = 3
NVML_DEVICE_MIG_DISABLE = 0
NVML_DEVICE_MIG_ENABLE = 1

_STRINGS = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLError(Exception):
    """As in nvidia-ml-py: NVMLError(value) is an instance of the code's subclass."""

    _classes = {}

    def __new__(cls, value):
        if cls is NVMLError:
            cls = NVMLError._classes.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __init__(self, value):
        Exception.__init__(self, value)
        self.value = value

    def __str__(self):
        return _STRINGS.get(self.value, f"NVML Error with code {self.value}")


def _subclass(name, value):
    cls = type(name, (NVMLError,), {"__new__": lambda c, *a: NVMLError.__new__(c, value),
                                   "__init__": lambda self, *a: NVMLError.__init__(self, value)})
    NVMLError._classes[value] = cls
    globals()[name] = cls
    _ERROR_NAMES[name[len("NVMLError_"):]] = value


#: "NotSupported" -> 3: how the JSON file names an error to raise.
_ERROR_NAMES = {}

for _name, _value in [
    ("NVMLError_Uninitialized", NVML_ERROR_UNINITIALIZED),
    ("NVMLError_InvalidArgument", NVML_ERROR_INVALID_ARGUMENT),
    ("NVMLError_NotSupported", NVML_ERROR_NOT_SUPPORTED),
    ("NVMLError_NoPermission", NVML_ERROR_NO_PERMISSION),
    ("NVMLError_NotFound", NVML_ERROR_NOT_FOUND),
    ("NVMLError_DriverNotLoaded", NVML_ERROR_DRIVER_NOT_LOADED),
    ("NVMLError_LibraryNotFound", NVML_ERROR_LIBRARY_NOT_FOUND),
    ("NVMLError_GpuIsLost", NVML_ERROR_GPU_IS_LOST),
    ("NVMLError_Unknown", NVML_ERROR_UNKNOWN),
]:
    _subclass(_name, _value)

_initialised = False


class _Struct:
    def __init__(self, **fields):
        self.__dict__.update(fields)


class _Handle:
    def __init__(self, gpu, mig=None):
        self.gpu = gpu
        self.mig = mig


def _log(name):
    path = os.environ.get("SGS_FAKE_LOG")
    if path:
        with open(path, "a") as log:
            log.write(f"nvml {name}\n")


def _state():
    with open(os.environ["SGS_FAKE_GPUS"]) as f:
        return json.load(f)


def _call(name):
    _log(name)
    if not _initialised:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)
    return _state()


def _device(state, handle, name):
    """The JSON of the device a handle names, raising as the real one would."""
    try:
        gpu = state["gpus"][handle.gpu]
    except (IndexError, AttributeError):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT) from None
    if gpu.get("lost"):
        raise NVMLError(NVML_ERROR_GPU_IS_LOST)
    error = gpu.get("errors", {}).get(name)
    if error:
        raise NVMLError(_ERROR_NAMES[error])
    if handle.mig is None:
        return gpu
    try:
        return gpu["mig"][handle.mig]
    except (IndexError, KeyError):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT) from None


def nvmlInit():
    global _initialised
    _log("nvmlInit")
    if not _state().get("nvml", True):
        raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
    _initialised = True


def nvmlShutdown():
    global _initialised
    _log("nvmlShutdown")
    _initialised = False


def nvmlDeviceGetCount():
    return len(_call("nvmlDeviceGetCount")["gpus"])


def nvmlDeviceGetHandleByIndex(index):
    state = _call("nvmlDeviceGetHandleByIndex")
    if not 0 <= index < len(state["gpus"]):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    handle = _Handle(index)
    _device(state, handle, "nvmlDeviceGetHandleByIndex")
    return handle


def nvmlDeviceGetHandleByUUID(uuid):
    state = _call("nvmlDeviceGetHandleByUUID")
    for i, gpu in enumerate(state["gpus"]):
        if gpu["uuid"] == uuid:
            return _Handle(i)
        for j, mig in enumerate(gpu.get("mig", [])):
            if mig["uuid"] == uuid:
                return _Handle(i, j)
    raise NVMLError(NVML_ERROR_NOT_FOUND)


def nvmlDeviceGetUUID(handle):
    return _device(_call("nvmlDeviceGetUUID"), handle, "nvmlDeviceGetUUID")["uuid"]


def nvmlDeviceGetName(handle):
    device = _device(_call("nvmlDeviceGetName"), handle, "nvmlDeviceGetName")
    return device.get("name", "Fake GPU")


def nvmlDeviceGetComputeMode(handle):
    device = _device(_call("nvmlDeviceGetComputeMode"), handle, "nvmlDeviceGetComputeMode")
    return device.get("compute_mode", NVML_COMPUTEMODE_DEFAULT)


def nvmlDeviceGetMigMode(handle):
    device = _device(_call("nvmlDeviceGetMigMode"), handle, "nvmlDeviceGetMigMode")
    if "mig" not in device:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return [NVML_DEVICE_MIG_ENABLE, NVML_DEVICE_MIG_ENABLE]


def nvmlDeviceGetMaxMigDeviceCount(handle):
    device = _device(_call("nvmlDeviceGetMaxMigDeviceCount"), handle,
                     "nvmlDeviceGetMaxMigDeviceCount")
    return 7 if "mig" in device else 0


def nvmlDeviceGetMigDeviceHandleByIndex(handle, index):
    state = _call("nvmlDeviceGetMigDeviceHandleByIndex")
    device = _device(state, handle, "nvmlDeviceGetMigDeviceHandleByIndex")
    if index >= len(device.get("mig", [])):
        raise NVMLError(NVML_ERROR_NOT_FOUND)
    return _Handle(handle.gpu, index)


def _used(device):
    if device.get("memory_used") is not None:
        return device["memory_used"]
    return sum(p.get("used") or 0 for p in device.get("processes", []))


def nvmlDeviceGetMemoryInfo(handle, version=None):
    device = _device(_call("nvmlDeviceGetMemoryInfo"), handle, "nvmlDeviceGetMemoryInfo")
    total = device.get("memory_total", 16 * 2**30)
    used = _used(device)
    return _Struct(total=total, used=used, free=total - used)


def nvmlDeviceGetUtilizationRates(handle):
    name = "nvmlDeviceGetUtilizationRates"
    device = _device(_call(name), handle, name)
    if handle.mig is not None:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)  # as on real MIG instances
    return _Struct(gpu=device.get("util", 0), memory=0)


def nvmlDeviceGetComputeRunningProcesses(handle):
    name = "nvmlDeviceGetComputeRunningProcesses"
    device = _device(_call(name), handle, name)
    return [_Struct(pid=p["pid"], usedGpuMemory=p.get("used"), gpuInstanceId=0,
                    computeInstanceId=0) for p in device.get("processes", [])]
