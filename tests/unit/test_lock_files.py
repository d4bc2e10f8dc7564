"""The GPU lock files: one owner per GPU, a safe lock directory, planted files not followed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from simple_gpu_scheduler.gpus.locks import GpuLocks, LockDirError, lock_file_name, open_lock_dir


def locks_in(path: Path) -> GpuLocks:
    return GpuLocks(open_lock_dir(str(path)))


def test_a_lock_is_held_by_one_owner_until_released(tmp_path: Path) -> None:
    first, second = locks_in(tmp_path / "locks"), locks_in(tmp_path / "locks")
    try:
        assert first.acquire("0") is None
        assert first.acquire("0") is None  # already ours
        assert second.acquire("0") == "another scheduler has it"
        assert second.acquire("1") is None
        first.release("0")
        assert second.acquire("0") is None
    finally:
        first.close()
        second.close()


def test_the_lock_directory_is_made_for_everybody(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        locks = locks_in(tmp_path / "locks")
        assert locks.acquire("MIG-ab/c") is None
    finally:
        os.umask(old)
    mode = (tmp_path / "locks").stat().st_mode
    assert stat.S_IMODE(mode) == 0o1777
    lock_file = tmp_path / "locks" / lock_file_name("MIG-ab/c")
    assert lock_file.name == "gpu-MIG-ab%2Fc.lock"
    assert stat.S_IMODE(lock_file.stat().st_mode) == 0o644
    locks.close()


def test_unsafe_lock_directories_are_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(LockDirError, match="symlink"):
        open_lock_dir(str(tmp_path / "link"))
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(LockDirError, match="not sticky"):
        open_lock_dir(str(open_dir))


def test_planted_symlinks_and_fifos_are_not_followed(tmp_path: Path) -> None:
    directory = tmp_path / "locks"
    locks = locks_in(directory)
    target = tmp_path / "precious"
    target.write_text("keep me")
    (directory / lock_file_name("0")).symlink_to(target)
    os.mkfifo(directory / lock_file_name("1"))
    assert "cannot be opened" in (locks.acquire("0") or "")
    assert "cannot be opened" in (locks.acquire("1") or "")  # and it did not hang
    assert target.read_text() == "keep me"
    locks.close()
