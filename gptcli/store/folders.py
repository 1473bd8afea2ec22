"""Output folders: checked before any work starts, built beside the target, swapped in.

`check_out` refuses a target that a command must not write (a file, a non-empty folder
without --overwrite, a folder of another kind, one another process is writing, an
unwritable parent) before anything is created. `staged` builds the new folder under a
temporary name beside the target and renames it into place only when every file is
written, so a reader sees the old folder or the new one, never half of one. Knows nothing
of what the folders hold: the caller says what its kind is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from gptcli.errors import RunError, UsageError
from gptcli.store import atomic


def check_out(out: Path, overwrite: bool, *, label: str, kind: str, is_kind: Callable[[Path], bool],
              writer: Callable[[Path], int | None] = lambda _: None, hint: str = "") -> None:
    """Refuse a bad output folder; nothing is created. `label` names it in messages (e.g.
    "--out run"), `is_kind` says whether an existing folder may be replaced, `writer`
    gives the pid of a process writing it, and `hint` ends the not-empty message. A
    symbolic link is refused whatever it names: the swap would replace the link, not the
    folder it names, and the lock would be taken outside."""
    if out.is_symlink():
        raise UsageError(f"{label} is a symbolic link: name the folder itself (gptcli writes no output folder "
                         "through a link)")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{label} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f"{label} is not empty: pass --overwrite to replace it{hint}")
        if not is_kind(out):
            raise UsageError(f"refusing to --overwrite {out}: it is not {kind}")
        if (owner := writer(out)) is not None:
            raise UsageError(f"refusing to --overwrite {out}: gptcli process {owner} is writing to it")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"cannot create {label}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write to {label}: permission denied on {parent}")


def is_within(path: Path, folder: Path) -> bool:
    """Whether path is folder itself or lies inside it (links resolved)."""
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def check_file_out(path: Path, label: str, overwrite: bool = False, reads: Iterable[Path] = ()) -> None:
    """Refuse, before any work, a file gptcli must not write: an existing one without
    --overwrite; anything but a regular file (a folder, a device, a FIFO, a socket, a
    symbolic link: a rename would replace the node itself); one of the files the command
    reads (`reads`); or one with no writable folder to be created in. The one output
    policy of every command that writes a file."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as e:
        raise UsageError(f"cannot write {label} {path}: {e.strerror or e}") from None
    if mode is not None:
        if stat.S_ISDIR(mode):
            raise UsageError(f"{label} {path} is a folder: name a file")
        if not stat.S_ISREG(mode):
            raise UsageError(f"{label} {path} is {_node_kind(mode)}, not a regular file: name a file to write")
        if any(_is_read(path, r) for r in reads):
            raise UsageError(f"{label} {path} is a file this command reads: name another file")
        if not overwrite:
            raise UsageError(f"{label} {path} exists: pass --overwrite to replace it")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if (problem := _unwritable(parent)) is not None:
        raise UsageError(f"cannot write {label} {path}: {parent} is not a folder you can write to ({problem})")


def check_writable(folder: Path, label: str, why: str) -> None:
    """Refuse, before any work, a folder a command must write in place (a resumed run)
    but cannot: read-only, or on a read-only file system. `why` ends the message."""
    if (problem := _unwritable(folder)) is not None:
        raise UsageError(f"cannot write to {label}: {problem} ({why})")


def _unwritable(folder: Path) -> str | None:
    """Why nothing can be created in `folder`, or None. A real probe: permission bits say
    nothing for root (or a process without its override), or on /proc."""
    if not folder.is_dir():
        return "not a folder"
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as e:
        return e.strerror or str(e)


def _node_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return kind
    return "not a regular file"


def _is_read(path: Path, read: Path) -> bool:
    """`path` is the file `read`, or one inside the folder `read` (a corpus folder)."""
    try:
        if read.is_dir():
            return path.resolve().is_relative_to(read.resolve())
        return path.samefile(read)
    except OSError:
        return False


@contextlib.contextmanager
def staged(target: Path, old: Path | None = None) -> Iterator[Path]:
    """Yield an empty folder beside `target`. When the block ends without an error, it
    replaces `target`; on an error it is removed and `target` is as it was. The old folder
    is moved aside under `old` (default: a new hidden name beside it) and deleted; a crash
    between the two renames leaves it there. A failed write is a RunError naming the file
    under `target`, not the temporary folder."""
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=atomic.temp_prefix(target), dir=parent))
        stage.chmod(0o777 & ~atomic.umask())
    except OSError as e:
        raise RunError(f"cannot write to {parent}: {e.strerror or e}") from None
    try:
        yield stage
        aside = None
        if target.is_symlink():  # check_out refuses these; never leave one behind under a hidden name
            target.unlink()
        elif target.exists():
            aside = old or Path(tempfile.mkdtemp(prefix=f"{atomic.temp_prefix(target)}old.", dir=parent))
            _remove(aside)
            target.rename(aside)
        stage.rename(target)
        atomic.fsync_dir(parent)
        if aside is not None:
            _remove(aside)
    except OSError as e:
        raise RunError(f"could not write {target}: {e.strerror or e}") from None
    except RunError as e:  # a failed write inside: name the file users know
        raise RunError(str(e).replace(str(stage), str(target))) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _remove(path: Path) -> None:
    """Delete a folder moved aside; a link (rmtree refuses one, silently here) is unlinked
    itself, and nothing it names is touched."""
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)
