"""Single measurements: one timed run, one long-stream run (W3), one idle run (W4).

Also the /proc readers (VmHWM, VmRSS, CPU seconds, threads) that W3, W4 and W7 use.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MIB = 2**20
#: W3: a scheduler still running this long after the first job's end is hung.
HUNG_AFTER = 10.0


@dataclass
class Timed:
    """Wall time of one run, or why it failed."""

    seconds: Optional[float]
    error: str = ""


def _tail_file(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return " / ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def timed_run(argv: Sequence[str], stdin: Path, env: dict, tmp: Path, timeout: float) -> Timed:
    """Wall-clock seconds from spawn to exit; stdout is discarded, stderr kept for errors."""
    err_path = tmp / "stderr.txt"
    with open(stdin, "rb") as fin, open(err_path, "wb") as ferr:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=fin, stdout=subprocess.DEVNULL, stderr=ferr,
                                env=env, start_new_session=True)
        rc, timed_out = wait_exact(proc, timeout)
        elapsed = time.perf_counter() - start
    if timed_out:
        return Timed(None, f"timed out after {timeout:.0f} s")
    if rc != 0:
        return Timed(None, f"exit status {rc}: {_tail_file(err_path)}")
    return Timed(elapsed)


def wait_exact(proc: subprocess.Popen, timeout: float) -> tuple:
    """(exit status, timed out?): a blocking wait, its return not rounded to a poll interval.

    Popen.wait(timeout) polls with sleeps of up to 50 ms, which would quantise every
    wall time; here a watchdog timer kills the process group instead.
    """
    fired = threading.Event()

    def expire() -> None:
        fired.set()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass

    watchdog = threading.Timer(timeout, expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        rc = proc.wait()
    finally:
        watchdog.cancel()
    return rc, fired.is_set()


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process started with start_new_session=True, its jobs included."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    proc.wait()


def vm_hwm(pid: int) -> Optional[int]:
    """Peak resident set size (VmHWM) of a live process in bytes, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def vm_rss(pid: int) -> Optional[int]:
    """Current resident set size (VmRSS) of a live process in bytes, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def cpu_seconds(pid: int) -> Optional[float]:
    """User + system CPU seconds of a live process (all its threads), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_ns(pid: int) -> Optional[int]:
    """Nanoseconds on a CPU of a live process, all its threads (/proc/PID/task/*/schedstat).

    Far finer than `cpu_seconds` (clock ticks): W7 divides it by a thousand requests."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    total = 0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that just ended
    return total


def threads(pid: int) -> Optional[int]:
    """Number of threads of a live process, or None."""
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return None


class PeakSampler(threading.Thread):
    """Polls VmHWM of a process until stopped; kills it above `cap` bytes."""

    def __init__(self, pid: int, cap: int, interval: float = 0.01):
        super().__init__(daemon=True)
        self.pid, self.cap, self.interval = pid, cap, interval
        self.peak = 0
        self.capped = False
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            value = vm_hwm(self.pid)
            if value is not None:
                self.peak = max(self.peak, value)
                if value > self.cap and not self.capped:
                    self.capped = True
                    os.kill(self.pid, signal.SIGKILL)
            self._stop_event.wait(self.interval)

    def stop(self) -> int:
        """Stop sampling and return the peak seen."""
        self._stop_event.set()
        self.join()
        return self.peak


# The W3 feeder: the first job, a probe job, then `true` lines until n lines in all.
# It writes straight to fd 1 so a stopped reader just blocks it (no file, no memory).
FEEDER = r"""
import os, sys
first, second, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def put(data):
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]
try:
    put((first + "\n" + second + "\n").encode())
    left, chunk = n - 1, b"true\n" * 8192
    while left > 0:
        k = min(left, 8192)
        put(chunk if k == 8192 else b"true\n" * k)
        left -= k
except BrokenPipeError:
    pass
os._exit(0)
"""


@dataclass
class StreamRun:
    """One W3 run: peak RSS, drain time and what happened on SIGINT."""

    peak_bytes: Optional[int] = None
    drain: Optional[float] = None
    returncode: Optional[int] = None
    stdin_done: bool = False
    started_after_sigint: bool = False
    traceback: bool = False
    notes: list = field(default_factory=list)


def _default_sigint() -> None:
    """In the child: SIGINT as at a terminal. A harness started in the background by a
    non-interactive shell (`cmd &`) has SIGINT ignored, and exec would pass that on:
    0.1.4, which installs no handler, would then never see the SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size > 0:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    return False


def _read_float(path: Path) -> Optional[float]:
    try:
        return float(path.read_text().strip())
    except (OSError, ValueError):
        return None


