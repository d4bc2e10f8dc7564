"""The wheel users get: built from the source, installed in a fresh venv.

The editable install the other tests run on imports from the source tree, so
it cannot notice a wheel that lacks a subpackage (a package list that misses
it, a folder without ``__init__.py``) or a broken console script. Here the
wheel is built, installed non-editable into a new venv, and used from a
directory outside the repository, with ``-I`` so that neither the current
directory nor ``PYTHONPATH`` can put the source tree back on the path.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "simple_gpu_scheduler"
TIMEOUT = 120  # seconds for one step; the whole file takes a few seconds

# What the builds and the venv may see of our environment: no PYTHONPATH (the
# source tree), no CUDA_VISIBLE_DEVICES from the machine running the tests.
CLEAN_ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "HOME": os.environ.get("HOME", "/"),
    "LANG": "C.UTF-8",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PIP_NO_INPUT": "1",
}

# Not copied to the build folder: they are not sources, and a stale build/
# folder would hand setuptools files the source tree no longer has.
JUNK = shutil.ignore_patterns(
    ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
    ".hypothesis", "*.pyc",
)


def run(args: list[str | Path], cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run a step; on failure, the assertion shows what it printed."""
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=CLEAN_ENV, input=stdin, capture_output=True,
        text=True, timeout=TIMEOUT, check=False,
    )
    shown = " ".join(map(str, args[:4])) + (" ..." if len(args) > 4 else "")
    assert proc.returncode == 0, (
        f"{shown} exited {proc.returncode}\n"
        f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    return proc


def source_modules() -> list[str]:
    """Every module and package in the source tree, as an import name.

    Found by walking the folders, not by asking setuptools, so a folder the
    package list leaves out is still expected in the wheel.
    """
    names = []
    for path in sorted((REPO / PACKAGE).rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed; its folder (a sibling of cwd ``work``)."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed: no wheel can be built without build "
                    "isolation (pip install -e '.[test]' brings it)")
    base = tmp_path_factory.mktemp("packaging")
    src = base / "src"
    shutil.copytree(REPO, src, ignore=JUNK)
    wheels = base / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", src, "-w", wheels], cwd=base)
    built = sorted(wheels.glob(f"{PACKAGE}-*.whl"))
    assert len(built) == 1, f"expected one wheel, got {built}"

    env = base / "venv"
    # Without pip: no ensurepip needed, and seconds faster. The pip running
    # the tests installs into it (`pip --python`, pip 22.3 and later).
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)],
                       env=CLEAN_ENV, capture_output=True, timeout=TIMEOUT, check=True)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"python -m venv does not work here: {exc.stderr.decode(errors='replace')}")
    python = env / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
         "-q", built[0]], cwd=base)
    (base / "work").mkdir()
    return env


def test_every_module_of_the_source_tree_is_in_the_wheel(venv: Path) -> None:
    modules = source_modules()
    assert f"{PACKAGE}.model.record" in modules and f"{PACKAGE}.cli.main" in modules
    # Importing `__main__` would run the program: that it is there is enough.
    script = "\n".join([
        "import importlib, importlib.util, sys",
        "for name in sys.argv[1:]:",
        "    if name.endswith('.__main__'):",
        "        spec = importlib.util.find_spec(name)",
        "        print(name, spec.origin if spec else None)",
        "    else:",
        "        module = importlib.import_module(name)",
        "        print(name, module.__file__)",
    ])
    out = run([venv / "bin" / "python", "-I", "-c", script, *modules], cwd=venv.parent / "work")
    found = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert sorted(found) == sorted(modules)
    for name, origin in found.items():
        # From the installed wheel, not from the source tree.
        assert origin.startswith(str(venv)), f"{name} imported from {origin}"


def test_the_console_script_runs_jobs_on_the_gpus_given(venv: Path) -> None:
    commands = "echo gpu=$CUDA_VISIBLE_DEVICES\necho gpu=$CUDA_VISIBLE_DEVICES\n"
    out = run([venv / "bin" / "simple_gpu_scheduler", "--gpus", "0,1"],
              cwd=venv.parent / "work", stdin=commands)
    # Each job ran on its own GPU; the order of their output is theirs.
    assert sorted(out.stdout.splitlines()) == ["gpu=0", "gpu=1"]
    assert "2 of 2 succeeded" in out.stderr


def test_the_hypersearch_script_prints_the_grid(venv: Path) -> None:
    out = run([venv / "bin" / "simple_hypersearch", "train --lr {lr} --bs {bs}",
               "-p", "lr", "0.1", "0.01", "-p", "bs", "32", "--sampling-mode", "grid"],
              cwd=venv.parent / "work")
    assert out.stdout.splitlines() == ["train --lr 0.1 --bs 32", "train --lr 0.01 --bs 32"]
