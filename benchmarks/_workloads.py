"""The timed workloads (W1, W2, W5, W6) and what every workload shares (W3, W4 and W7
live in `_scheduler_workloads` and `_queue_workload`).

Each workload runs its variants interleaved and returns a report `Section`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from _measure import timed_run
from _report import Section, Target, fmt, fmt_ratio, ratio, summarize
from _tools import LOGIN_SHELL, Tool


@dataclass
class Config:
    """Workload sizes; `quick()` gives the seconds-long smoke-test sizes."""

    repeat: int = 3
    w1_jobs: int = 2000
    w1_slots: int = 4
    w2_jobs: int = 400
    w2_slots: int = 8
    w2_sleep: float = 0.05
    w3_lines: tuple = (1_000_000, 10_000_000)
    w3_first_job: float = 3.0
    w4_warmup: float = 1.0
    w4_idle: float = 10.0
    w5_reps: int = 20
    #: W7 (see `_queue_workload`): jobs queued before the timed adds, the timed adds,
    #: the CLI sample at each end of them, the empty-queue reference (socket adds,
    #: CLI adds), repetitions of the queries, of cancel, and of kill -> next start.
    w7_prefill: int = 100_000
    w7_adds: int = 10_000
    w7_sample: int = 1_000
    w7_empty: int = 1_000
    w7_empty_cli: int = 200
    w7_status: int = 20
    w7_ls: int = 5
    w7_cancels: int = 20
    w7_kills: int = 5
    w7_idle: float = 5.0
    timeout: float = 600.0

    @classmethod
    def quick(cls, repeat: int = 2) -> "Config":
        """Tiny sizes: the whole run takes seconds."""
        return cls(repeat=repeat, w1_jobs=50, w2_jobs=16, w3_lines=(10_000, 100_000),
                   w3_first_job=1.0, w4_warmup=0.3, w4_idle=1.0, w5_reps=3,
                   w7_prefill=2_000, w7_adds=400, w7_sample=50, w7_empty=100,
                   w7_empty_cli=20, w7_status=3, w7_ls=2, w7_cancels=5, w7_kills=2,
                   w7_idle=1.0, timeout=60.0)


@dataclass
class Bench:
    """Everything a workload needs: tools, skip notes, sizes, scratch dir, logger."""

    tools: list
    skipped: dict
    cfg: Config
    tmp: Path
    log: Callable[[str], None]

    def tool(self, key: str) -> Optional[Tool]:
        """The measured tool with this key, or None."""
        return next((t for t in self.tools if t.key == key), None)

    def skip_notes(self, keys: Sequence[str]) -> list:
        """`key: why it was skipped` for each of `keys` that was skipped."""
        return [f"{k}: {self.skipped[k]}" for k in keys if k in self.skipped]


@dataclass
class Variant:
    """One row of a timed table: a label and the command it times."""

    label: str
    argv: list
    env: dict
    prepare: Optional[Callable[[], None]] = None
    samples: list = field(default_factory=list)
    errors: list = field(default_factory=list)


def rotated(items: Sequence, rep: int) -> list:
    """Repetition `rep` runs the items in order rotated left by `rep`."""
    k = rep % len(items) if items else 0
    return list(items[k:]) + list(items[:k])


def run_interleaved(bench: Bench, key: str, variants: list, stdin: Path, reps: int) -> None:
    """A B C, B C A, C A B, ...: every variant once per repetition, order rotated."""
    for rep in range(reps):
        for v in rotated(variants, rep):
            if v.prepare:
                v.prepare()
            result = timed_run(v.argv, stdin, v.env, bench.tmp, bench.cfg.timeout)
            if result.seconds is None:
                v.errors.append(result.error)
                bench.log(f"{key} rep {rep + 1}/{reps} {v.label}: ERROR {result.error}")
            else:
                v.samples.append(result.seconds)
                bench.log(f"{key} rep {rep + 1}/{reps} {v.label}: {result.seconds:.3f} s")


def _stdin_file(bench: Bench, name: str, line: str, count: int) -> Path:
    """A file of `count` copies of `line`: every tool reads the same stdin."""
    path = bench.tmp / name
    path.write_text(f"{line}\n" * count)
    return path


def _error_notes(section: Section, variants: Sequence[Variant]) -> None:
    """Failed runs become notes and count as errors (the script then exits 1)."""
    for v in variants:
        if v.errors:
            section.errors += len(v.errors)
            section.notes.append(f"{v.label}: {len(v.errors)} failed run(s): {v.errors[0]}")


def _median(variants: Sequence[Variant], label: str) -> Optional[float]:
    """Median seconds of the variant with this label, or None."""
    v = next((v for v in variants if v.label == label), None)
    s = summarize(v.samples) if v else None
    return s.median if s else None


def _labels(bench: Bench) -> dict:
    return {t.key: t.label for t in bench.tools}


def check(value: Optional[float], ok: Callable[[float], bool]) -> Optional[bool]:
    """Whether `value` meets a target; None when it was not measured."""
    return None if value is None else ok(value)


def login_shell_variants(bench: Bench, slots: int, with_xargs: bool) -> list:
    """The "login shell default" rows, reported apart from the like-for-like ones.

    Ours without `--shell` and with `SHELL=/bin/bash`: each line runs as `bash -c`;
    with `with_xargs`, xargs with `bash -c` too, the same shell's floor. None when
    /bin/bash is missing (a note says so). 0.1.4 ignores `$SHELL` (`shell=True`).
    """
    if not os.access(LOGIN_SHELL, os.X_OK):
        return []
    found = []
    xargs, ours = bench.tool("xargs"), bench.tool("ours")
    if with_xargs and xargs and ours:
        found.append(Variant(f"{xargs.label}, `bash -c` (ref. for the next row)",
                             xargs.argv(slots, shell=LOGIN_SHELL), xargs.environ()))
    if ours:
        found.append(Variant(f"{ours.label}, login shell default (`SHELL={LOGIN_SHELL}`, "
                             "no `--shell`)", ours.argv(slots, shell=None),
                             ours.login_default_env()))
    return found


def login_shell_notes(bench: Bench, variants: Sequence[Variant], extra: Sequence[Variant],
                      ratios: bool = True) -> list:
    """What the login-shell rows mean, and their ratios to the like-for-like rows."""
    if not os.access(LOGIN_SHELL, os.X_OK):
        return [f"login shell default: not measured ({LOGIN_SHELL} is missing)"]
    ours, xargs = bench.tool("ours"), bench.tool("xargs")
    if ours is None or not extra:
        return []
    notes = [f"The rows marked “login shell default” are not like for like: ours runs "
             f"without `--shell` and with `SHELL={LOGIN_SHELL}`, so every line runs as "
             f"`bash -c LINE`, as it would for a bash user who does not pass `--shell`; "
             "0.1.4 has no such row, as it runs lines with `subprocess` `shell=True`, which "
             "is /bin/sh whatever `$SHELL` says (its row above is also its default)."]
    if not ratios:
        return notes
    default = _median(extra, extra[-1].label)
    parts = []
    for ref, label in ((xargs, "xargs -P (`sh -c`)"), (ours, "ours with `--shell /bin/sh`")):
        r = ratio(default, _median(variants, ref.label)) if ref else None
        if r:
            parts.append(f"{fmt_ratio(r)} {label}")
    if len(extra) == 2:
        r = ratio(default, _median(extra, extra[0].label))
        if r:
            parts.append(f"{fmt_ratio(r)} xargs -P with `bash -c`")
    if parts:
        notes.append(f"login shell default (`SHELL={LOGIN_SHELL}`): " + ", ".join(parts) + ".")
    return notes


# --- W1 and W6: throughput ------------------------------------------------------------------


def _throughput_rows(variants, ref_label, jobs, targets_for, ref_from=None) -> list:
    """Table rows for W1/W6: times, commands per second, ratio to `ref_label`, targets.

    The reference is looked up in `ref_from` (default: `variants` themselves).
    """
    ref = _median(variants if ref_from is None else ref_from, ref_label)
    rows = []
    for v in variants:
        s = summarize(v.samples)
        med = s.median if s else None
        targets = targets_for(v.label)
        rows.append([v.label, fmt(med), fmt(s and s.min), fmt(s and s.max),
                     fmt(jobs / med if med else None, 0), fmt_ratio(ratio(med, ref)),
                     "; ".join(t.cell() for t in targets) or "—"])
    return rows


def w1_throughput(bench: Bench) -> Section:
    """Many trivial jobs: the per-job cost of each tool."""
    cfg = bench.cfg
    n, k = cfg.w1_jobs, cfg.w1_slots
    sec = Section("W1", "throughput", [f"{n} × `true` on {k} slots, {cfg.repeat} repetitions, "
                  "interleaved. Wall time from spawn to exit; commands per second = "
                  f"{n} / median."],
                  ["tool", "median s", "min s", "max s", "cmds/s", "× xargs", "target"])
    stdin = _stdin_file(bench, "w1.in", "true", n)
    variants = [Variant(t.label, t.argv(k), t.environ()) for t in bench.tools]
    extra = login_shell_variants(bench, k, with_xargs=True)
    run_interleaved(bench, "W1", variants + extra, stdin, cfg.repeat)
    labels = _labels(bench)
    xargs, par, ours = (labels.get(key) for key in ("xargs", "parallel", "ours"))

    def targets_for(label: str) -> list:
        if label != ours:
            return []
        mine = _median(variants, ours)
        r = ratio(mine, _median(variants, xargs)) if xargs else None
        speedup = ratio(_median(variants, par), mine) if par else None
        found = [Target("W1", "≤ 1.15× xargs -P 4 (both `sh -c`)",
                        fmt_ratio(r) if r else "xargs not measured",
                        check(r, lambda x: x <= 1.15)),
                 Target("W1", "≥ 3× faster than GNU parallel",
                        f"{speedup:.2f}× faster" if speedup else "parallel not measured",
                        check(speedup, lambda x: x >= 3.0))]
        sec.targets.extend(found)
        return found

    sec.rows = _throughput_rows(variants, xargs, n, targets_for)
    # Their × xargs is over xargs' like-for-like (`sh -c`) median.
    sec.rows += _throughput_rows(extra, xargs, n, lambda label: [], ref_from=variants)
    sec.notes += login_shell_notes(bench, variants, extra)
    sec.notes += bench.skip_notes(["xargs", "parallel", "orig", "ours"])
    _error_notes(sec, variants + extra)
    return sec


def w6_features(bench: Bench) -> Section:
    """W1 for ours with `--tag` and `--joblog` on, against ours plain."""
    cfg = bench.cfg
    n, k = cfg.w1_jobs, cfg.w1_slots
    ours = bench.tool("ours")
    sec = Section("W6", "features on: `--tag` and `--joblog`",
                  [f"W1 again ({n} × `true` on {k} slots, {cfg.repeat} repetitions, "
                   "interleaved) for ours with and without the features people turn on: "
                   "each alone, then both (the target). Reference: ours as in W1, measured "
                   "in this same workload."],
                  ["tool", "median s", "min s", "max s", "cmds/s", "× ours (W1 setup)",
                   "target"])
    if ours is None:
        sec.notes += bench.skip_notes(["ours"]) or ["ours: not selected"]
        return sec
    if "--joblog" not in ours.features:
        sec.notes.append("the job log was not available (our scheduler exits 2 on "
                         "`--joblog`): measured with "
                         + ("`--tag` alone" if ours.features else "no feature flags at all"))
    # Each flag alone too, when both exist, so the table shows which one costs.
    combos = [ours.features] if len(ours.features) < 2 else [
        (flag,) for flag in ours.features] + [ours.features]
    joblog = bench.tmp / "w6.joblog"
    stdin = _stdin_file(bench, "w6.in", "true", n)
    variants = [Variant(ours.label, ours.argv(k), ours.environ())]
    for combo in combos:
        extra = [a for flag in combo
                 for a in ((flag, str(joblog)) if flag == "--joblog" else (flag,))]
        variants.append(Variant(f"{ours.label} {' '.join(combo) or '(no features)'}",
                                ours.argv(k, extra), ours.environ(),
                                prepare=lambda: joblog.unlink(missing_ok=True)))
    feat_label = variants[-1].label
    if bench.tool("xargs"):
        xargs = bench.tool("xargs")
        variants.insert(0, Variant(xargs.label, xargs.argv(k), xargs.environ()))
    run_interleaved(bench, "W6", variants, stdin, cfg.repeat)

    def targets_for(label: str) -> list:
        if label != feat_label:
            return []
        r = ratio(_median(variants, feat_label), _median(variants, ours.label))
        found = [Target("W6", "≤ 1.5× W1 (ours)", fmt_ratio(r), check(r, lambda x: x <= 1.5))]
        sec.targets.extend(found)
        return found

    sec.rows = _throughput_rows(variants, ours.label, n, targets_for)
    if "--joblog" in ours.features and joblog.exists():
        lines = len(joblog.read_text(errors="replace").splitlines())
        sec.notes.append(f"the last job log has {lines} lines for {n} jobs")
    _error_notes(sec, variants)
    return sec


# --- W2: dispatch ---------------------------------------------------------------------------


def w2_dispatch(bench: Bench) -> Section:
    """Short sleeps on many slots: how close to the ideal wall time."""
    cfg = bench.cfg
    n, k, s = cfg.w2_jobs, cfg.w2_slots, cfg.w2_sleep
    ideal = math.ceil(n / k) * s
    sec = Section("W2", "dispatch", [f"{n} × `sleep {s}` on {k} slots, {cfg.repeat} "
                  f"repetitions, interleaved. Ideal wall time: {n}/{k} × {s} s = {ideal:g} s."],
                  ["tool", "median s", "min s", "max s", "× ideal", "× xargs", "target"])
    stdin = _stdin_file(bench, "w2.in", f"sleep {s}", n)
    variants = [Variant(t.label, t.argv(k), t.environ()) for t in bench.tools]
    run_interleaved(bench, "W2", variants, stdin, cfg.repeat)
    labels = _labels(bench)
    ref = _median(variants, labels["xargs"]) if "xargs" in labels else None
    for v in variants:
        st = summarize(v.samples)
        med = st.median if st else None
        cell = "—"
        if v.label == labels.get("ours"):
            t = Target("W2", "≤ 1.08× ideal", fmt_ratio(ratio(med, ideal)),
                       check(ratio(med, ideal), lambda x: x <= 1.08))
            sec.targets.append(t)
            cell = t.cell()
        sec.rows.append([v.label, fmt(med), fmt(st and st.min), fmt(st and st.max),
                         fmt_ratio(ratio(med, ideal)), fmt_ratio(ratio(med, ref)), cell])
        if st and st.min < ideal * 0.98:
            sec.notes.append(f"{v.label}: faster than the ideal ({st.min:.3f} s): did every "
                             "job run?")
    sec.notes += bench.skip_notes(["xargs", "parallel", "orig", "ours"])
    _error_notes(sec, variants)
    return sec


# --- W5: one job ----------------------------------------------------------------------------


def w5_one_job(bench: Bench) -> Section:
    """One `true`: start-up and shut-down cost of each tool."""
    cfg = bench.cfg
    sec = Section("W5", "one job", [f"`echo true | TOOL` with one slot (`--gpus 0`, `-P 1`, "
                  f"`-j 1`), median of {cfg.w5_reps}, interleaved; `sh -c true` is the floor. "
                  "Mostly start-up time."],
                  ["tool", "median ms", "min ms", "max ms", "× 0.1.4", "× sh -c true",
                   "target"])
    stdin = _stdin_file(bench, "w5.in", "true", 1)
    env = bench.tools[0].environ() if bench.tools else {}
    variants = [Variant("sh -c true", ["sh", "-c", "true"], env)]
    variants += [Variant(t.label, t.argv(1), t.environ()) for t in bench.tools]
    extra = login_shell_variants(bench, 1, with_xargs=False)
    run_interleaved(bench, "W5", variants + extra, stdin, cfg.w5_reps)
    labels = _labels(bench)
    ref = _median(variants, labels["orig"]) if "orig" in labels else None
    floor = _median(variants, "sh -c true")
    for v in variants + extra:
        st = summarize([x * 1000 for x in v.samples])
        med = st.median / 1000 if st else None
        cell = "—"
        if v.label == labels.get("ours"):
            r = ratio(med, ref)
            t = Target("W5", "no slower than 0.1.4 (≤ 1.00×)",
                       fmt_ratio(r) if r else "0.1.4 not measured",
                       check(r, lambda x: x <= 1.0))
            sec.targets.append(t)
            cell = t.cell()
        sec.rows.append([v.label, fmt(st and st.median, 1), fmt(st and st.min, 1),
                         fmt(st and st.max, 1), fmt_ratio(ratio(med, ref)),
                         fmt_ratio(ratio(med, floor)), cell])
    sec.notes += login_shell_notes(bench, variants, extra, ratios=False)
    sec.notes += bench.skip_notes(["xargs", "parallel", "orig", "ours"])
    _error_notes(sec, variants + extra)
    return sec
