"""One owner per GPU across scheduler processes: an advisory lock per GPU.

Each GPU has a lock file in a lock directory shared by every user of the
machine. A scheduler holds a GPU's ``flock`` while any of its jobs runs there;
another scheduler that cannot take it treats the GPU as busy. The kernel drops
the lock when the process dies, however it dies, so a crash leaves nothing
stale to clean (the failure of Scheduler's ``/tmp`` record).

The directory is shared and writable by everybody, so nothing found in it is
trusted:

- the directory itself must not be a symlink, and when others can write to it
  it must have the sticky bit, so that nobody can delete or swap the lock file
  of another user between two opens;
- lock files are opened with ``O_NOFOLLOW`` (a planted symlink is refused),
  ``O_NONBLOCK`` (a planted FIFO cannot hang us) and never truncated or
  written; an existing one is opened read-only (``flock`` needs no write
  access), which also works where ``fs.protected_regular`` forbids opening
  another user's file with ``O_CREAT`` in a sticky directory; a new one is
  made with ``O_EXCL`` and mode 0644, so others can open it too;
- a lock file that is not a regular file is refused.

Lock files are never removed: removing one while another process holds it
open would let a third lock a different file of the same name.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Dict, Optional

#: The default lock directory. /tmp and not $TMPDIR: TMPDIR can be per user
#: (pam_tmpdir, macOS), and every user's schedulers must meet in one place.
DEFAULT_LOCK_DIR = "/tmp/simple_gpu_scheduler-locks"
#: Environment variable that moves the default (a site's shared directory, or
#: a test suite that must not meet the schedulers of other suites).
LOCK_DIR_VARIABLE = "SGS_LOCK_DIR"


def default_lock_dir() -> str:
    return os.environ.get(LOCK_DIR_VARIABLE) or DEFAULT_LOCK_DIR

_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class LockDirError(Exception):
    """The lock directory cannot be used safely; the message says why."""


def lock_file_name(key: str) -> str:
    """``gpu-0.lock``, ``gpu-MIG-….lock``; other bytes are %-escaped."""
    escaped = "".join(c if c in _SAFE else f"%{ord(c):02X}" for c in key)
    return f"gpu-{escaped}.lock"


def open_lock_dir(path: str) -> int:
    """Open (creating it with mode 1777 if missing) and vet the lock directory.

    Returns a file descriptor of the directory, through which every lock file
    is opened, so the directory cannot be swapped after it was checked.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise LockDirError(f"cannot create lock directory {path}: {exc.strerror}") from None
    else:
        # mkdir's mode is cut by the umask; the directory is meant for everybody.
        os.chmod(path, 0o1777)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise LockDirError(f"lock directory {path} is a symlink or not a directory") from None
        raise LockDirError(f"cannot open lock directory {path}: {exc.strerror}") from None
    info = os.fstat(fd)
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
        os.close(fd)
        raise LockDirError(
            f"lock directory {path} is writable by others but not sticky (chmod +t), "
            "so anybody could replace its lock files")
    return fd


class GpuLocks:
    """The GPU locks this process holds, by lock key."""

    def __init__(self, dir_fd: int) -> None:
        self._dir = dir_fd
        self._held: Dict[str, int] = {}

    def held(self, key: str) -> bool:
        return key in self._held

    def acquire(self, key: str) -> Optional[str]:
        """Take `key`'s lock without waiting; None when held, else why not."""
        if key in self._held:
            return None
        try:
            fd = self._open(lock_file_name(key))
        except OSError as exc:
            return f"its lock file cannot be opened: {exc.strerror or exc}"
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return "another scheduler has it"
            return f"its lock cannot be taken: {exc.strerror}"
        self._held[key] = fd
        return None

    def release(self, key: str) -> None:
        fd = self._held.pop(key, None)
        if fd is not None:
            os.close(fd)  # closing the only descriptor drops the flock

    def close(self) -> None:
        for key in list(self._held):
            self.release(key)
        try:
            os.close(self._dir)
        except OSError:
            pass

    def _open(self, name: str) -> int:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        while True:
            try:
                fd = os.open(name, flags, dir_fd=self._dir)
            except FileNotFoundError:
                try:
                    fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=self._dir)
                except FileExistsError:
                    continue  # another scheduler made it just now: open theirs
                os.fchmod(fd, 0o644)  # the umask may have hidden it from others
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                os.close(fd)
                raise OSError(errno.EINVAL, "it is not a regular file")
            return fd
