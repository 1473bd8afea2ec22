"""Crash-safe file writes: write a temp file beside the target, fsync, rename.

A reader sees either the old file or the new one, never half of one. Used for every file
gptcli writes that a crash could interrupt: tokenizers, token caches, run folders.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from gptcli.errors import RunError, UsageError


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
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
        os.close(fd)
    except PermissionError:
        raise UsageError(f"cannot write to {folder}: permission denied") from None
    except OSError as e:
        raise RunError(f"cannot write to {folder}: {e.strerror or e}") from None
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; give the usual permissions
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        fsync_dir(folder)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RunError(f"could not write {target}: {e.strerror or e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(target: Path | str, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: Path | str, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))
