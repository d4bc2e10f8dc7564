"""The one door to NVML: the only module that imports ``pynvml``.

``pynvml`` (the ``nvidia-ml-py`` package, the optional extra ``[nvml]``) is
imported and initialised on the first call that needs it, never at import time,
so a run that does not ask about the hardware does not load it. Every call goes
through `query`, which turns an `NVMLError` into an `Unavailable` value: callers
test for it instead of wrapping each call in ``try``, and a GPU that fell off
the bus (``GPU is lost``) is told apart from a value that is merely not
supported. Modelled on nvitop's ``api/libnvml.py`` (``_lazy_init``,
``nvmlQuery``).

NVML is never shut down: the process's exit releases it, and shutting it down
while another thread might still query it would only add a failure mode.
"""

from __future__ import annotations

import threading

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Any, Optional


class Unavailable:
    """A value NVML could not give, and why; false in a boolean test."""

    __slots__ = ("reason", "lost")

    def __init__(self, reason: str, lost: bool = False) -> None:
        self.reason = reason
        #: True when NVML said the GPU is lost: it will not come back without a reset.
        self.lost = lost

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"Unavailable({self.reason!r}{', lost' if self.lost else ''})"

_lock = threading.Lock()
_pynvml: Any = None
#: None until the first attempt; then "" when NVML is ready, else why it is not.
_failure: Optional[str] = None


def init() -> Optional[str]:
    """Load and initialise NVML once; None when it is ready, else why not."""
    global _pynvml, _failure
    with _lock:
        if _failure is not None:
            return _failure or None
        try:
            import pynvml
        except ImportError:
            _failure = 'pynvml is not installed (pip install "simple_gpu_scheduler[nvml]")'
            return _failure
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            _failure = f"NVML cannot start: {exc}"
            return _failure
        except OSError as exc:  # a broken libnvidia-ml.so
            _failure = f"NVML cannot start: {exc}"
            return _failure
        _pynvml = pynvml
        _failure = ""
        return None


def available() -> bool:
    """Whether NVML can be used (initialising it if this is the first question)."""
    return init() is None


def query(name: str, *args: Any) -> Any:
    """``pynvml.<name>(*args)``, or `Unavailable` with the reason if it fails.

    A function that this version of pynvml lacks is unavailable too, so older
    drivers and bindings degrade to "not available" instead of raising.
    """
    failure = init()
    if failure is not None:
        return Unavailable(failure)
    function = getattr(_pynvml, name, None)
    if function is None:
        return Unavailable(f"{name} is not in this pynvml")
    try:
        return function(*args)
    except _pynvml.NVMLError as exc:
        lost = getattr(exc, "value", None) == getattr(_pynvml, "NVML_ERROR_GPU_IS_LOST", 15)
        return Unavailable(str(exc), lost=lost)
    except Exception as exc:  # noqa: BLE001
        # A binding that disagrees with its driver (a ctypes or decoding
        # error): the question has no answer, but the run, whose jobs are
        # already on the GPUs, must not die of it.
        return Unavailable(f"{name} failed: {type(exc).__name__}: {exc}")


def constant(name: str, default: int) -> int:
    """A ``pynvml.NVML_*`` constant, or `default` when NVML is not loaded."""
    return getattr(_pynvml, name, default) if _pynvml is not None else default


def text(value: Any) -> str:
    """NVML strings are bytes in older bindings and str in newer ones."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
