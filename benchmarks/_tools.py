"""The tools compared, how each is installed, invoked and checked before timing.

Every tool gets the same command lines on stdin and runs each line as
`sh -c LINE` with CUDA_VISIBLE_DEVICES set to its slot:

- xargs:    xargs -d '\\n' -n 1 -P K --process-slot-var=CUDA_VISIBLE_DEVICES sh -c
- parallel: parallel -j K 'CUDA_VISIBLE_DEVICES=$(({%}-1)) {=uq=}'  (PARALLEL_SHELL=/bin/sh)
- orig:     simple_gpu_scheduler --gpus 0,..,K-1  (0.1.4; subprocess shell=True is /bin/sh)
- ours:     simple_gpu_scheduler --gpus 0,..,K-1 --shell /bin/sh

W1 and W5 also have "login shell default" rows, reported apart: ours with
`SHELL=/bin/bash` and no `--shell` (so each line runs as `bash -c LINE`), and,
in W1, xargs with `bash -c` as their like-for-like reference. 0.1.4 has no such
row: it runs lines with `subprocess` `shell=True`, i.e. /bin/sh whatever `$SHELL` is.

The two schedulers are installed into throw-away virtual environments and run
through the environment's console script, so both are measured the same way.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

ORIG_SPEC = "simple-gpu-scheduler==0.1.4"
#: The shell every tool runs each line with in the like-for-like rows.
SH = "/bin/sh"
#: The `$SHELL` of the "login shell default" rows: ours without `--shell` runs
#: `$SHELL -c LINE` (a user's usual setting; bash starts slower than dash).
LOGIN_SHELL = "/bin/bash"
PARALLEL_TEMPLATE = "CUDA_VISIBLE_DEVICES=$(({%}-1)) {=uq=}"
ALL_TOOLS = ("xargs", "parallel", "orig", "ours")
ALIASES = {"0.1.4": "orig", "original": "orig", "gnu-parallel": "parallel"}
Log = Callable[[str], None]


class Unavailable(Exception):
    """A tool cannot be measured; the message is the note printed instead."""


@dataclass
class Tool:
    """One tool under test and how to build its command line for K slots."""

    key: str
    label: str
    shown: str
    how: str = ""
    script: Optional[str] = None
    env: dict = field(default_factory=dict)
    version: str = ""
    #: ours only: the extra flags W6 turns on (`--tag`, `--joblog`) that exist.
    features: tuple = ()

    @property
    def is_scheduler(self) -> bool:
        """True for simple_gpu_scheduler (ours or the original)."""
        return self.key in ("orig", "ours")

    def argv(self, slots: int, extra: Sequence[str] = (),
             shell: Optional[str] = SH) -> list[str]:
        """The command line that runs stdin's commands on `slots` slots.

        `shell` runs each line: xargs runs `sh -c` (PATH lookup, as before) or
        `SHELL -c`; ours gets `--shell SHELL`, or no `--shell` at all when
        `shell` is None (its default: `$SHELL`, see `login_default_env`).
        GNU parallel and 0.1.4 always use /bin/sh here.
        """
        gpus = ",".join(str(i) for i in range(slots))
        if self.key == "xargs":
            return ["xargs", "-d", "\n", "-n", "1", "-P", str(slots),
                    "--process-slot-var=CUDA_VISIBLE_DEVICES", *extra,
                    "sh" if shell in (SH, None) else shell, "-c"]
        if self.key == "parallel":
            return ["parallel", "--will-cite", "-j", str(slots), *extra, PARALLEL_TEMPLATE]
        if self.key == "orig":
            return [str(self.script), "--gpus", gpus, *extra]
        return [str(self.script), "--gpus", gpus, *(["--shell", shell] if shell else []),
                *extra]

    def environ(self) -> dict:
        """The environment the tool runs in (no inherited CUDA_VISIBLE_DEVICES)."""
        env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
        env.update(self.env)
        return env

    def login_default_env(self) -> dict:
        """`environ()` with `SHELL=LOGIN_SHELL`: for ours run without `--shell`."""
        return {**self.environ(), "SHELL": LOGIN_SHELL}


def parse_tools(text: str) -> list[str]:
    """`xargs,ours` -> ['xargs', 'ours'], aliases resolved, unknown names rejected."""
    keys = []
    for name in filter(None, (part.strip().lower() for part in text.split(","))):
        key = ALIASES.get(name, name)
        if key not in ALL_TOOLS:
            raise ValueError(f"unknown tool {name!r} (choose from {', '.join(ALL_TOOLS)})")
        if key not in keys:
            keys.append(key)
    return keys


def _run(argv: Sequence[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kwargs)


def _tail(text: str, lines: int = 3) -> str:
    return " / ".join(line.strip() for line in text.strip().splitlines()[-lines:])


# --- virtual environments -------------------------------------------------------------------


def _pip_install(venv: Path, args: Sequence[str], what: str) -> None:
    cmd = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
           "--no-input", "-q", "--retries", "1", "--timeout", "15", *args]
    try:
        done = _run(cmd)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"could not install {what}: pip timed out") from None
    if done.returncode != 0:
        output = done.stderr or done.stdout
        errors = [line for line in output.splitlines() if line.startswith("ERROR")]
        raise Unavailable(f"could not install {what}: {_tail(chr(10).join(errors) or output)}")


def ensure_venv(venv: Path, stamp: str, install: Callable[[Path], None], log: Log) -> Path:
    """The venv's console script, (re)building the venv unless its stamp matches."""
    script = venv / "bin" / "simple_gpu_scheduler"
    stamp_file = venv / "bench-stamp.txt"
    if script.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        return script
    log(f"building virtual environment {venv}")
    shutil.rmtree(venv, ignore_errors=True)
    done = _run([sys.executable, "-m", "venv", str(venv)])
    if done.returncode != 0:
        raise Unavailable(f"could not create a virtual environment: {_tail(done.stderr)}")
    install(venv)
    if not script.exists():
        raise Unavailable(f"installed, but {script} is missing")
    stamp_file.write_text(stamp)
    return script


