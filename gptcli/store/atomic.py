"""Crash-safe file writes: write a temp file beside the target, fsync, rename.

A reader sees either the old file or the new one, never half of one. Used for every file
gptcli writes that a crash could interrupt: tokenizers, token caches, run folders.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

from gptcli.errors import RunError, UsageError

TEMP_SUFFIX = ".tmp"
NAME_KEPT = 64  # characters of a target's name in its temp names: a 255-byte name must still fit


def temp_prefix(target: Path) -> str:
    """The start of a temp name beside `target`: hidden, and short enough for any target."""
    return f".{target.name[:NAME_KEPT]}."


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: Path | str):
    """Yield a temp path in the target's folder; on success it is fsynced and renamed over
    the target, on failure it is removed and the target left as it was."""
    target = Path(target)
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{temp_prefix(target)}{os.getpid()}.", suffix=TEMP_SUFFIX, dir=folder)
        os.close(fd)
    except PermissionError:
        raise UsageError(f"cannot write to {folder}: permission denied") from None
    except (NotADirectoryError, FileExistsError):  # a file where a folder must be: the path given is at fault
        raise UsageError(f"cannot write to {folder}: a part of that path is a file, not a folder") from None
    except OSError as e:
        if e.errno == errno.EROFS:
            raise UsageError(f"cannot write to {folder}: it is on a read-only file system") from None
        raise RunError(f"cannot write to {folder}: {e.strerror or e}") from None
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; give the usual permissions
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _check_replaceable(target)
        os.replace(tmp, target)
        fsync_dir(folder)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RunError(f"could not write {target}: {e.strerror or e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_replaceable(target: Path) -> None:
    """A rename replaces only a regular file (or a link to swap): never a device, a FIFO,
    a socket or a folder, whatever a caller checked before (the last line of defence)."""
    try:
        mode = target.lstat().st_mode
    except FileNotFoundError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise RunError(f"refusing to replace {target}: it is not a regular file")


def write_bytes(target: Path | str, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: Path | str, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def remove_stale(folder: Path) -> None:
    """Remove the temp files of writers that were killed: their names carry the writer's
    pid, and a pid that is no longer running will never finish its write."""
    for path in folder.glob(f".*{TEMP_SUFFIX}"):
        parts = path.name.split(".")  # "", target name..., pid, random, "tmp"
        if len(parts) < 5 or not parts[-3].isdigit():
            continue
        pid = int(parts[-3])
        try:
            if pid != os.getpid():
                os.kill(pid, 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except PermissionError:
            pass  # alive, someone else's
