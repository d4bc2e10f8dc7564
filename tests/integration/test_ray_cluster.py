"""``--ray``: the command stream on a real local Ray cluster of four nodes.

One cluster for the module (`tests/ray_cluster.py`): four ``ray start``
nodes on this machine with 2 logical GPUs each, so 8 slots, and a Ray Client
server beside the head, started once (5 to 15 s) and torn down after,
checked to leave no process behind. Two nodes report this machine's address,
as every node of a one-machine cluster does, so their labels carry node ids;
the second reports 127.0.0.2 and the third 127.0.0.3. Many tests run twice
(`via`): with the head's address, and through Ray Client. Every run goes
through the installed command; what each job saw (its node, its GPUs, when
it ran) it writes to a file. The node-death test stops the second node (and,
through Ray Client, the third), so it comes last.

Where Ray cannot be imported these tests skip, saying so; CI installs the
``ray`` extra, so there they run.
"""

from __future__ import annotations

import os
import re
import signal
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Union

import pytest
from harness import (
    Sgs,
    child_env,
    live_pids,
    poll_until,
    rows_of,
    run_sgs,
    sgs_lines,
    unique_sleep,
    verb,
    verb_json,
)

try:
    import ray  # noqa: F401  (only whether it is there)
except ImportError:  # pragma: no cover - CI installs the extra
    pytest.skip('Ray is not installed (pip install -e ".[ray]")', allow_module_level=True)

from ray_cluster import LocalCluster

GPUS_PER_NODE = 2
NODES = 4
SLOTS = NODES * GPUS_PER_NODE
#: The second and third nodes report addresses of their own: the node-death
#: test stops them, one for each `via`. A driver joins the cluster through a
#: node on its machine, and dies with that node; it picks the node by the
#: address the last `ray start` on the machine recorded (the session's
#: node_ip_address.json), so the last node started, the fourth, has this
#: machine's address (see LocalCluster.node_ips).
VICTIMS = {"gcs": (1, "127.0.0.2"), "client": (2, "127.0.0.3")}
#: The victims stopped so far.
STOPPED: List[int] = []


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    root = tempfile.mkdtemp(prefix="sgsray-")
    local = LocalCluster(root, gpus_per_node=GPUS_PER_NODE, nodes=NODES,
                         node_ips=dict(VICTIMS.values()), client=True)
    local.start()
    try:
        yield local
    finally:
        local.stop()  # raises if any process of the cluster is left


@pytest.fixture(params=["gcs", "client"])
def via(request: pytest.FixtureRequest, cluster: LocalCluster) -> str:
    """The address a run joins the cluster by: the head's GCS (the driver on
    this machine, a node of the cluster), or the Ray Client server's ray://
    (the driver on the head, this process its client; `cluster_client`)."""
    return cluster.address if request.param == "gcs" else cluster.client_address


def sleeps(mark: str) -> List[int]:
    """Live ``sleep MARK`` processes (the shells and keepers that name MARK in
    their command lines are not counted)."""
    return [pid for pid in live_pids(mark) if _argv(pid) == [b"sleep", mark.encode()]]


def _argv(pid: int) -> List[bytes]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().split(b"\0")[:-1]
    except OSError:
        return []


def ray_env(**extra: str) -> Dict[str, str]:
    env = child_env(extra)
    env.pop("RAY_ADDRESS", None)
    return env


def _address(target: Union[LocalCluster, str]) -> str:
    return target if isinstance(target, str) else target.address


def ray_run(target: Union[LocalCluster, str], args: List[str], input: str, cwd: Path,
            timeout: float = 90.0, **env: str):
    return run_sgs(["--ray", _address(target), *args], input.encode(), cwd=cwd,
                   env=ray_env(**env), timeout=timeout)


def start_ray(target: Union[LocalCluster, str], args: List[str], cwd: Path,
              env: Optional[Dict[str, str]] = None, **kwargs: object) -> Sgs:
    return Sgs(["--ray", _address(target), *args], cwd, env=ray_env(**(env or {})),
               **kwargs)  # type: ignore


Runs = Dict[str, Dict[str, Tuple[int, str, str, int]]]


