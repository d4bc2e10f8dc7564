"""W7: a long queue of added jobs: ours (`--serve` + `add`) against task-spooler (`tsp`).

The claim under test: adding a job, cancelling one and starting the next cost the
same with 100,000 jobs queued as with none (pueue, which rewrites its whole state on
every add, was measured by its users at 2.3 s for 500 adds into an empty queue and
12.2 s with 2,000 queued; pueue cannot be installed from the registries these
machines reach, so task-spooler, Debian's `task-spooler`, command `tsp`, is the
other tool here).

Decisions
---------
- **One run of ours, in phases.** `simple_gpu_scheduler --gpus 0 --shell /bin/sh
  --serve --name w7 --control-dir PRIVATE --lock-dir PRIVATE < /dev/null` (a
  private lock directory: another scheduler on the machine holding GPU "0"'s lock
  would keep our first job from starting). Its first job is `sleep 100000` and the
  next few queued ones are too (they are what "kill the running job, the next
  starts" needs); every other job is `true` and never starts. Phases: (1)
  near-empty queue: kill -> next start, socket adds, CLI adds, the queries and
  cancel; (2) prefill with `add --jsonl` up to `w7_prefill` queued; (3) the
  `w7_adds` timed adds; (4) the same queries, idle CPU and RSS, cancel and kill ->
  next start with the whole queue; (5) `stop`.
- **Two ways to add.** "socket": one persistent connection, `{"op": "add", ...}`
  requests one at a time (the same request `simple_gpu_scheduler add -- true`
  sends, environment included), timed from the send to the reply's newline: the
  server's own cost, where growth with the queue would show. "CLI": the command
  `simple_gpu_scheduler add -- true`, spawn to exit: one process per add, like `tsp
  true`, so it is the like-for-like row against tsp (mostly interpreter start-up).
- **The 10,000 adds** (queue 100,000 -> 110,000): the first `w7_sample` and the last
  `w7_sample` by the CLI, the ones between over the socket. 10,000 CLI adds would
  take ~10 minutes on 2 cores; so the CLI is sampled at both ends of the range and
  the socket covers the middle (its first and last `w7_sample` are compared). Both
  ratios last/first are checked against 1.2× (the target).
- **Drift, and the companion run.** A socket add takes ~0.1 ms, mostly two process
  wake-ups, and on a shared 2-core machine that figure drifts by 2× over seconds
  whatever the queue (seen while writing this). So each socket add alternates, one
  for one (which goes first alternates too), with an add into a second `--serve`
  run whose queue holds only what those adds bring: its rows are measured at the
  same moments, and the socket rows' "× empty queue" is over them. The server's
  CPU time per add (`/proc/PID/task/*/schedstat`, in ns; no wake-up latency in it)
  is noted for both runs. Also, 100,000 -> 110,000 is only a 10 % longer queue, so
  a cost linear in the queue would pass last/first ≤ 1.2× as well: the comparison
  with the empty queue is what shows it. So a second target, the benchmark's own:
  the last `w7_sample` socket adds ≤ 1.2× the companion's at the same moments.
- **Prefill** in `add --jsonl` batches of `PREFILL_BATCH` lines: a request line is
  refused above 1 MiB (docs/control.md) and a `{"cmd":"true"}` line takes 21 bytes
  in the request, so one 100,000-line `add --jsonl` does not go through.
- **Queries.** `status` and `ls --json` as CLI commands (spawn to exit, output to
  /dev/null; target: `status` < 50 ms), and the same ops over the socket (server
  side). `cancel` of a queued job and `kill` of the running job -> the next job in
  the `running` list of `status` (polled over the socket) are socket-only.
- **Resources.** VmRSS (and VmHWM) of the scheduler with the whole queue, and its
  CPU seconds over `w7_idle` s with nothing to do (/proc/PID/stat).
- **tsp** runs with a private `TMPDIR` and `TS_SOCKET` (nothing else of the user's
  is touched), `TS_SLOTS=1`, `TS_MAXCONN` set to the whole queue (it can only lower
  the compiled-in cap), every other `TS_*` variable unset; its first job is `tsp
  sleep 100000`. Then `tsp -B true` one by one until it refuses (`-B`: exit 2 when
  the queue is full, instead of blocking) or the whole queue is in. tsp keeps a
  connection, and a waiting `tsp` process, per queued job, and stops accepting at
  its connection cap (~1000), so it never reaches 100,000: its rows are its first
  and its last `w7_empty_cli` adds, `tsp -l` (its status and listing in one),
  `tsp -r ID` with its full queue, and the processes and RSS that queue costs.
  At the end `tsp -K`, then every process that still has our `TS_SOCKET` in its
  environment (the running job and its client survive `-K`) gets SIGKILL, by pid.
- Ours and tsp run one after the other (tsp first), not interleaved: each needs
  minutes of state built up. The load average is in the report's header and end.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from _measure import CLOCK_TICKS, MIB, cpu_ns, cpu_seconds, kill_group, timed_run, vm_hwm, vm_rss
from _report import Section, Target, fmt, fmt_ratio, ratio
from _tools import Tool
from _workloads import Bench, check

DEV_NULL = Path(os.devnull)
#: Lines per `add --jsonl` of the prefill: 20,000 × 21 bytes stays well under the
#: 1 MiB request limit.
PREFILL_BATCH = 20_000
RUN_NAME = "w7"
HOLD = "sleep 100000"
#: Seconds one client command may take before it counts as failed.
CALL_TIMEOUT = 60.0


# --- a control-socket client ---------------------------------------------------------


class Client:
    """One persistent connection to a run's control socket, one request at a time."""

    def __init__(self, path: Path, timeout: float = 60.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rb")
        self.greeting = json.loads(self._line())

    def _line(self) -> bytes:
        line = self.file.readline()
        if not line.endswith(b"\n"):
            raise ConnectionError("the run closed the connection")
        return line

    def timed(self, request: dict) -> tuple:
        """(reply, seconds from the send to the reply's newline, reply bytes).

        The request is encoded before and the reply parsed after the clock."""
        data = json.dumps(request, separators=(",", ":")).encode() + b"\n"
        start = time.perf_counter()
        self.sock.sendall(data)
        line = self._line()
        elapsed = time.perf_counter() - start
        return json.loads(line), elapsed, len(line)

    def ok(self, request: dict) -> dict:
        """The reply, which must be `ok: true`."""
        reply = self.timed(request)[0]
        if reply.get("ok") is not True:
            raise RuntimeError(f"{request.get('op')}: {reply.get('error')}")
        return reply

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _connect(path: Path, proc: subprocess.Popen, timeout: float = 30.0) -> Client:
    """A client of the run at `path`, once its socket answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return Client(path)
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"the scheduler exited ({proc.returncode}) before "
                                   "its socket answered") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"no answer on {path} within {timeout:g} s") from None
            time.sleep(0.02)


# --- what is measured -----------------------------------------------------------------


@dataclass
class Series:
    """Latencies of one operation over one stretch of the queue (seconds)."""

    tool: str
    measure: str
    queued: str
    samples: list = field(default_factory=list)
    ref: Optional["Series"] = None  # the empty-queue row of the same measure
    extra: str = ""

    def median(self) -> Optional[float]:
        return statistics.median(self.samples) if self.samples else None

    def p90(self) -> Optional[float]:
        if len(self.samples) < 2:
            return self.median()
        return statistics.quantiles(self.samples, n=10, method="inclusive")[-1]


@dataclass
class Outcome:
    """Everything one tool's run produced: series, targets, notes."""

    series: list = field(default_factory=list)
    targets: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    errors: int = 0


def _ms(value: Optional[float]) -> Optional[float]:
    return None if value is None else value * 1000


def _count(n: int) -> str:
    return f"{n:,}"


def _cli(argv: Sequence[str], env: dict, tmp: Path, stdin: Path = DEV_NULL) -> float:
    """Seconds from spawn to exit of one client command; RuntimeError when it fails."""
    result = timed_run(argv, stdin, env, tmp, CALL_TIMEOUT)
    if result.seconds is None:
        raise RuntimeError(f"`{' '.join(map(str, argv[1:]))}`: {result.error}")
    return result.seconds


# --- ours -----------------------------------------------------------------------------


class Served:
    """A `--serve` run of ours with its own control directory, and one client of it."""

    def __init__(self, tool: Tool, tmp: Path, name: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=tmp))
        ctl = self.dir / "ctl"
        ctl.mkdir(mode=0o700)
        self.env = {**tool.environ(), "SGS_CONTROL_DIR": str(ctl)}
        # A private lock directory too: another scheduler on this machine (or the
        # companion) holding the lock of GPU "0" would keep our first job from starting.
        self.argv = tool.argv(1, ["--serve", "--name", name, "--control-dir", str(ctl),
                                  "--lock-dir", str(self.dir / "locks")])
        self.sock = ctl / f"{name}.sock"
        self.proc: Optional[subprocess.Popen] = None
        self.client: Optional[Client] = None

    def start(self) -> None:
        with open(self.dir / "scheduler.err", "wb") as err:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err, env=self.env,
                                         start_new_session=True)
        self.client = _connect(self.sock, self.proc)

    def add_request(self, cmd: str = "true") -> dict:
        """The request `simple_gpu_scheduler add -- CMD` sends (cli.verbs.add_request)."""
        return {"op": "add", "cwd": os.getcwd(), "env": self.env, "front": False,
                "jobs": [{"cmd": cmd}]}

    def queued(self) -> int:
        return int(self.client.ok({"op": "status"})["run"]["counts"]["queued"])

    def stop(self) -> str:
        """`stop`, then wait for the exit (SIGKILL to the group if it does not come);
        what happened, in words."""
        proc, said = self.proc, ""
        if proc is None:
            return said
        try:
            if self.client is not None and proc.poll() is None:
                n = self.queued()
                start = time.perf_counter()
                self.client.ok({"op": "stop"})
                proc.wait(60)
                said = (f"`stop` with {_count(n)} queued: exit {proc.returncode} after "
                        f"{time.perf_counter() - start:.2f} s")
        except (RuntimeError, OSError, ValueError, KeyError, subprocess.TimeoutExpired) as exc:
            said = f"`stop` failed ({exc}); killed"
        finally:
            if self.client is not None:
                self.client.close()
            if proc.poll() is None:
                kill_group(proc)
        return said


