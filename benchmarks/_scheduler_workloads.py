"""The scheduler-only workloads: W3 (memory on a long stream, then SIGINT) and W4 (idle).

xargs and GNU parallel are not measured here: they are not the schedulers under test.
"""

from __future__ import annotations

from _measure import MIB, idle_run, stream_run
from _report import Section, Target, fmt, fmt_ratio, ratio, summarize
from _workloads import Bench, check, rotated

# --- W3: memory on a long stream, then SIGINT -----------------------------------------------


def _count(n: int) -> str:
    """1000000 -> 1M, 10000 -> 10k."""
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def _w3_notes(runs: list) -> str:
    """What happened around SIGINT, over all runs of one row."""
    if not runs:
        return "no run"
    codes = sorted({r.returncode for r in runs}, key=str)
    parts = [f"exit {', '.join(map(str, codes))}"]
    if any(r.traceback for r in runs):
        parts.append("traceback on SIGINT")
    done = sum(r.stdin_done for r in runs)
    parts.append(f"generator done before SIGINT in {done}/{len(runs)}")
    if any(r.started_after_sigint for r in runs):
        parts.append("a job started after SIGINT")
    extra = sorted({n for r in runs for n in r.notes})
    return "; ".join(parts + extra)


def w3_stream(bench: Bench) -> Section:
    """Peak RSS on a short and a long stream, then the drain after SIGINT."""
    cfg = bench.cfg
    short, long_ = cfg.w3_lines
    sec = Section("W3", "memory on a long stream, then SIGINT",
                  [f"1 slot; a first job `sleep {cfg.w3_first_job:g}` followed by "
                   f"{_count(short)} and then {_count(long_)} lines piped from a generator "
                   f"(never a file). Peak RSS = the scheduler's `VmHWM` from /proc; SIGINT is "
                   "sent to the scheduler alone while the first job runs (after the generator "
                   f"finished or {0.7 * cfg.w3_first_job:g} s in); drain = scheduler exit "
                   "minus the first job's end. "
                   f"{cfg.repeat} repetitions, interleaved. Schedulers only."],
                  ["tool", "lines", "measure", "median", "min", "max", "× 0.1.4", "target",
                   "notes"])
    scheds = [t for t in bench.tools if t.is_scheduler]
    variants = [(t, n) for n in cfg.w3_lines for t in scheds]
    runs: dict = {(t.key, n): [] for t, n in variants}
    for rep in range(cfg.repeat):
        for tool, n in rotated(variants, rep):
            r = stream_run(tool.argv(1), tool.environ(), n, cfg.w3_first_job, bench.tmp)
            runs[(tool.key, n)].append(r)
            bench.log(f"W3 rep {rep + 1}/{cfg.repeat} {tool.label} {_count(n)}: peak "
                      f"{fmt((r.peak_bytes or 0) / MIB, 1)} MiB, drain {fmt(r.drain)} s, "
                      f"exit {r.returncode}")

    def stats(key: str, n: int, what: str):
        vals = [getattr(r, what) for r in runs.get((key, n), [])]
        vals = [v / MIB if what == "peak_bytes" else v for v in vals if v is not None]
        return summarize(vals)

    for tool in scheds:
        for n in cfg.w3_lines:
            for what, name, digits in (("peak_bytes", "VmHWM MiB", 1), ("drain", "drain s", 3)):
                st, ref = stats(tool.key, n, what), stats("orig", n, what)
                cell = "—"
                if tool.key == "ours":
                    t = _w3_target(n, short, what, st, stats("ours", short, what))
                    sec.targets.extend(t)
                    cell = "; ".join(x.cell() for x in t)
                sec.rows.append([tool.label, _count(n), name, fmt(st and st.median, digits),
                                 fmt(st and st.min, digits), fmt(st and st.max, digits),
                                 fmt_ratio(ratio(st and st.median, ref and ref.median)), cell,
                                 _w3_notes(runs[(tool.key, n)]) if what == "drain" else ""])
    sec.notes.append("xargs and GNU parallel are not measured here (they are not the "
                     "schedulers under test).")
    sec.notes += bench.skip_notes(["orig", "ours"])
    return sec


def _w3_target(n: int, short_n: int, what: str, st, short) -> list:
    """W3's targets for one row of ours: drain ≤ 1 s, or peak < 20 MiB and flat."""
    if what == "drain":
        median = st.median if st else None
        return [Target("W3", f"drain ≤ 1 s after the job ({_count(n)})", f"{fmt(median)} s",
                       check(median, lambda x: x <= 1.0))]
    peak = st.max if st else None
    found = [Target("W3", f"peak RSS < 20 MiB ({_count(n)})", f"{fmt(peak, 1)} MiB max",
                    check(peak, lambda x: x < 20.0))]
    if short is not None and st is not None and n != short_n:
        grow = st.max - short.max
        found.append(Target("W3", "flat: long-stream peak within 1 MiB of the short one",
                            f"{grow:+.2f} MiB", grow <= 1.0))
    return found


# --- W4: idle -------------------------------------------------------------------------------


def w4_idle(bench: Bench) -> Section:
    """CPU time of a scheduler that waits on an open, silent input."""
    cfg = bench.cfg
    per = 10.0 / cfg.w4_idle
    sec = Section("W4", "idle", [f"The scheduler (1 slot) reads `tail -f -n 0 EMPTY`; CPU "
                  f"seconds (utime + stime of all its threads, /proc/PID/stat) over "
                  f"{cfg.w4_idle:g} s after a {cfg.w4_warmup:g} s warm-up, scaled to 10 s. "
                  f"{cfg.repeat} repetitions, interleaved. Schedulers only. Resolution: one "
                  "clock tick (0.01 s)."],
                  ["tool", "median CPU s / 10 s", "min", "max", "× 0.1.4", "target", "notes"])
    scheds = [t for t in bench.tools if t.is_scheduler]
    runs: dict = {t.key: [] for t in scheds}
    for rep in range(cfg.repeat):
        for tool in rotated(scheds, rep):
            r = idle_run(tool.argv(1), tool.environ(), cfg.w4_warmup, cfg.w4_idle, bench.tmp)
            runs[tool.key].append(r)
            bench.log(f"W4 rep {rep + 1}/{cfg.repeat} {tool.label}: idle CPU "
                      f"{fmt(r.idle_cpu, 2)} s {r.note}")
    summaries = {k: summarize([r.idle_cpu * per for r in v if r.idle_cpu is not None])
                 for k, v in runs.items()}
    ref = summaries.get("orig")
    for tool in scheds:
        st = summaries[tool.key]
        cell = "—"
        if tool.key == "ours":
            t = Target("W4", "0.00 CPU s per 10 idle s (< 1 clock tick)",
                       f"{fmt(st and st.median, 3)} s",
                       check(st and st.median, lambda x: x < 0.01))
            sec.targets.append(t)
            cell = t.cell()
        rs = runs[tool.key]
        total = summarize([r.total_cpu for r in rs if r.total_cpu is not None])
        notes = [f"threads {', '.join(sorted({str(r.threads) for r in rs}))}",
                 f"CPU incl. start-up {fmt(total and total.median, 2)} s",
                 f"exit on EOF {', '.join(sorted({str(r.returncode) for r in rs}))}"]
        notes += sorted({r.note for r in rs if r.note})
        sec.rows.append([tool.label, fmt(st and st.median), fmt(st and st.min),
                         fmt(st and st.max), fmt_ratio(ratio(st and st.median,
                                                             ref and ref.median)),
                         cell, "; ".join(notes)])
    sec.notes += bench.skip_notes(["orig", "ours"])
    return sec
