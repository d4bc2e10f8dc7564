"""Whether the GPUs could be asked at all, without asking.

A run with explicit ``--gpus`` asks NVML or ``nvidia-smi`` about them (an id
that names no device, a busy GPU). On a machine with neither, loading the
discovery modules only to learn that costs start-up time every run pays, so
this looks first, with nothing but `os`: is there a ``pynvml`` to import, or
an ``nvidia-smi`` on PATH?
"""

from __future__ import annotations

import os
import sys


def on_path(program: str) -> bool:
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        if os.access(os.path.join(folder or ".", program), os.X_OK):
            return True
    return False


def may_answer() -> bool:
    """False only when neither NVML's binding nor ``nvidia-smi`` is there."""
    if "pynvml" in sys.modules or on_path("nvidia-smi"):
        return True
    for folder in sys.path:
        base = os.path.join(folder or ".", "pynvml")
        if os.path.isdir(base) or os.path.exists(base + ".py"):
            return True
    return False