class Seen:
    """What each job wrote: ``LABEL start|end NS NODE GPUS JOBID`` lines."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "seen.txt"

    def command(self, label: str, seconds: float = 0.0, middle: str = "") -> str:
        line = f'{label} %s $(date +%%s%%N) "$SGS_NODE" "$CUDA_VISIBLE_DEVICES" $SGS_JOB_ID'
        sleep = f"sleep {seconds}; " if seconds else ""
        return (f"echo {line % 'start'} >> {self.path}; {middle}{sleep}"
                f"echo {line % 'end'} >> {self.path}")

    def runs(self) -> Runs:
        """label -> {"start"/"end": (ns, node, gpus, job id)}."""
        runs: Runs = {}
        for line in self.path.read_text().splitlines():
            label, kind, ns, node, gpus, job = line.split()
            assert kind not in runs.get(label, {}), f"{label} ran twice"
            runs.setdefault(label, {})[kind] = (int(ns), node, gpus, int(job))
        return runs


def overlapping(runs: Runs) -> Dict[Tuple[str, str], int]:
    """(node, gpu) -> the most jobs that ran on it at one instant."""
    events: Dict[Tuple[str, str], List[Tuple[int, int]]] = {}
    for run in runs.values():
        start, node, gpus, _ = run["start"]
        for gpu in gpus.split(","):
            events.setdefault((node, gpu), []).extend([(start, 1), (run["end"][0], -1)])
    peaks = {}
    for key, evs in events.items():
        level = peak = 0
        for _, delta in sorted(evs, key=lambda e: (e[0], e[1])):
            level += delta
            peak = max(peak, level)
        peaks[key] = peak
    return peaks


def test_jobs_spread_over_both_nodes_one_per_gpu(via: str, tmp_path: Path) -> None:
    seen = Seen(tmp_path)
    count = 2 * SLOTS
    jobs = [seen.command(f"j{i}", 1.0) for i in range(count)]
    result = ray_run(via, ["--joblog", "log.tsv"], "\n".join(jobs) + "\n", tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    runs = seen.runs()
    assert len(runs) == count
    nodes = {run["start"][1] for run in runs.values()}
    assert len(nodes) == NODES, nodes  # every node got jobs
    # Two nodes share this machine's address: their labels carry node ids.
    shared = {node for node in nodes if node not in ("127.0.0.2", "127.0.0.3")}
    assert len(shared) == 2, nodes
    assert all(re.fullmatch(r"[\d.]+/[0-9a-f]{8,}", node) for node in shared), nodes
    assert max(overlapping(runs).values()) == 1  # never two jobs on one GPU of one node
    for run in runs.values():
        assert run["start"][2] in ("0", "1")
    # The job log's Host: the job's GPU and its node.
    rows = rows_of(tmp_path / "log.tsv")
    assert sorted(r.seq for r in rows) == list(range(1, count + 1))
    for row in rows:
        start = runs[f"j{row.seq - 1}"]["start"]
        assert row.host == f"gpu:{start[2]}@{start[1]}"
        assert row.exitval == 0


def test_jobs_per_gpu_two_share_one_gpu(cluster: LocalCluster, tmp_path: Path) -> None:
    seen = Seen(tmp_path)
    jobs = [seen.command(f"j{i}", 2.0) for i in range(2 * SLOTS)]
    result = ray_run(cluster, ["--jobs-per-gpu", "2"], "\n".join(jobs) + "\n", tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    peaks = overlapping(seen.runs())
    assert max(peaks.values()) == 2, peaks  # two jobs on one GPU at once
    assert all(peak <= 2 for peak in peaks.values())


def test_input_order_holds_with_back_pressure(via: str, tmp_path: Path) -> None:
    seen = Seen(tmp_path)
    count = 16
    jobs = [seen.command(f"j{i:02d}", 0.3) for i in range(count)]
    result = ray_run(via, [], "\n".join(jobs) + "\n", tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    runs = seen.runs()
    by_start = sorted(runs, key=lambda label: runs[label]["start"][0])
    for place, label in enumerate(by_start):
        # Never more than the cluster's slots in flight, so a job can start at
        # most SLOTS - 1 places before its turn in the input.
        assert int(label[1:]) < place + SLOTS, by_start
    events = sorted([(r["start"][0], 1) for r in runs.values()]
                    + [(r["end"][0], -1) for r in runs.values()])
    level = peak = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    assert peak <= SLOTS


def test_output_arrives_while_the_job_runs(via: str, tmp_path: Path) -> None:
    marker = tmp_path / "go"
    sgs = start_ray(via, ["--tag"], tmp_path)
    sgs.write(f"echo first; while [ ! -e {marker} ]; do sleep 0.05; done; echo second\n".encode())
    sgs.close_stdin()
    # The first line is printed here before the job can end: it waits for us.
    line = poll_until(lambda: re.search(rb"^\[1\|([\d./a-f]+) gpu (\d)\] first$",
                                        sgs.stdout(), re.M), 30,
                      what=lambda: f"the first line; stderr:\n{sgs.stderr()}")
    assert b"second" not in sgs.stdout()
    marker.touch()
    assert sgs.wait(60) == 0, sgs.stderr()
    assert re.search(rb"\] second$", sgs.stdout(), re.M)
    assert line.group(1).decode() in sgs.stderr()  # the same node the messages name


def test_drain_then_terminate_leaves_nothing_on_any_node(via: str,
                                                        tmp_path: Path) -> None:
    first, second = unique_sleep(), unique_sleep()
    seen = Seen(tmp_path)
    jobs = [f"sh -c 'sleep {first} & setsid sleep {second} & wait'"] * SLOTS + \
        [seen.command("never")]
    sgs = start_ray(via, ["--kill-grace", "2", "--joblog", "log.tsv"], tmp_path)
    sgs.write(("\n".join(jobs) + "\n").encode())
    sgs.close_stdin()
    poll_until(lambda: len(sleeps(second)) == SLOTS, 60,
               what=lambda: f"every job's setsid sleep; stderr:\n{sgs.stderr()}")
    sgs.signal(signal.SIGINT)
    sgs.wait_stderr("draining", 10)
    assert sgs.alive()  # the first Ctrl-C lets running jobs finish
    sgs.signal(signal.SIGINT)
    sgs.wait_stderr("terminating", 10)
    assert sgs.wait(60) == 130
    poll_until(lambda: not sleeps(first) and not sleeps(second), 15,
               what=lambda: f"no job process left: {sleeps(first) + sleeps(second)}")
    assert not seen.path.exists()  # the queued job never started
    lines = sgs_lines(sgs.stderr())
    assert any(line.startswith(f"not started: job {SLOTS + 1}") for line in lines), lines
    rows = rows_of(tmp_path / "log.tsv")
    assert sorted(r.seq for r in rows) == list(range(1, SLOTS + 1))
    assert all(r.signal == signal.SIGTERM for r in rows), rows

    # --resume-failed runs what did not succeed: the terminated jobs and the
    # one never started, now quick ones.
    again = ["true"] * SLOTS + [seen.command("never")]
    result = ray_run(via, ["--joblog", "log.tsv", "--resume-failed"],
                     "\n".join(again) + "\n", tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert "never" in seen.runs()
    rows = rows_of(tmp_path / "log.tsv")
    assert sorted(r.seq for r in rows if r.exitval == 0) == list(range(1, SLOTS + 2))


def test_sigkill_of_the_scheduler_then_resume_failed(via: str,
                                                     tmp_path: Path) -> None:
    mark = unique_sleep()
    seen = Seen(tmp_path)
    jobs = ["true", f"sh -c 'sleep {mark} & setsid sleep {mark}; :'",
            seen.command("later")]
    # Through Ray Client the driver is on the head and outlives us: its session
    # ends once we have been gone for the reconnect grace period (30 s unless
    # set), and with it the mailbox, which each job's task looks at every few
    # seconds (cluster_client).
    grace = {"RAY_CLIENT_RECONNECT_GRACE_PERIOD": "2"} if via.startswith("ray://") else {}
    sgs = start_ray(via, ["--joblog", "log.tsv", "--kill-grace", "2"], tmp_path, env=grace)
    sgs.write(("\n".join(jobs) + "\n").encode())
    poll_until(lambda: len(sleeps(mark)) == 2 and len(rows_of(tmp_path / "log.tsv")) >= 1
               and seen.path.exists(), 60, what=lambda: f"the jobs; stderr:\n{sgs.stderr()}")
    sgs.proc.kill()
    sgs.proc.wait(10)
    # With the scheduler gone Ray ends its workers (or the task sees the
    # mailbox gone), and each job's keeper then ends the job's whole tree,
    # setsid'ed part included.
    poll_until(lambda: not sleeps(mark), 45,
               what=lambda: f"the killed run's jobs to end: {sleeps(mark)}")
    rows = rows_of(tmp_path / "log.tsv")
    done = {r.seq for r in rows}
    assert 1 in done and 2 not in done
    result = ray_run(via, ["--joblog", "log.tsv", "--resume-failed", "-v"],
                     "true\ntrue\n" + seen.command("later") + "\n", tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    lines = sgs_lines(result.stderr.decode())
    assert any(line.startswith("job 1 skipped") for line in lines), lines
    assert {r.seq for r in rows_of(tmp_path / "log.tsv") if r.exitval == 0} >= {1, 2}


def test_timeout_retries_and_signals(via: str, tmp_path: Path) -> None:
    flag = tmp_path / "tried"
    jobs = [
        "sleep 30",  # timed out
        f"if [ -e {flag} ]; then exit 0; fi; touch {flag}; exit 5",  # fails once
        "kill -TERM $$",  # killed by a signal
    ]
    result = ray_run(via, ["--timeout", "1", "--retries", "1", "--kill-grace", "1",
                               "--joblog", "log.tsv"], "\n".join(jobs) + "\n", tmp_path)
    assert result.returncode == 1
    text = result.stderr.decode()
    assert re.search(r"job 1 failed on gpu \d of \S+ after .*timed out after 1(\.0)?s", text), text
    assert "job 2 failed" in text and "will retry" in text
    assert re.search(r"job 2 finished on gpu \d of \S+", text), text
    assert re.search(r"job 3 failed on .*killed by SIGTERM", text), text
    rows = rows_of(tmp_path / "log.tsv")
    assert [(r.seq, r.exitval) for r in rows if r.seq == 2] == [(2, 5), (2, 0)]


def test_control_socket_status_ls_kill_log(via: str, tmp_path: Path) -> None:
    name = f"ray-{os.getpid()}"
    sgs = start_ray(via, ["--name", name, "--tag"], tmp_path)
    sgs.write(b"echo hello from $SGS_NODE; sleep 60\nsleep 60\n")
    sgs.close_stdin()
    poll_until(lambda: len(re.findall(r"started on", sgs.stderr())) == 2, 60,
               what=lambda: sgs.stderr())
    status, = verb_json("status", "--run", name)
    running = {job["id"]: job for job in status["running"]}
    assert set(running) == {1, 2}
    assert all(job["host"] and job["gpus"] for job in running.values()), running
    listing = verb("ls", "--run", name)
    assert listing.returncode == 0 and "@" in listing.stdout, listing.stdout
    # Kept output (--tag): it comes back from the node as the job prints it.
    poll_until(lambda: "hello from" in verb("log", "--run", name, "1").stdout, 30,
               what=lambda: f"job 1 output in log; stdout {sgs.stdout()!r} stderr {sgs.stderr()}")
    sgs.signal(signal.SIGUSR1)  # the status table names the node
    sgs.wait_stderr(r"^\[sgs\]\s+1\s+gpu \d of [\d./a-f]+\s", 10)
    assert verb("kill", "--run", name, "1").returncode == 0
    sgs.wait_stderr(r"job 1 failed on .*killed by SIGTERM", 30)
    assert verb("kill", "--run", name, "2").returncode == 0
    assert sgs.wait(60) == 1


def test_log_dir_is_on_the_scheduler_s_machine(cluster: LocalCluster, tmp_path: Path) -> None:
    result = ray_run(cluster, ["--log-dir", "logs"], "echo out; echo err >&2\n", tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "logs" / "1.out").read_text() == "out\n"
    assert (tmp_path / "logs" / "1.err").read_text() == "err\n"
    assert b"out" not in result.stdout


def test_a_job_no_node_can_hold_is_rejected_at_once(cluster: LocalCluster,
                                                    tmp_path: Path) -> None:
    started = time.monotonic()
    result = ray_run(cluster, ["--gpus-per-job", "3"], "echo never\n", tmp_path)
    assert result.returncode == 1
    assert time.monotonic() - started < 30
    text = result.stderr.decode()
    assert "needs 3 GPUs on one node, and the largest node of the cluster has 2" in text, text
    assert b"never" not in result.stdout


def test_list_gpus_lists_the_nodes(cluster: LocalCluster, via: str, tmp_path: Path) -> None:
    result = run_sgs(["--list-gpus", "--ray", via], cwd=tmp_path, env=ray_env())
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert lines[0].split() == ["NODE", "NODE_ID", "GPUS", "CPUS"]
    assert len(lines) == 1 + NODES
    assert {line.split()[1] for line in lines[1:]} == set(cluster.node_ids)
    assert "127.0.0.2" in {line.split()[0] for line in lines[1:]}
    assert all(line.split()[2] == "2" for line in lines[1:])


@pytest.mark.parametrize("address, message", [
    ("127.0.0.1:1", "cannot reach the Ray cluster"),
    ("nonsense", "not an address"),
    ("ray://127.0.0.1:1", "cannot reach the Ray cluster"),
])
def test_a_bad_address_is_one_line(tmp_path: Path, address: str, message: str) -> None:
    started = time.monotonic()
    result = run_sgs(["--ray", address], b"echo never\n", cwd=tmp_path, env=ray_env())
    assert result.returncode == 2
    assert time.monotonic() - started < 20
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert b"never" not in result.stdout


def test_without_ray_installed_it_says_how_to_install(tmp_path: Path) -> None:
    # Ray made unimportable for this run only (no other way to uninstall it
    # for one process): a `ray` package first on the path that fails to import.
    fake = tmp_path / "noray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    env = ray_env(PYTHONPATH=str(fake.parent))
    result = run_sgs(["--ray"], b"echo never\n", cwd=tmp_path, env=env)
    assert result.returncode == 2
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert 'pip install "simple_gpu_scheduler[ray]"' in lines[0]


def test_local_only_options_are_refused(tmp_path: Path) -> None:
    result = run_sgs(["--ray", "--gpus", "0,1"], b"true\n", cwd=tmp_path, env=ray_env())
    assert result.returncode == 2
    assert "--gpus does not go with --ray" in result.stderr.decode()


def test_a_node_dying_under_a_job_fails_that_attempt_and_it_retries(
        cluster: LocalCluster, via: str, tmp_path: Path) -> None:
    """Last: it stops a node for good (a node for each `via`)."""
    victim, victim_address = VICTIMS["client" if via.startswith("ray://") else "gcs"]
    nodes = NODES - len(STOPPED)
    slots = nodes * GPUS_PER_NODE
    mark = unique_sleep()
    seen = Seen(tmp_path)
    # Every slot is taken by a long job, so some of them are on the victim node.
    jobs = [seen.command(f"j{i}", 0, middle=f"[ -e {tmp_path}/again-$SGS_JOB_ID ] || "
                         f"{{ touch {tmp_path}/again-$SGS_JOB_ID; sleep {mark}; }}; ")
            for i in range(slots)]
    sgs = start_ray(via, ["--retries", "1", "--joblog", "log.tsv"], tmp_path)
    sgs.write(("\n".join(jobs) + "\n").encode())
    sgs.close_stdin()
    poll_until(lambda: len(sleeps(mark)) == slots, 60, what=lambda: sgs.stderr())
    on_victim = [run["start"][3] for run in seen.runs().values()
                 if run["start"][1] == victim_address]
    assert on_victim, seen.runs()
    STOPPED.append(victim)
    cluster.stop_node(victim)
    # The attempts there are lost and run again on another node; the others' own
    # jobs go on sleeping until we let them end.
    for job_id in on_victim:
        sgs.wait_stderr(rf"job {job_id} failed on .*lost: .*(node|worker).*will retry", 60)
    poll_until(lambda: len(sleeps(mark)) <= slots - len(on_victim), 30,
               what=lambda: f"the lost node's jobs to end: {sleeps(mark)}")
    # Once Ray has the node dead (about 14 s), the run has fewer slots.
    sgs.wait_stderr(rf"the Ray cluster has {nodes - 1} node\(s\) and "
                    rf"{slots - GPUS_PER_NODE} GPU\(s\) now", 60)
    for pid in sleeps(mark):
        os.kill(pid, signal.SIGTERM)
    assert sgs.wait(90) == 0, sgs.stderr()
    for job_id in on_victim:
        assert re.search(rf"job {job_id} finished", sgs.stderr())
