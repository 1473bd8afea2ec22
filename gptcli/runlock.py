"""One writer per run folder: a `.lock` file holding the writer's pid.

A second writer is refused with the pid of the first; a lock left by a killed process is
taken over with a warning. Knows nothing of what the folder holds.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from gptcli.errors import RunError, UsageError

LOCK = ".lock"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a stale lock whose pid happens to be ours
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_owner(run: Path) -> int | None:
    """The pid of a live process holding the run's lock, if any."""
    try:
        pid = int((run / LOCK).read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    return pid if pid and _pid_alive(pid) else None


@contextlib.contextmanager
def run_lock(run: Path, warn: Callable[[str], None]):
    """Hold `.lock` (our pid) while writing a run folder. A second writer is refused; a
    lock left behind by a killed run is taken over with a warning."""
    path = run / LOCK
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            owner = lock_owner(run)
            if owner is not None:
                raise UsageError(f"{run} is being written by another gptcli process (pid {owner}): "
                                 "wait for it or stop it") from None
            warn(f"{run}: taking over the lock of a run that was killed")
            path.unlink(missing_ok=True)
        except OSError as e:
            raise RunError(f"cannot lock {run}: {e.strerror or e}") from None
    else:
        raise RunError(f"cannot lock {run}: another process keeps taking the lock")
    try:
        os.write(fd, str(os.getpid()).encode())
    finally:
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
