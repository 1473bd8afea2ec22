"""One writer per run folder: an flock on its `.lock` file, which also holds the writer's pid
for messages.

The kernel releases an flock when its process dies, however it dies, so a lock file left
by a killed run is just a file: the next writer takes it over (with a note), and a
reused pid can never make a dead writer look alive. Knows nothing of what the folder holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from gptcli.errors import RunError, UsageError

LOCK = ".lock"


def _pid_in(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _open(path: Path, flags: int) -> int:
    """The lock file opened without following a link (it would truncate and write whatever
    the link names) or blocking (a FIFO's open waits for a writer), and refused unless it
    is a regular file: a FIFO or device put there is not gptcli's lock."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)  # the umask decides
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageError(f"{path} is not a regular file: it is not gptcli's lock (remove it)")
    return fd


def lock_owner(run: Path) -> int | None:
    """The pid of the process holding the run's lock (0 if it wrote none yet), else None."""
    try:
        fd = _open(run / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # nobody holds it
    except BlockingIOError:
        return _pid_in(fd) or 0
    finally:
        os.close(fd)


def busy(run: Path, owner: int | None) -> UsageError:
    return UsageError(f"{run} is being written by another gptcli process (pid {owner or '?'}): wait for it or stop it")


def refuse_if_locked(run: Path) -> None:
    if (owner := lock_owner(run)) is not None:
        raise busy(run, owner)


@contextlib.contextmanager
def run_lock(run: Path, warn: Callable[[str], None]) -> Iterator[None]:
    """Hold the run's lock while writing it. A second writer is refused with the first
    one's pid; a lock file a killed writer left behind is taken over."""
    path = run / LOCK
    for _ in range(5):
        try:
            fd = _open(path, os.O_CREAT | os.O_RDWR)
        except OSError as e:
            if path.is_symlink():
                raise UsageError(f"{path} is a symbolic link: gptcli writes no run folder through a link "
                                 "(remove it)") from None
            raise RunError(f"cannot lock {run}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _pid_in(fd)
            os.close(fd)
            raise busy(run, owner) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except OSError:
            same = False
        if same:  # not a file another writer unlinked between our open and our flock
            break
        os.close(fd)
    else:
        raise RunError(f"cannot lock {run}: other processes keep replacing its lock file")
    try:
        if _pid_in(fd) is not None:
            warn(f"{run}: taking over the lock of a run that was killed")
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)  # releases the flock
