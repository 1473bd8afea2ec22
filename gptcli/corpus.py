"""The corpus: the user's files, folders and stdin, as UTF-8 documents with their digests,
streamed in chunks that tokenize exactly as the whole text would.

Folders are walked in sorted order. Hidden entries are skipped, and so are, with a
warning each, what is not a regular file (FIFOs, sockets, devices, dangling links) and
gptcli's own folders (run folders, the workspace tokenizer and runs, the cache): training
in a folder twice never trains on gptcli's output. stdin, or a named pipe, is spooled to a
temp file that is checked for binary data and bounded as it is written, and removed by
`release`. Knows nothing of token ids or models.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gptcli import workspace
from gptcli.errors import UsageError
from gptcli.store import atomic
from gptcli.tokenizer import safe_split

READ_BYTES = 1 << 20  # raw bytes read per step
CHUNK_CHARS = 64 << 10  # target size of one chunk of text given to the encoder
SNIFF_BYTES = 8192
MAX_SPOOL_BYTES = 64 << 30  # the most a stream (stdin, a pipe) may hold as a corpus
SPOOL_DISK_MARGIN = 1 << 30  # and it stops before leaving less than this free

Warn = Callable[[str], None]


@dataclass(frozen=True)
class Document:
    path: Path  # a file on disk (a stream is spooled to a file first)
    name: str  # what the user called it, for messages and config.json
    digest: str  # blake2b of the bytes
    n_bytes: int
    spooled: bool = False  # a temp copy of a stream, removed by release()


class _Check:
    """One pass over bytes as they come: the digest, the size, and the first problem
    (a NUL byte means binary data; then the first invalid UTF-8)."""

    def __init__(self):
        self.hash, self.n, self.error = hashlib.blake2b(digest_size=20), 0, None
        self._utf8 = codecs.getincrementaldecoder("utf-8")()

    def feed(self, block: bytes) -> None:
        self.hash.update(block)
        if self.error is None:
            if (nul := block.find(b"\0")) >= 0:
                self.error = f"binary data (a NUL byte at offset {self.n + nul})"
            else:
                try:
                    self._utf8.decode(block)
                except UnicodeDecodeError as e:
                    self.error = f"not UTF-8 text (invalid UTF-8 at byte {self.n + e.start})"
        self.n += len(block)

    def finish(self) -> None:
        if self.error is None:
            try:
                self._utf8.decode(b"", final=True)
            except UnicodeDecodeError:
                self.error = "not UTF-8 text (truncated UTF-8 character at the end)"


def _check_file(path: Path) -> _Check:
    check = _Check()
    with open(path, "rb") as f:
        while block := f.read(READ_BYTES):
            check.feed(block)
    check.finish()
    return check


def _spool(stream: BinaryIO, name: str, label: str) -> Document:
    """Copy a stream to a temp file, so it can be hashed and read twice (tokenizer, tokens).
    Binary data, invalid UTF-8 and a stream that outgrows the limit or the disk stop it at
    once, and the partial copy is removed. `name` is recorded; `label` names it in messages."""
    folder = workspace.stdin_spool()
    folder.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale(folder)  # spools of killed runs
    fd, spool = tempfile.mkstemp(prefix=f".stdin.{os.getpid()}.", suffix=atomic.TEMP_SUFFIX, dir=folder)
    spool, check = Path(spool), _Check()
    try:
        with os.fdopen(fd, "wb") as out:
            limit = min(MAX_SPOOL_BYTES, shutil.disk_usage(folder).free - SPOOL_DISK_MARGIN)
            while block := stream.read(READ_BYTES):
                check.feed(block)
                if check.error:
                    raise UsageError(f"{label} is {check.error}")
                if check.n > limit:
                    raise UsageError(f"{label} holds more than {limit:,} bytes, more than a corpus read from a stream "
                                     f"may hold here (disk space or the {MAX_SPOOL_BYTES >> 30} GiB limit): save it "
                                     "to a file and pass that")
                out.write(block)
        check.finish()
        if check.error:
            raise UsageError(f"{label} is {check.error}")
    except BaseException:
        spool.unlink(missing_ok=True)
        raise
    return Document(spool, name, check.hash.hexdigest(), check.n, spooled=True)


def _is_gptcli_folder(folder: Path, own: set[Path]) -> bool:
    """The workspace's own tokenizer, runs or cache, or a model folder: a run folder (its
    config.json says so) or any folder of weights, such as an export-hf."""
    if folder.resolve() in own or (folder / "model.safetensors").exists():
        return True
    config = folder / "config.json"
    try:
        with open(config, "rb") as f:
            return f'"format": "{workspace.RUN_FORMAT}"'.encode() in f.read(256)
    except OSError:
        return False


def _walk(folder: Path, warn: Warn) -> Iterator[Path]:
    own = {p.resolve() for p in (workspace.TOKENIZER, workspace.RUNS, workspace.cache_root())}
    for root, dirs, files in os.walk(folder):
        kept = []
        for d in sorted(dirs):
            if d.startswith("."):
                continue
            if _is_gptcli_folder(Path(root) / d, own):
                warn(f"skipping {Path(root) / d}: a folder of gptcli's or of a model, not text")
                continue
            kept.append(d)
        dirs[:] = kept
        for name in sorted(files):
            path = Path(root) / name
            if name.startswith("."):
                continue
            try:
                mode = os.stat(path).st_mode
            except OSError:
                warn(f"skipping {path}: a link to nothing")
                continue
            if not stat.S_ISREG(mode):
                warn(f"skipping {path}: not a regular file")
                continue
            yield path


def collect_documents(paths: list[str], warn: Warn) -> list[Document]:
    """Resolve the user's paths into documents, in order. Named files must be UTF-8 text;
    binary or non-UTF-8 files found inside folders are skipped with a warning. The caller
    must `release` them (spooled streams are temp files)."""
    if not paths:
        raise UsageError("no corpus given: pass one or more files, folders, or - for stdin")
    docs: list[Document] = []
    try:
        for given in paths:
            docs.extend(_documents(given, warn))
        if sum(d.n_bytes for d in docs) == 0:
            raise UsageError("the corpus is empty: " + ", ".join(d.name for d in docs))
    except BaseException:
        release(docs)
        raise
    return docs


def _documents(given: str, warn: Warn) -> Iterator[Document]:
    if given == "-":
        if sys.stdin is None or sys.stdin.closed:
            raise UsageError("'-' means read the corpus from stdin, but stdin is closed")
        if sys.stdin.isatty():
            raise UsageError("'-' means read the corpus from stdin, but stdin is a terminal: pipe text in")
        yield _spool(sys.stdin.buffer, "<stdin>", "stdin")
        return
    path = Path(given)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        raise UsageError(f"{path}: no such file or folder") from None
    if stat.S_ISDIR(mode):
        found = 0
        for f in _walk(path, warn):
            check = _check_file(f)
            if check.error:
                warn(f"skipping {f}: {check.error}")
                continue
            found += 1
            yield Document(f, str(f), check.hash.hexdigest(), check.n)
        if not found:
            raise UsageError(f"{path} holds no UTF-8 text files")
    elif stat.S_ISREG(mode):
        check = _check_file(path)
        if check.error and check.error.startswith("binary"):
            raise UsageError(f"{path} is a binary file, not UTF-8 text")
        if check.error:
            raise UsageError(f"{path} is {check.error}; convert it, e.g. with iconv -t utf-8")
        yield Document(path, str(path), check.hash.hexdigest(), check.n)
    elif stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):  # a pipe such as <(cat a b), or a device
        with open(path, "rb") as stream:
            yield _spool(stream, str(path), str(path))
    else:
        raise UsageError(f"{path} is neither a file nor a folder")


def release(docs: list[Document]) -> None:
    """Remove the temp copies of streams."""
    for d in docs:
        if d.spooled:
            with contextlib.suppress(OSError):
                d.path.unlink()


@contextlib.contextmanager
def documents(paths: list[str], warn: Warn) -> Iterator[list[Document]]:
    """collect_documents, released when the block ends."""
    docs = collect_documents(paths, warn)
    try:
        yield docs
    finally:
        release(docs)


def iter_text_chunks(path: Path, chunk_chars: int = CHUNK_CHARS) -> Iterator[str]:
    """Stream a UTF-8 file as chunks that tokenize exactly as the whole text would.

    Chunks end where tokenizer.safe_split allows, so encoding them one by one gives the
    same ids as encoding the whole file."""
    dec = codecs.getincrementaldecoder("utf-8")()
    pending = ""
    with open(path, "rb") as f:
        while block := f.read(READ_BYTES):
            pending += dec.decode(block)
            while len(pending) >= 2 * chunk_chars:
                cut = safe_split(pending, chunk_chars, 2 * chunk_chars)
                yield pending[:cut]
                pending = pending[cut:]
        pending += dec.decode(b"", final=True)
    if pending:
        yield pending


def iter_documents_text(docs: list[Document]) -> Iterator[str]:
    """Chunks of every document in order, for training a tokenizer."""
    for doc in docs:
        yield from iter_text_chunks(doc.path)
