"""On a real GPU: a job given GPU 0 sees exactly that device.

Skipped where no NVIDIA GPU is visible (``nvidia-smi -L`` fails). The job asks
the CUDA driver (libcuda, through ctypes: no CUDA toolkit or framework needed)
how many devices it sees and the UUID of its device 0; the test compares that
with the UUID NVML reports for index 0 (through pynvml when installed, else
nvidia-smi, which is NVML's own front end).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from harness import run_sgs

JOB = r"""
import ctypes, sys
cuda = ctypes.CDLL("libcuda.so.1")
assert cuda.cuInit(0) == 0, "cuInit failed"
count = ctypes.c_int()
assert cuda.cuDeviceGetCount(ctypes.byref(count)) == 0
device = ctypes.c_int()
assert cuda.cuDeviceGet(ctypes.byref(device), 0) == 0
uuid = (ctypes.c_ubyte * 16)()
get = getattr(cuda, "cuDeviceGetUuid_v2", None) or cuda.cuDeviceGetUuid
assert get(ctypes.byref(uuid), device) == 0
h = bytes(uuid).hex()
print(count.value, f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
"""


def nvml_uuid_of_index_0() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        uuid = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(0))
        return uuid.decode() if isinstance(uuid, bytes) else uuid
    except Exception:  # not installed, or cannot start: ask nvidia-smi
        out = subprocess.run(["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader", "-i", "0"],
                             capture_output=True, text=True, check=True, timeout=60)
        return out.stdout.strip()


def gpu_visible() -> bool:
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_visible(), reason="no NVIDIA GPU visible (nvidia-smi -L fails)")
def test_a_job_given_gpu_0_sees_exactly_that_device(tmp_path: Path) -> None:
    import os

    expected = nvml_uuid_of_index_0()
    env = {k: v for k, v in os.environ.items()
           if k not in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")}
    script = tmp_path / "job.py"
    script.write_text(JOB)
    result = run_sgs(["--gpus", "0", "--lock-dir", str(tmp_path / "locks")], env=env,
                     input=f"{sys.executable} {script}\n", timeout=120, text=True)
    print("scheduler stderr:", result.stderr)
    print("job saw:", result.stdout.strip(), "| NVML index 0:", expected)
    assert result.returncode == 0, result.stderr
    count, seen = result.stdout.split()
    assert count == "1"
    assert seen == expected


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_visible(), reason="no NVIDIA GPU visible (nvidia-smi -L fails)")
def test_discovery_on_real_hardware_lists_gpu_0(tmp_path: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    result = run_sgs(["--list-gpus", "--max-gpu-memory", "0.5"], env=env, timeout=120, text=True)
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert rows and rows[0][:2] == ["0", nvml_uuid_of_index_0()]