def source_stamp(repo: Path) -> str:
    """A hash of everything that goes into our package, to know when to reinstall."""
    digest = hashlib.sha256()
    for path in sorted(_source_files(repo)):
        digest.update(str(path.relative_to(repo)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _source_files(repo: Path) -> list[Path]:
    files = [p for p in repo.iterdir() if p.is_file() and p.name != ".gitignore"
             and not p.name.startswith(".")]
    files += [p for p in (repo / "simple_gpu_scheduler").rglob("*")
              if p.is_file() and "__pycache__" not in p.parts]
    return files


def _install_ours(repo: Path) -> Callable[[Path], None]:
    """pip install a copy of the repository (non-editable; the checkout is not touched)."""

    def install(venv: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="sgs-bench-src-") as tmp:
            src = Path(tmp) / "src"
            (src / "simple_gpu_scheduler").mkdir(parents=True)
            for path in _source_files(repo):
                dest = src / path.relative_to(repo)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest)
            args = ["--no-deps", "--force-reinstall"]
            if _can_build_offline(venv):  # build with the venv's own setuptools
                args.append("--no-build-isolation")
            _pip_install(venv, [*args, str(src)], f"this project from {repo}")

    return install


def _can_build_offline(venv: Path) -> bool:
    """setuptools >= 61 with bdist_wheel (setuptools >= 70.1, or the wheel package)."""
    check = ("import setuptools, sys\n"
             "v = tuple(int(x) for x in setuptools.__version__.split('.')[:2])\n"
             "if v < (70, 1):\n"
             "    import wheel\n"
             "sys.exit(v < (61, 0))\n")
    return _run([str(venv / "bin" / "python"), "-I", "-c", check]).returncode == 0


def _venv_version(script: Path) -> str:
    python = script.parent / "python"
    done = _run([str(python), "-I", "-c", "import importlib.metadata as m;"
                 "print(m.version('simple_gpu_scheduler'))"])
    return done.stdout.strip() if done.returncode == 0 else "?"


# --- discovery and the pre-flight check -----------------------------------------------------


def _make_tool(key: str, opts, repo: Path, log: Log) -> Tool:
    """Find or install one tool; raises Unavailable with the reason."""
    if key == "xargs":
        if not shutil.which("xargs"):
            raise Unavailable("skipped: xargs not installed")
        version = _tail(_run(["xargs", "--version"]).stdout.split("\n")[0])
        return Tool("xargs", "xargs -P", "xargs -d '\\n' -n 1 -P K "
                    "--process-slot-var=CUDA_VISIBLE_DEVICES sh -c", how="one `sh -c` per line",
                    version=version)
    if key == "parallel":
        if not shutil.which("parallel"):
            raise Unavailable("skipped: GNU parallel not installed")
        version = _run(["parallel", "--version"]).stdout.split("\n")[0].strip()
        return Tool("parallel", "GNU parallel", f"parallel --will-cite -j K "
                    f"'{PARALLEL_TEMPLATE}'", how="PARALLEL_SHELL=/bin/sh; `{=uq=}` because "
                    "a plain `{}` is shell-quoted into one word", env={"PARALLEL_SHELL": "/bin/sh"},
                    version=version)
    if key == "orig":
        venv = Path(opts.venv_dir) / f"orig-py{sys.version_info[0]}.{sys.version_info[1]}"
        spec = opts.orig_spec

        def install(v: Path) -> None:
            _pip_install(v, [spec], spec)

        try:
            script = ensure_venv(venv, spec, install, log)
        except Unavailable as exc:
            raise Unavailable(f"skipped: {exc}") from None
        return Tool("orig", "0.1.4", "simple_gpu_scheduler --gpus 0,..,K-1",
                    how=f"venv: `pip install {spec}`", script=str(script),
                    version=_venv_version(script))
    # ours
    if opts.ours_script:
        script = Path(opts.ours_script)
        if not script.exists():
            raise Unavailable(f"skipped: {script} does not exist")
        how, version = f"`{script}` (--ours-script)", "?"
    elif opts.ours_from_path:
        found = Path(_scripts_dir()) / "simple_gpu_scheduler"
        script = found if found.exists() else shutil.which("simple_gpu_scheduler")
        if not script:
            raise Unavailable("skipped: simple_gpu_scheduler is not on PATH")
        how = f"`{script}` (--ours-from-path: this Python environment's install)"
        version = _run([sys.executable, "-c", "import simple_gpu_scheduler as s;"
                        "print(s.__version__)"]).stdout.strip() or "?"
    else:
        venv = Path(opts.venv_dir) / f"ours-py{sys.version_info[0]}.{sys.version_info[1]}"
        try:
            script = ensure_venv(venv, source_stamp(repo), _install_ours(repo), log)
        except Unavailable as exc:
            raise Unavailable(f"skipped: {exc}") from None
        how = f"venv: `pip install {repo}` (non-editable)"
        version = _venv_version(Path(script))
    label = "ours" if version == "?" else f"ours {version}"
    return Tool("ours", label, "simple_gpu_scheduler --gpus 0,..,K-1 "
                "--shell /bin/sh", how=how, script=str(script), version=version)


def _scripts_dir() -> str:
    import sysconfig

    return sysconfig.get_path("scripts")


def probe(tool: Tool, tmp: Path, slots: int = 4, jobs: int = 8) -> Optional[str]:
    """Run jobs that append their CUDA_VISIBLE_DEVICES to a file; None when all look right.

    A file, not stdout: 0.1.4 prints its own messages on stdout, and a job's output
    can land in the middle of one of them.
    """
    out = tmp / f"probe-{tool.key}.txt"
    out.unlink(missing_ok=True)
    data = f"printenv CUDA_VISIBLE_DEVICES >> {shlex.quote(str(out))}\n" * jobs
    try:
        done = _run(tool.argv(slots), timeout=60, input=data, env=tool.environ())
    except subprocess.TimeoutExpired:
        return f"did not finish {jobs} tiny jobs within 60 s"
    except OSError as exc:
        return f"could not start: {exc}"
    if done.returncode != 0:
        return f"exit status {done.returncode}: {_tail(done.stderr)}"
    seen = out.read_text().split() if out.exists() else []
    if len(seen) != jobs or any(not s.isdigit() or int(s) >= slots for s in seen):
        return f"expected {jobs} slot numbers below {slots}, got {seen}"
    return None


def _features(tool: Tool, tmp: Path) -> tuple:
    """The W6 flags our scheduler accepts: --tag and --joblog FILE, or a subset."""
    for flags in (("--tag", "--joblog"), ("--tag",), ()):
        argv = tool.argv(1, [f for flag in flags for f in
                             ((flag, str(tmp / "probe.joblog")) if flag == "--joblog"
                              else (flag,))])
        try:
            done = _run(argv, timeout=60, input="true\n", env=tool.environ())
        except subprocess.TimeoutExpired:
            continue
        if done.returncode != 2:
            return flags
    return ()


def discover(keys: Sequence[str], opts, repo: Path, tmp: Path, log: Log):
    """The usable tools in `keys` order, and a note per tool (how it runs, or why skipped)."""
    tools, notes = [], {}
    for key in keys:
        try:
            tool = _make_tool(key, opts, repo, log)
        except Unavailable as exc:
            notes[key] = str(exc)
            log(f"{key}: {exc}")
            continue
        problem = probe(tool, tmp)
        if problem:
            notes[key] = f"skipped: failed the pre-flight check ({problem})"
            log(f"{key}: {notes[key]}")
            continue
        if key == "ours":
            tool.features = _features(tool, tmp)
        notes[key] = f"`{tool.shown}` — {tool.version}; {tool.how}"
        tools.append(tool)
    return tools, notes