class OursRun:
    """One `--serve` run of ours (and its empty-queue companion) and what is measured."""

    def __init__(self, bench: Bench, tool: Tool) -> None:
        self.bench, self.tool, self.cfg = bench, tool, bench.cfg
        self.tmp = Path(tempfile.mkdtemp(prefix="w7-ours-", dir=bench.tmp))
        self.main = Served(tool, self.tmp, RUN_NAME)
        #: the interleaved reference of the socket adds: a second run, queue kept empty
        self.companion = Served(tool, self.tmp, RUN_NAME + "-empty")
        self.env = self.main.env
        self.out = Outcome()
        self.label = tool.label
        self.holds: list = []  # ids of the `sleep` jobs, in queue order
        self.memory: list = []  # (where, VmRSS, queued) along the run

    @property
    def proc(self) -> subprocess.Popen:
        return self.main.proc

    @property
    def client(self) -> Client:
        return self.main.client

    def _add_request(self) -> dict:
        return self.main.add_request()

    def queued(self) -> int:
        return self.main.queued()

    def run(self) -> Outcome:
        cfg = self.cfg
        empty: dict = {}
        full: dict = {}
        adds: list = []
        try:
            self.main.start()
            self.companion.start()
            self.companion.client.ok(self.companion.add_request(HOLD))
            self._hold_jobs(1 + 2 * cfg.w7_kills)
            # phase 1, near-empty queue (only the waiting `sleep`s at first)
            empty["kill"] = self._kills("empty queue")
            empty["add socket"] = self._socket_adds(cfg.w7_empty, "add (socket)")
            empty["add cli"] = self._cli_adds(cfg.w7_empty_cli, "add: `add -- true` (CLI)")
            empty.update(self._queries("empty queue"))
            (empty["cancel"],) = self._cancels("empty queue")
            self._memory("empty queue")
            # phases 2 and 3: the prefill, the timed adds
            self._prefill(cfg.w7_prefill - self.queued())
            self._memory("after the prefill")
            adds = self._adds(empty)
            self._memory("after the single adds")
            # phase 4, the whole queue
            full.update(self._queries("full queue"))
            med = full["status cli"].median()
            self.out.targets.append(Target(
                "W7", f"`status` < 50 ms with {full['status cli'].queued} queued (CLI, median "
                f"of {len(full['status cli'].samples)})", f"{fmt(_ms(med), 1)} ms",
                check(med, lambda x: x < 0.050)))
            self._resources()
            full["cancel"], full["cancel companion"] = self._cancels("full queue", True)
            full["kill"] = self._kills("full queue")
        except (RuntimeError, OSError, ValueError, KeyError) as exc:
            self.out.errors += 1
            self.out.notes.insert(0, f"{self.label}: W7 stopped: {exc}")
            self.bench.log(f"W7 {self.label}: ERROR {exc}")
        finally:
            said = self.main.stop()
            if said:
                self.out.notes.append(f"{self.label}: {said} (each queued job is reported "
                                      "as not started on stderr).")
            self.companion.stop()
        for key, s in full.items():
            if s.ref is None:
                s.ref = empty.get(key)
        order = ["add cli", "add socket", "adds", "status cli", "ls cli", "status socket",
                 "ls socket", "cancel", "cancel companion", "kill"]
        for key in order:
            if key == "adds":
                self.out.series += adds
                continue
            self.out.series += [d[key] for d in (empty, full) if key in d]
        return self.out

    def _hold_jobs(self, n: int) -> None:
        """`n` × `sleep 100000`: the first runs (so nothing else starts), the rest wait."""
        for _ in range(n):
            self.holds += self.client.ok({**self._add_request(), "jobs": [{"cmd": HOLD}]})["ids"]
        self._wait_running(self.holds[0], time.perf_counter())

    def _wait_running(self, job_id: int, since: float, timeout: float = 30.0) -> float:
        """Seconds from `since` until `status` lists job `job_id` as running."""
        while True:
            reply, _, _ = self.client.timed({"op": "status"})
            now = time.perf_counter()
            if any(job.get("id") == job_id for job in reply["run"].get("running", [])):
                return now - since
            if now - since > timeout:
                raise RuntimeError(f"job {job_id} did not start within {timeout:g} s")

    def _label(self, where: str) -> str:
        return f"{_count(self.queued())} ({where})"

    def _log(self, s: Series) -> None:
        self.bench.log(f"W7 {self.label} {s.measure} @ {s.queued}: median "
                       f"{fmt(_ms(s.median()), 3)} ms over {len(s.samples)}")

    def _kills(self, where: str) -> Series:
        """Kill the running `sleep`; the next one (queued first) starts: until it is listed
        as running in `status` (polled over the socket)."""
        s = Series(self.label, "kill running job → next job running (socket)",
                   self._label(where))
        for _ in range(self.cfg.w7_kills):
            running, waiting = self.holds[0], self.holds[1]
            start = time.perf_counter()
            self.client.ok({"op": "kill", "ids": [running]})
            s.samples.append(self._wait_running(waiting, start))
            self.holds.pop(0)
        fast = sum(x < 0.010 for x in s.samples)
        s.extra = (f"{fast} of {len(s.samples)} under 10 ms: the end of a killed job is "
                   "noticed at once or at the launcher's next look, 50 ms later")
        self._log(s)
        return s

    def _queries(self, where: str) -> dict:
        """`status` and `ls --json` as CLI commands, then `status` and `ls` over the socket."""
        cfg, label, found = self.cfg, self._label(where), {}
        for key, measure, args, reps in (
                ("status cli", "`status` (CLI)", ["status"], cfg.w7_status),
                ("ls cli", "`ls --json` (CLI)", ["ls", "--json"], cfg.w7_ls)):
            s = Series(self.label, measure, label)
            s.samples = [_cli([self.tool.script, *args], self.env, self.tmp)
                         for _ in range(reps)]
            found[key] = s
        for key, measure, op, reps in (
                ("status socket", "status (socket)", "status", cfg.w7_status),
                ("ls socket", "ls (socket)", "ls", cfg.w7_ls)):
            s = Series(self.label, measure, label)
            for _ in range(reps):
                reply, seconds, size = self.client.timed({"op": op})
                if reply.get("ok") is not True:
                    raise RuntimeError(f"{op}: {reply.get('error')}")
                s.samples.append(seconds)
            if op == "ls":
                s.extra = f"{len(reply.get('jobs') or []):,} jobs, {size / MIB:.1f} MiB reply"
            found[key] = s
        for s in found.values():
            self._log(s)
        return found

    def _socket_adds(self, n: int, measure: str) -> Series:
        before = self.queued()
        s = Series(self.label, measure, "")
        request = self._add_request()
        for _ in range(n):
            reply, seconds, _ = self.client.timed(request)
            if reply.get("ok") is not True:
                raise RuntimeError(f"add: {reply.get('error')}")
            s.samples.append(seconds)
        s.queued = f"{_count(before)} → {_count(before + n)}"
        return s

    def _cli_adds(self, n: int, measure: str) -> Series:
        before = self.queued()
        argv = [self.tool.script, "add", "--", "true"]
        s = Series(self.label, measure, f"{_count(before)} → {_count(before + n)}")
        s.samples = [_cli(argv, self.env, self.tmp) for _ in range(n)]
        return s

    def _cancels(self, where: str, with_companion: bool = False) -> list:
        """Cancel `w7_cancels` queued `true` jobs spread over the queue, one at a time;
        `with_companion`: each alternating with a cancel in the companion run (its row
        comes second and is the first one's reference)."""
        n = self.cfg.w7_cancels
        runs = [(self.main, self._label(where), "cancel a queued job (socket)")]
        if with_companion:
            runs.append((self.companion, _count(self.companion.queued()),
                         "cancel a queued job (socket), companion run, alternating"))
        plans = []
        for served, label, measure in runs:
            jobs = served.client.ok({"op": "ls"})["jobs"]
            ids = [j["id"] for j in jobs
                   if j.get("state") == "queued" and j.get("command") == "true"]
            plans.append((served, Series(self.label, measure, label),
                          [ids[(k * len(ids)) // n] for k in range(min(n, len(ids)))]))
        for k in range(max(len(ids) for _, _, ids in plans)):
            for served, series, ids in (plans if k % 2 == 0 else plans[::-1]):
                if k >= len(ids):
                    continue
                reply, seconds, _ = served.client.timed({"op": "cancel", "ids": [ids[k]]})
                if reply.get("ok") is not True:
                    raise RuntimeError(f"cancel {ids[k]}: {reply.get('error')}")
                series.samples.append(seconds)
        found = [series for _, series, _ in plans]
        if len(found) == 2:
            found[0].ref = found[1]
        for series in found:
            self._log(series)
        return found

    def _prefill(self, n: int) -> None:
        """`add --jsonl` batches of `PREFILL_BATCH` `true` lines until `n` more are queued."""
        if n <= 0:
            return
        argv = [self.tool.script, "add", "--jsonl"]
        full = self.tmp / "batch.jsonl"
        full.write_text('{"cmd":"true"}\n' * min(n, PREFILL_BATCH))
        start, left, calls = time.perf_counter(), n, 0
        while left > 0:
            k = min(left, PREFILL_BATCH)
            stdin = full
            if k < PREFILL_BATCH and k != n:
                stdin = self.tmp / "last.jsonl"
                stdin.write_text('{"cmd":"true"}\n' * k)
            _cli(argv, self.env, self.tmp, stdin)
            left -= k
            calls += 1
        elapsed = time.perf_counter() - start
        self.out.notes.append(
            f"{self.label}: prefill of {_count(n)} jobs with {calls} × `add --jsonl` (at most "
            f"{_count(PREFILL_BATCH)} lines each): {elapsed:.1f} s, "
            f"{n / elapsed:,.0f} jobs/s.")
        self.bench.log(f"W7 {self.label}: prefilled {n:,} in {elapsed:.1f} s")

    def _adds(self, empty: dict) -> list:
        """The timed adds: `w7_sample` by the CLI, the middle over the socket, `w7_sample`
        by the CLI again. Each socket add alternates with one into the companion run
        (queue empty but for what these adds bring), which goes first every other time."""
        cfg = self.cfg
        sample = min(cfg.w7_sample, cfg.w7_adds // 4)
        middle = cfg.w7_adds - 2 * sample
        window = min(sample, middle // 2)
        first_cli = self._cli_adds(sample, f"add: `add -- true` (CLI), first {sample:,}")
        base, ref_base = self.queued(), self.companion.queued()
        pids = (self.proc.pid, self.companion.proc.pid)
        big: list = []
        ref: list = []
        cpu: dict = {}  # index of the add -> (CPU ns of the main run, of the companion)
        pairs = [(big, self.client, self._add_request()),
                 (ref, self.companion.client, self.companion.add_request())]
        for i in range(middle + 1):
            if i in (0, window, middle - window, middle):
                cpu[i] = tuple(cpu_ns(pid) or 0 for pid in pids)
            if i == middle:
                break
            for samples, client, request in (pairs if i % 2 == 0 else pairs[::-1]):
                reply, seconds, _ = client.timed(request)
                if reply.get("ok") is not True:
                    raise RuntimeError(f"add: {reply.get('error')}")
                samples.append(seconds)
        last_cli = self._cli_adds(sample, f"add: `add -- true` (CLI), last {sample:,}")
        mid = f"of {middle:,}"
        ref_first = Series(self.label, f"add (socket) into the empty-queue companion run, "
                           f"first {window:,} {mid}",
                           f"{_count(ref_base)} → {_count(ref_base + window)}", ref[:window])
        ref_last = Series(self.label, f"add (socket) into the empty-queue companion run, "
                          f"last {window:,} {mid}", f"{_count(ref_base + middle - window)} → "
                          f"{_count(ref_base + middle)}", ref[-window:])
        first_sock = Series(self.label, f"add (socket), first {window:,} {mid}",
                            f"{_count(base)} → {_count(base + window)}", big[:window],
                            ref_first)
        last_sock = Series(self.label, f"add (socket), last {window:,} {mid}",
                           f"{_count(base + middle - window)} → {_count(base + middle)}",
                           big[-window:], ref_last)
        first_cli.ref = last_cli.ref = empty["add cli"]
        for first, last, how in ((first_sock, last_sock, "socket"),
                                 (first_cli, last_cli, "CLI")):
            r = ratio(last.median(), first.median())
            target = Target("W7", f"flat adds ({how}): median of the last {len(last.samples):,}"
                            f" ≤ 1.2× the first {len(first.samples):,}", fmt_ratio(r),
                            check(r, lambda x: x <= 1.2))
            last.extra = target.cell()
            self.out.targets.append(target)
        ref_last.extra = f"last/first {fmt_ratio(ratio(ref_last.median(), ref_first.median()))}"
        # The same claim without the drift: long queue over empty queue, same moments.
        r = ratio(last_sock.median(), ref_last.median())
        target = Target("W7", f"adds (socket) with {_count(base + middle - window)}+ queued ≤ "
                        "1.2× the empty-queue companion at the same moments (last "
                        f"{window:,}; the benchmark's drift-free form of the target above)",
                        fmt_ratio(r), check(r, lambda x: x <= 1.2))
        last_sock.extra += "; " + target.cell()
        self.out.targets.append(target)
        rows = [first_cli, first_sock, last_sock, ref_first, ref_last, last_cli]
        for s in rows:
            self._log(s)

        def per_add(k: int, a: int, b: int) -> Optional[float]:
            return (cpu[b][k] - cpu[a][k]) / (b - a) / 1000 if b > a else None

        cpu_first = [per_add(k, 0, window) for k in (0, 1)]
        cpu_last = [per_add(k, middle - window, middle) for k in (0, 1)]
        self.out.notes.append(
            f"{self.label}: the {cfg.w7_adds:,} adds = {sample:,} CLI, then {middle:,} over "
            f"one socket connection (median {fmt(_ms(statistics.median(big)), 3)} ms, max "
            f"{fmt(_ms(max(big)), 2)} ms), then {sample:,} CLI. Each socket add alternated "
            f"with one into a second run whose queue held only what those adds brought "
            f"(“companion” rows; the × column of the socket rows is over them, same moments).")
        self.out.notes.append(
            f"{self.label}: server CPU per socket add (/proc/PID/task/*/schedstat, so no "
            f"wake-up latency in it): {fmt(cpu_first[0], 1)} µs for the first {window:,} and "
            f"{fmt(cpu_last[0], 1)} µs for the last {window:,} with the long queue "
            f"({fmt_ratio(ratio(cpu_last[0], cpu_first[0]))}); {fmt(cpu_first[1], 1)} µs and "
            f"{fmt(cpu_last[1], 1)} µs in the empty-queue companion "
            f"(long/empty: {fmt_ratio(ratio(cpu_first[0], cpu_first[1]))} first, "
            f"{fmt_ratio(ratio(cpu_last[0], cpu_last[1]))} last).")
        return rows

    def _memory(self, where: str) -> None:
        """VmRSS and the queue now; the growth per job since the last point is noted."""
        rss, n = vm_rss(self.proc.pid), self.queued()
        if rss is None:
            return
        if self.memory:
            last_where, last_rss, last_n = self.memory[-1]
            if n > last_n:
                self.out.notes.append(
                    f"{self.label}: VmRSS {last_rss / MIB:.1f} MiB → {rss / MIB:.1f} MiB from "
                    f"{_count(last_n)} queued ({last_where}) to {_count(n)} ({where}): "
                    f"{(rss - last_rss) / (n - last_n):,.0f} bytes per job added.")
        self.memory.append((where, rss, n))

    def _resources(self) -> None:
        cfg, pid = self.cfg, self.proc.pid
        n = self.queued()
        time.sleep(0.5)  # let the last replies' work settle
        before = cpu_seconds(pid)
        time.sleep(cfg.w7_idle)
        after = cpu_seconds(pid)
        rss, hwm = vm_rss(pid), vm_hwm(pid)
        idle = None if before is None or after is None else after - before
        self.out.targets.append(Target(
            "W7", f"idle with {_count(n)} queued: 0.00 CPU s over {cfg.w7_idle:g} s "
            "(< 1 clock tick)", f"{fmt(idle, 2)} s", check(idle, lambda x: x < 1 / CLOCK_TICKS)))
        self.out.notes.append(
            f"{self.label} with {_count(n)} queued: VmRSS {fmt((rss or 0) / MIB, 1)} MiB, VmHWM "
            f"{fmt((hwm or 0) / MIB, 1)} MiB (the peak, during `ls`), idle CPU "
            f"{fmt(idle, 2)} s over {cfg.w7_idle:g} s; one process (plus the running job).")


# --- tsp ------------------------------------------------------------------------------


class TspRun:
    """task-spooler with a private socket, filled until it refuses."""

    def __init__(self, bench: Bench, exe: str) -> None:
        self.bench, self.cfg, self.exe = bench, bench.cfg, exe
        self.tmp = Path(tempfile.mkdtemp(prefix="w7-ts-", dir=bench.tmp))
        self.socket = self.tmp / "ts.sock"
        want = self.cfg.w7_prefill + self.cfg.w7_adds
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("TS_") and k != "CUDA_VISIBLE_DEVICES"}
        self.env.update(TMPDIR=str(self.tmp), TS_SOCKET=str(self.socket), TS_SLOTS="1",
                        TS_MAXCONN=str(want + 10))
        self.out = Outcome()
        self.label = "tsp " + _tsp_version(exe, self.env)

    def run(self) -> Outcome:
        cfg, log = self.cfg, self.bench.log
        want = cfg.w7_prefill + cfg.w7_adds
        try:
            self._tsp(*HOLD.split())  # job 0 runs; nothing after it starts
            samples, refusal = [], ""
            for _ in range(want):
                result = timed_run([self.exe, "-B", "true"], DEV_NULL, self.env, self.tmp,
                                   CALL_TIMEOUT)
                if result.seconds is None:
                    refusal = result.error
                    break
                samples.append(result.seconds)
            n = len(samples)
            log(f"W7 {self.label}: {n:,} adds accepted; then {refusal or 'none refused'}")
            k = max(1, min(cfg.w7_empty_cli, n // 2)) if n else 0
            first = Series(self.label, f"add: `tsp true`, first {k:,}",
                           f"0 → {_count(k)} (empty queue)", samples[:k])
            last = Series(self.label, f"add: `tsp true`, last {k:,} before full",
                          f"{_count(n - k)} → {_count(n)}", samples[-k:], first)
            self.out.series += [first, last]
            if refusal:
                last.extra = f"add {n + 1:,}: refused ({refusal})"
                self.out.notes.append(
                    f"{self.label}: refused job {n + 2:,} (the {n + 1:,}th `tsp true` after the "
                    f"running one) with {_count(n)} queued: {refusal}; without `-B`, `tsp` "
                    "blocks there until a job ends. Asked for "
                    f"TS_MAXCONN={self.env['TS_MAXCONN']}: the cap is compiled in (MAXCONN "
                    "1000, and select()'s FD_SETSIZE 1024), TS_MAXCONN can only lower it, and "
                    "the server keeps 5 of its connections for queries. So the prefill of "
                    f"{_count(cfg.w7_prefill)} and the {_count(cfg.w7_adds)} adds were not "
                    f"possible; its rows are its first {k:,} and last {k:,} adds instead.")
            queued_label = f"{_count(n)} (full)" if refusal else _count(n)
            for measure, argv in (("`tsp -l` (its status and ls)", ["-l"]),):
                s = Series(self.label, measure, queued_label)
                s.samples = [self._timed(argv) for _ in range(cfg.w7_status)]
                size = len(subprocess.run([self.exe, *argv], env=self.env, capture_output=True,
                                          timeout=CALL_TIMEOUT).stdout)
                s.extra = f"{size / 1024:.0f} KiB of output"
                self.out.series.append(s)
            s = Series(self.label, "`tsp -r ID` (cancel a queued job)", queued_label)
            for j in range(min(cfg.w7_cancels, n)):
                s.samples.append(self._timed(["-r", str(1 + (j * n) // cfg.w7_cancels)]))
            self.out.series.append(s)
            self._resources(n - len(s.samples))
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            self.out.notes.append(f"{self.label}: W7 stopped: {exc}")
            log(f"W7 {self.label}: ERROR {exc}")
        finally:
            self._stop()
        return self.out

    def _tsp(self, *args: str) -> str:
        done = subprocess.run([self.exe, *args], env=self.env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=CALL_TIMEOUT)
        if done.returncode != 0:
            raise RuntimeError(f"`tsp {' '.join(args)}`: exit {done.returncode}: "
                               f"{done.stderr.strip()}")
        return done.stdout

    def _timed(self, args: Sequence[str]) -> float:
        return _cli([self.exe, *args], self.env, self.tmp)

    def pids(self) -> list:
        """Processes with our TS_SOCKET in their environment: server, clients, the job."""
        mark = f"TS_SOCKET={self.socket}".encode() + b"\0"
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if mark in f.read() + b"\0":
                        found.append(int(entry))
            except OSError:
                continue
        return found

    def _resources(self, queued: int) -> None:
        pids = self.pids()
        rss = sum(vm_rss(p) or 0 for p in pids)
        time.sleep(0.5)
        before = [cpu_seconds(p) for p in pids]
        time.sleep(self.cfg.w7_idle)
        after = [cpu_seconds(p) for p in pids]
        idle = sum(a - b for a, b in zip(after, before) if a is not None and b is not None)
        self.out.notes.append(
            f"{self.label} with {_count(queued)} queued: {len(pids):,} processes (a waiting "
            f"`tsp` client per queued job, the server, the running job and its client), "
            f"VmRSS {rss / MIB:.1f} MiB summed; idle CPU {idle:.2f} s over "
            f"{self.cfg.w7_idle:g} s.")

    def _stop(self) -> None:
        """`tsp -K`, then SIGKILL, by pid, whatever still has our TS_SOCKET (the job too)."""
        try:
            subprocess.run([self.exe, "-K"], env=self.env, capture_output=True,
                           timeout=CALL_TIMEOUT)
        except (OSError, subprocess.SubprocessError):
            pass
        for _ in range(3):
            left = self.pids()
            if not left:
                return
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.2)


def _tsp_version(exe: str, env: dict) -> str:
    try:
        out = subprocess.run([exe, "-V"], env=env, capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    words = out.split()
    return next((w.lstrip("v") for w in words if w[:1] == "v" and w[1:2].isdigit()), "?")


# --- the section ----------------------------------------------------------------------


def _row(s: Series) -> list:
    r = ratio(s.median(), s.ref.median()) if s.ref else None
    return [s.tool, s.measure, s.queued, str(len(s.samples)), fmt(_ms(s.median()), 3),
            fmt(_ms(s.p90()), 3), fmt(_ms(max(s.samples)) if s.samples else None, 3),
            fmt_ratio(r), s.extra or "—"]


def _limits_note() -> str:
    try:
        pid_max = Path("/proc/sys/kernel/pid_max").read_text().strip()
    except OSError:
        pid_max = "?"
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    shown = "unlimited" if nproc == resource.RLIM_INFINITY else f"{nproc:,}"
    return (f"This machine: pid_max {pid_max}, `ulimit -u` {shown}, `ulimit -n` {files:,}: "
            "a queue of 100,000 waiting `tsp` processes could not exist here even without "
            "tsp's own cap.")


def w7_queue(bench: Bench) -> Section:
    """W7: adds, queries, cancel and kill -> next start with a long queue; ours and tsp."""
    cfg = bench.cfg
    sec = Section("W7", "a long queue of added jobs",
                  [f"Ours: `simple_gpu_scheduler --gpus 0 --shell /bin/sh --serve --name "
                   f"{RUN_NAME} --control-dir PRIVATE --lock-dir PRIVATE < /dev/null`, first "
                   f"job `{HOLD}` (so no other starts); {_count(cfg.w7_adds)} adds of `true` "
                   f"into a queue of {_count(cfg.w7_prefill)} (prefilled with `add --jsonl`): "
                   f"the first and the last {_count(cfg.w7_sample)} with the CLI command "
                   "`simple_gpu_scheduler add -- true` (one process each, spawn to exit), "
                   "the ones between over one persistent socket connection (request to "
                   "reply), each alternating with an add into a companion run whose queue "
                   "stays near empty. “× empty queue”: over the same measure with a "
                   "near-empty queue: the companion's adds at the same moments for the "
                   "socket adds; otherwise the first rows of each measure, taken in this "
                   "run before the prefill. tsp: task-spooler with a private `TS_SOCKET` "
                   f"and `TMPDIR`, `TS_SLOTS=1`, first job `tsp {HOLD}`, then `tsp -B true` "
                   "until it refuses. Latencies in ms. Method: benchmarks/README.md."],
                  ["tool", "measure", "queued", "n", "median ms", "p90 ms", "max ms",
                   "× empty queue", "target / notes"])
    ours = bench.tool("ours")
    outcomes = []
    exe = shutil.which("tsp")
    if exe is None:
        sec.notes.append("tsp: skipped: task-spooler is not installed "
                         "(`apt-get install task-spooler`; the command is `tsp`)")
    else:
        bench.log("W7: task-spooler")
        outcomes.append(TspRun(bench, exe).run())
    if ours is None:
        sec.notes += bench.skip_notes(["ours"]) or ["ours: not selected"]
    else:
        bench.log(f"W7: {ours.label}")
        outcomes.insert(0, OursRun(bench, ours).run())
    for out in outcomes:
        sec.rows += [_row(s) for s in out.series]
        sec.targets += out.targets
        sec.notes += out.notes
        sec.errors += out.errors
    if exe is not None:
        sec.notes.append(_limits_note())
    return sec
