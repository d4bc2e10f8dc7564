"""Shared helpers of the GPU tests: a fake machine, the installed scheduler, polling.

Only the hardware is fake: `FakeMachine` writes the JSON file that the fake
``pynvml`` (tests/fakes/pynvml.py, first on PYTHONPATH) and the fake
``nvidia-smi`` (tests/fakes/nvidia-smi, first on PATH) read on every call, so
a test changes what the GPUs show while a real scheduler process runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, TypeVar

FAKES = Path(__file__).resolve().parent / "fakes"
GiB = 2**30

T = TypeVar("T")


def fake_gpu(n: int, **fields: Any) -> Dict[str, Any]:
    """One fake GPU: 80 GiB, idle, no processes, unless told otherwise."""
    gpu: Dict[str, Any] = {
        "uuid": f"GPU-{n:08x}-1111-2222-3333-{n:012x}", "name": "Fake A100 80GB",
        "memory_total": 80 * GiB, "util": 0, "processes": [],
    }
    gpu.update(fields)
    return gpu


def fake_mig(n: int, **fields: Any) -> Dict[str, Any]:
    mig: Dict[str, Any] = {"uuid": f"MIG-{n:08x}-aaaa-bbbb-cccc-{n:012x}",
                           "name": "Fake A100 MIG 3g.40gb", "memory_total": 40 * GiB,
                           "processes": []}
    mig.update(fields)
    return mig


class FakeMachine:
    """The fake GPUs of one test, and what the fakes were asked."""

    def __init__(self, root: Path, gpus: List[Dict[str, Any]], **top: Any) -> None:
        self.root = root
        self.path = root / "gpus.json"
        self.log = root / "fake-calls.log"
        self.locks = root / "locks"
        self.state: Dict[str, Any] = {"gpus": gpus, **top}
        self.write()

    @property
    def gpus(self) -> List[Dict[str, Any]]:
        return self.state["gpus"]

    def write(self) -> None:
        # Atomic: a scheduler may read the file at any moment.
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, self.path)

    def env(self, route: str = "nvml", **extra: str) -> Dict[str, str]:
        """The environment of a scheduler that finds the GPUs through `route`:
        "nvml", "smi" (NVML fails, nvidia-smi works) or "none"."""
        if route != "nvml" and self.state.get("nvml", True):
            self.state["nvml"] = False
            self.write()
        env = {k: v for k, v in os.environ.items()
               if k not in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "PYTHONPATH")}
        env.update(SGS_FAKE_GPUS=str(self.path), SGS_FAKE_LOG=str(self.log),
                   PYTHONPATH=str(FAKES), SHELL="/bin/sh")
        python_bin = str(Path(sys.executable).parent)
        if route == "none":
            # Only the tools jobs use: no nvidia-smi, even on a machine with one.
            tools = self.root / "tools-bin"
            tools.mkdir(exist_ok=True)
            for tool in ("sh", "date", "sleep", "touch", "cat"):
                found = shutil.which(tool)
                if found and not (tools / tool).exists():
                    (tools / tool).symlink_to(found)
            env["PATH"] = str(tools)
        else:
            env["PATH"] = os.pathsep.join([str(FAKES), python_bin, env.get("PATH", "")])
        env.update(extra)
        return env

    def calls(self, prefix: str = "") -> List[str]:
        if not self.log.exists():
            return []
        return [line for line in self.log.read_text().splitlines() if line.startswith(prefix)]

    def samples(self) -> int:
        """How many times usage was sampled (the process list is only asked then)."""
        return len(self.calls("nvml nvmlDeviceGetComputeRunningProcesses")) + len(
            self.calls("smi --query-compute-apps"))


def scheduler() -> str:
    """The installed console script (the venv's, not some other on PATH)."""
    beside = Path(sys.executable).parent / "simple_gpu_scheduler"
    found = str(beside) if beside.exists() else shutil.which("simple_gpu_scheduler")
    assert found, "simple_gpu_scheduler is not installed (pip install -e '.[test]')"
    return found


def run(args: Sequence[str], env: Dict[str, str], input: str = "",
        timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([scheduler(), *args], input=input, env=env, capture_output=True,
                          text=True, timeout=timeout)


def start(args: Sequence[str], env: Dict[str, str], stderr: Path) -> subprocess.Popen:
    """A scheduler reading commands from a pipe the test writes to; its
    messages go to the file `stderr`, which the test can poll."""
    with open(stderr, "w") as err:
        return subprocess.Popen([scheduler(), *args], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=err, env=env, text=True)


def send(proc: subprocess.Popen, *commands: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write("".join(c + "\n" for c in commands))
    proc.stdin.flush()


def wait_for(condition: Callable[[], Optional[T]], timeout: float = 10.0,
             what: str = "condition") -> T:
    """Poll `condition` until it returns something true; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def read_lines(path: Path) -> List[str]:
    return path.read_text().splitlines() if path.exists() else []
