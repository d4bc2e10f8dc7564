"""The fallback door to the hardware: ``nvidia-smi``'s CSV output.

Used only when NVML cannot be loaded. The parsers are pure functions of the
text ``nvidia-smi`` prints, tested on samples; `run` is the one place that
starts it. Memory comes in MiB (``nounits``) and is returned in bytes; a field
that ``nvidia-smi`` cannot fill (``[N/A]``, ``[Not Supported]``) becomes None.
"""

from __future__ import annotations

import re

from ..model.record import Record
from .presence import on_path

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Dict, List, Optional, Tuple

#: What ``--query-gpu`` asks for, in this order.
GPU_FIELDS = (
    "index", "uuid", "name", "memory.total", "memory.used", "utilization.gpu",
    "compute_mode", "mig.mode.current",
)
APP_FIELDS = ("gpu_uuid", "pid", "used_memory")

MIB = 1024 * 1024


class SmiGpu(Record):
    """One line of ``--query-gpu``."""

    __slots__ = ("index", "uuid", "name", "mem_total", "mem_used", "util", "compute_mode", "mig")

    def __init__(
        self, index: str, uuid: str, name: str, mem_total: Optional[int],
        mem_used: Optional[int], util: Optional[int], compute_mode: str, mig: bool,
    ) -> None:
        self.index = index
        self.uuid = uuid
        self.name = name
        self.mem_total = mem_total
        self.mem_used = mem_used
        self.util = util
        #: "Default", "Exclusive_Process", "Prohibited", ...
        self.compute_mode = compute_mode
        self.mig = mig


class SmiApp(Record):
    """One line of ``--query-compute-apps``: a compute process on a GPU."""

    __slots__ = ("gpu_uuid", "pid", "used")

    def __init__(self, gpu_uuid: str, pid: int, used: Optional[int]) -> None:
        self.gpu_uuid = gpu_uuid
        self.pid = pid
        self.used = used


class SmiResult(Record):
    """What one run of ``nvidia-smi`` printed, or why it could not run."""

    __slots__ = ("out", "error")

    def __init__(self, out: str, error: Optional[str] = None) -> None:
        self.out = out
        self.error = error


def _number(field: str, scale: int = 1) -> Optional[int]:
    """``40960`` -> 40960 * scale; ``[N/A]`` and the like -> None."""
    try:
        return int(float(field)) * scale
    except ValueError:
        return None


def _fields(line: str) -> List[str]:
    # GPU names contain no commas; nvidia-smi's CSV never quotes.
    return [part.strip() for part in line.split(",")]


def parse_gpus(text: str) -> Tuple[List[SmiGpu], List[str]]:
    """GPU lines of ``--query-gpu=GPU_FIELDS --format=csv,noheader,nounits``.

    Lines that are not GPU rows ("Unable to determine the device handle for
    GPU 0000:41:00.0: GPU is lost") come back as problems, to be shown.
    """
    gpus: List[SmiGpu] = []
    problems: List[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = _fields(line)
        if len(fields) != len(GPU_FIELDS) or not fields[0].isdigit():
            problems.append(line.strip())
            continue
        index, uuid, name, total, used, util, mode, mig = fields
        gpus.append(SmiGpu(
            index=index, uuid=uuid, name=name,
            mem_total=_number(total, MIB), mem_used=_number(used, MIB),
            util=_number(util), compute_mode=mode, mig=mig.lower() == "enabled",
        ))
    return gpus, problems


def parse_apps(text: str) -> List[SmiApp]:
    """Rows of ``--query-compute-apps=APP_FIELDS --format=csv,noheader,nounits``."""
    apps: List[SmiApp] = []
    for line in text.splitlines():
        fields = _fields(line)
        if len(fields) != len(APP_FIELDS) or not fields[1].isdigit():
            continue  # "No running processes found" and the like
        apps.append(SmiApp(fields[0], int(fields[1]), _number(fields[2], MIB)))
    return apps


_GPU_LINE = re.compile(r"^GPU (\d+): (.*) \(UUID: (\S+)\)\s*$")
_MIG_LINE = re.compile(r"^\s+MIG (\S+)\s+Device\s+(\d+): \(UUID: (\S+)\)\s*$")


def parse_mig_list(text: str) -> Dict[str, List[Tuple[str, str, str]]]:
    """MIG instances in ``nvidia-smi -L``: GPU index -> [(instance, profile, MIG UUID)]."""
    found: Dict[str, List[Tuple[str, str, str]]] = {}
    current: Optional[str] = None
    for line in text.splitlines():
        gpu = _GPU_LINE.match(line)
        if gpu:
            current = gpu.group(1)
            continue
        mig = _MIG_LINE.match(line)
        if mig and current is not None:
            found.setdefault(current, []).append((mig.group(2), mig.group(1), mig.group(3)))
    return found


def run(*args: str, timeout: float = 20.0) -> SmiResult:
    """Run ``nvidia-smi ARGS``; its stdout, or the reason it gave none."""
    if not on_path("nvidia-smi"):  # asked before importing subprocess
        return SmiResult("", "nvidia-smi is not installed")
    import subprocess  # only here: 3 ms of start-up that a run without GPUs never needs

    try:
        proc = subprocess.run(
            ["nvidia-smi", *args], stdin=subprocess.DEVNULL, capture_output=True,
            timeout=timeout, check=False,
        )
    except FileNotFoundError:
        return SmiResult("", "nvidia-smi is not installed")
    except (OSError, subprocess.SubprocessError) as exc:
        return SmiResult("", f"nvidia-smi cannot run: {exc}")
    out = proc.stdout.decode("utf-8", "replace")
    if proc.returncode != 0 and not out.strip():
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        return SmiResult("", f"nvidia-smi failed: {err[0] if err else f'exit {proc.returncode}'}")
    if proc.returncode != 0 and "," not in out:
        # "NVIDIA-SMI has failed because it couldn't communicate with the driver"
        return SmiResult("", f"nvidia-smi failed: {out.strip().splitlines()[0]}")
    return SmiResult(out)