def stream_run(argv: Sequence[str], env: dict, lines: int, first_job_s: float, tmp: Path,
               cap: int = 2 * 1024 * MIB) -> StreamRun:
    """W3: stream `lines` lines behind a `sleep` job on 1 slot, SIGINT while it runs.

    SIGINT goes to the scheduler's pid only (not the process group), so the first
    job is not interrupted; the drain is the scheduler's exit time minus the time
    the first job's shell recorded right after its sleep.
    """
    tmp = Path(tempfile.mkdtemp(prefix="w3-", dir=tmp))  # a stray job cannot touch the next run
    started, ended, ran = tmp / "started", tmp / "ended", tmp / "ran"
    first = (f"date +%s.%N > {shlex.quote(str(started))}; sleep {first_job_s}; "
             f"date +%s.%N > {shlex.quote(str(ended))}")
    second = f"echo ran >> {shlex.quote(str(ran))}"
    result = StreamRun()
    read_end, write_end = os.pipe()
    feeder = subprocess.Popen([sys.executable, "-c", FEEDER, first, second, str(lines)],
                              stdout=write_end)
    err_path = tmp / "stderr"
    with open(err_path, "wb") as ferr:
        proc = subprocess.Popen(argv, stdin=read_end, stdout=subprocess.DEVNULL, stderr=ferr,
                                env=env, start_new_session=True, preexec_fn=_default_sigint)
    os.close(read_end)
    os.close(write_end)
    sampler = PeakSampler(proc.pid, cap)
    sampler.start()
    try:
        if not _wait_for(started, proc, 60):
            result.notes.append("the first job never started")
            return _finish(result, proc, feeder, sampler, err_path)
        t_started = _read_float(started) or time.time()
        # Give an eager reader the time to swallow the stream, a lazy one just waits.
        while feeder.poll() is None and time.time() < t_started + 0.7 * first_job_s:
            time.sleep(0.01)
        result.stdin_done = feeder.poll() is not None
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)
        grace = max(0.0, t_started + first_job_s - time.time()) + HUNG_AFTER
        result.returncode, timed_out = wait_exact(proc, grace)
        t_exit = time.time()
        if timed_out:
            result.notes.append(f"hung: no exit {HUNG_AFTER:g} s after the first job's end, "
                                "killed")
            return _finish(result, proc, feeder, sampler, err_path)
        t_end = _read_float(ended)
        if t_end is None:
            result.notes.append("the first job did not finish (interrupted?)")
        else:
            result.drain = t_exit - t_end
        return _finish(result, proc, feeder, sampler, err_path)
    finally:
        kill_group(proc)
        if feeder.poll() is None:
            feeder.kill()
            feeder.wait()


def _finish(result: StreamRun, proc, feeder, sampler: PeakSampler, err_path: Path) -> StreamRun:
    if proc.poll() is None:
        kill_group(proc)
    result.peak_bytes = sampler.stop() or None
    if sampler.capped:
        result.notes.append(f"killed above {sampler.cap // MIB} MiB")
    try:
        feeder.wait(10)
    except subprocess.TimeoutExpired:
        feeder.kill()
        feeder.wait()
    ran = err_path.parent / "ran"
    result.started_after_sigint = ran.exists()
    result.traceback = "Traceback" in err_path.read_text(errors="replace")
    if result.returncode is None:
        result.returncode = proc.returncode
    return result


@dataclass
class IdleRun:
    """One W4 run: CPU seconds while idle, plus context."""

    idle_cpu: Optional[float] = None
    total_cpu: Optional[float] = None
    threads: Optional[int] = None
    returncode: Optional[int] = None
    note: str = ""


def idle_run(argv: Sequence[str], env: dict, warmup_s: float, idle_s: float,
             tmp: Path) -> IdleRun:
    """W4: the scheduler reads `tail -f -n 0 EMPTY`; CPU used over `idle_s` after warm-up."""
    empty = tmp / "w4.empty"
    empty.write_bytes(b"")
    tail = subprocess.Popen(["tail", "-f", "-n", "0", str(empty)], stdout=subprocess.PIPE)
    proc = subprocess.Popen(argv, stdin=tail.stdout, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    tail.stdout.close()
    result = IdleRun()
    try:
        time.sleep(warmup_s)
        before = cpu_seconds(proc.pid)
        time.sleep(idle_s)
        after = cpu_seconds(proc.pid)
        result.threads = threads(proc.pid)
        if before is None or after is None or proc.poll() is not None:
            result.note = f"exited while idle (status {proc.poll()})"
            return result
        result.idle_cpu, result.total_cpu = after - before, after
        tail.terminate()  # end of input: the scheduler should exit on its own
        try:
            result.returncode = proc.wait(10)
        except subprocess.TimeoutExpired:
            result.note = "did not exit within 10 s of end of input"
        return result
    finally:
        if tail.poll() is None:
            tail.kill()
        tail.wait()
        kill_group(proc)
