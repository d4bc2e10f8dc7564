"""Hardware samples taken beside the engine's loop, never on it.

A query to NVML or ``nvidia-smi`` can take seconds (a hung driver, a slow
``nvidia-smi``: 8 s was seen). Taken on the engine's thread it would delay
Ctrl-C, timeouts, kills and every start. So one helper thread takes the
samples: the engine asks (`request`) with the devices to look at, and the
answer comes back as a callback on the engine's thread. At most one sample is
in flight; a request made meanwhile is ignored (the answer on its way is as
fresh as it can be).
"""

from __future__ import annotations

import threading

from .. import threads

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Callable, Dict, List, Optional, Sequence

    from ..model.devices import Backend, Device, Usage

    Answer = Callable[[Dict[str, Usage]], None]


class Sampler:
    """Takes ``backend.sample(devices)`` in a helper thread, one at a time."""

    def __init__(self, backend: Backend, deliver: Callable[[Callable[[], None]], None]) -> None:
        self._backend = backend
        #: runs a callable on the engine's thread (its ``call_soon_threadsafe``)
        self._deliver = deliver
        self._wake = threading.Condition()
        self._request: Optional[List[Device]] = None
        self._answer: Optional[Answer] = None
        self.busy = False
        self._started = False
        self._closed = False

    def request(self, devices: Sequence[Device], answer: Answer) -> bool:
        """Ask for a sample; False if one is already being taken."""
        with self._wake:
            if self.busy or self._closed:
                return False
            self.busy = True
            self._request = list(devices)
            self._answer = answer
            if not self._started:
                self._started = True
                threads.start(self._run)
            self._wake.notify()
        return True

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._request is None and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                devices, answer = self._request, self._answer
                self._request = None
            assert devices is not None and answer is not None
            try:
                samples = self._backend.sample(devices)
            except Exception:  # a backend bug must not kill the thread
                samples = {}
            self._deliver(lambda a=answer, s=samples: self._done(a, s))  # type: ignore[misc]

    def _done(self, answer: Answer, samples: Dict[str, Usage]) -> None:
        # On the engine's thread: a new request may be made from `answer`.
        self.busy = False
        answer(samples)
