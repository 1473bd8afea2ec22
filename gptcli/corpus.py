"""The corpus: the user's files, folders and stdin, as documents with their digests,
streamed in chunks that tokenize exactly as the whole text would.

Folders are walked in sorted order. Hidden entries are skipped, and so are, with a
warning each, what is not a regular file (FIFOs, sockets, devices, dangling links) and
gptcli's own folders (run folders, the workspace tokenizer and runs, the cache): training
in a folder twice never trains on gptcli's output. stdin, or a named pipe, is spooled to a
temp file that is checked for binary data and bounded as it is written, and removed by
`release`. Each file is read in its format (corpus_formats: text, JSON lines, Parquet,
compressed or not) and checked whole before any of it is used. Knows nothing of token ids
or models.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
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
from gptcli.corpus_formats import CHUNK_CHARS, READ_BYTES, Format, blocks, detect, pieces
from gptcli.errors import UsageError
from gptcli.store import atomic

SNIFF_BYTES = 8192
MAX_SPOOL_BYTES = 64 << 30  # the most a stream (stdin, a pipe) may hold as a corpus
SPOOL_DISK_MARGIN = 1 << 30  # and it stops before leaving less than this free

Warn = Callable[[str], None]


@dataclass(frozen=True)
class Document:
    path: Path  # a file on disk (a stream is spooled to a file first)
    name: str  # what the user called it, for messages and config.json
    digest: str  # blake2b of the (decompressed) bytes and of how they are read (Format.key)
    n_bytes: int  # the (decompressed) bytes
    fmt: Format = Format()
    text_bytes: int | None = None  # UTF-8 bytes of the records' text (None: n_bytes, plain text)
    spooled: bool = False  # a temp copy of a stream, removed by release()

    @property
    def size(self) -> int:
        """UTF-8 bytes of text it holds: for bits per byte, progress and the empty-corpus check."""
        return self.n_bytes if self.text_bytes is None else self.text_bytes


class _Check:
    """One pass over bytes as they come: the digest, the size, and the first problem
    (a NUL byte means binary data; then the first invalid UTF-8)."""

    def __init__(self, text: bool = True):
        self.hash, self.n, self.error = hashlib.blake2b(digest_size=20), 0, None
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self.text = text  # False: records or Parquet, which their reader checks

    def feed(self, block: bytes) -> None:
        self.hash.update(block)
        if self.error is None and self.text:
            if (nul := block.find(b"\0")) >= 0:
                self.error = f"binary data (a NUL byte at offset {self.n + nul})"
            else:
                try:
                    self._utf8.decode(block)
                except UnicodeDecodeError as e:
                    self.error = f"not UTF-8 text (invalid UTF-8 at byte {self.n + e.start})"
        self.n += len(block)

    def finish(self) -> None:
        if self.error is None and self.text:
            try:
                self._utf8.decode(b"", final=True)
            except UnicodeDecodeError:
                self.error = "not UTF-8 text (truncated UTF-8 character at the end)"


def _read(path: Path, name: str, fmt: Format, spooled: bool = False) -> tuple[Document | None, str | None]:
    """Check a file whole in its format: (the document, None), or for text that is not
    UTF-8, (None, what is wrong). A bad record or archive raises a UsageError."""
    check = _Check(text=not fmt.records)
    for block in blocks(path, Format(compression=fmt.compression), name):
        check.feed(block)
        if check.error:  # binary (perhaps an archive expanding without end): no need to read on
            break
    check.finish()
    if check.error:
        return None, check.error
    text_bytes = None
    if fmt.records:
        text_bytes = sum(len(text.encode()) for _, text in pieces(path, fmt, name))
        check.hash.update(b"\0" + fmt.key.encode())
    return Document(path, name, check.hash.hexdigest(), check.n, fmt, text_bytes, spooled), None


def _file(path: Path, text_field: str | None) -> tuple[Document | None, str | None]:
    """A regular file as a document (see _read). Compressed Parquet, which must be read
    at random, is first spooled out of its archive."""
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    fmt = detect(str(path), head, text_field)
    if fmt.kind == "parquet" and fmt.compression:
        unpacked = Format("parquet", None, fmt.field)
        return _spool(blocks(path, Format(compression=fmt.compression), str(path)), str(path), str(path),
                      text_field, unpacked), None
    return _read(path, str(path), fmt)


def _spool(source: Iterator[bytes], name: str, label: str, text_field: str | None,
           fmt: Format | None = None) -> Document:
    """Copy a stream to a temp file, so it can be hashed and read twice (tokenizer, tokens).
    Its format comes from its first bytes unless given. Binary data or invalid UTF-8 in
    plain text, and a stream that outgrows the limit or the disk, stop it at once; the
    partial copy is removed. `name` is recorded; `label` names it in messages."""
    folder = workspace.stdin_spool()
    folder.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale(folder)  # spools of killed runs
    fd, spool = tempfile.mkstemp(prefix=f".stdin.{os.getpid()}.", suffix=atomic.TEMP_SUFFIX, dir=folder)
    spool, check = Path(spool), None
    try:
        with os.fdopen(fd, "wb") as out:
            limit = min(MAX_SPOOL_BYTES, shutil.disk_usage(folder).free - SPOOL_DISK_MARGIN)
            for block in source:
                if check is None:
                    fmt = fmt or detect(None, block, text_field)
                    check = _Check(text=fmt == Format())  # others are checked once they are whole
                check.feed(block)
                if check.error:
                    raise UsageError(f"{label} is {check.error}")
                if check.n > limit:
                    raise UsageError(f"{label} holds more than {limit:,} bytes, more than a corpus read from a stream "
                                     f"may hold here (disk space or the {MAX_SPOOL_BYTES >> 30} GiB limit): save it "
                                     "to a file and pass that")
                out.write(block)
        check = check or _Check()
        check.finish()
        if check.error:
            raise UsageError(f"{label} is {check.error}")
        if fmt is None or fmt == Format():
            return Document(spool, name, check.hash.hexdigest(), check.n, spooled=True)
        doc, problem = _read(spool, label, fmt, spooled=True)
        if problem:
            raise UsageError(f"{label} is {problem}")
        return dataclasses.replace(doc, name=name)
    except BaseException:
        spool.unlink(missing_ok=True)
        raise


def _is_gptcli_folder(folder: Path, own: set[Path]) -> bool:
    """The workspace's own tokenizer, runs or cache, or a model folder: a run folder (its
    config.json says so) or any folder of weights, such as an export-hf."""
    try:
        if folder.resolve() in own or (folder / "model.safetensors").exists():
            return True
    except OSError:  # unreadable: not one of ours to skip; reading it will say why
        return False
    config = folder / "config.json"
    try:
        with open(config, "rb") as f:
            return f'"format": "{workspace.RUN_FORMAT}"'.encode() in f.read(256)
    except OSError:
        return False


def _walk(folder: Path, warn: Warn) -> Iterator[Path]:
    own = {p.resolve() for p in (workspace.TOKENIZER, workspace.RUNS, workspace.cache_root())}
    def unreadable(e: OSError) -> None:
        warn(f"skipping {e.filename}: cannot read it ({e.strerror})")

    for root, dirs, files in os.walk(folder, onerror=unreadable):
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


def collect_documents(paths: list[str], warn: Warn, text_field: str | None = None) -> list[Document]:
    """Resolve the user's paths into documents, in order. Named files must be readable in
    their format; binary or non-UTF-8 text files found inside folders are skipped with a
    warning. `text_field` names the records' text field (default "text"), and makes stdin
    JSON lines. The caller must `release` them (spooled streams are temp files)."""
    if not paths:
        raise UsageError("no corpus given: pass one or more files, folders, or - for stdin")
    if paths.count("-") > 1:
        raise UsageError("- (stdin) is given twice: stdin can be read once")
    docs: list[Document] = []
    try:
        for given in paths:
            docs.extend(_documents(given, warn, text_field))
        if sum(d.size for d in docs) == 0:
            raise UsageError("the corpus is empty: " + ", ".join(d.name for d in docs))
        if text_field is not None and not any(d.fmt.records for d in docs):
            raise UsageError(f"--text-field {text_field} names a field of JSON lines or Parquet records, but "
                             "the corpus is plain text (.jsonl, .json, .ndjson and .parquet files hold records)")
    except BaseException:
        release(docs)
        raise
    return docs


def _documents(given: str, warn: Warn, text_field: str | None) -> Iterator[Document]:
    if given == "-":
        if sys.stdin is None or sys.stdin.closed:
            raise UsageError("'-' means read the corpus from stdin, but stdin is closed")
        if sys.stdin.isatty():
            raise UsageError("'-' means read the corpus from stdin, but stdin is a terminal: pipe text in")
        yield _spool(_stream_blocks(sys.stdin.buffer), "<stdin>", "stdin", text_field)
        return
    path = Path(given)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        raise UsageError(f"{path}: no such file or folder") from None
    if stat.S_ISDIR(mode):
        if _is_gptcli_folder(path, set()):
            raise UsageError(f"{path} is a run or model folder (gptcli's output), not text")
        found = 0
        for f in _walk(path, warn):
            try:
                doc, problem = _file(f, text_field)
            except PermissionError as e:
                doc, problem = None, f"cannot read it ({e.strerror})"
            if problem:
                warn(f"skipping {f}: {problem}")
                continue
            found += 1
            yield doc
        if not found:
            raise UsageError(f"{path} holds no UTF-8 text, JSON lines or Parquet files")
    elif stat.S_ISREG(mode):
        try:
            doc, problem = _file(path, text_field)
        except PermissionError as e:
            raise UsageError(f"cannot read {path}: {e.strerror}") from None
        if problem and problem.startswith("binary"):
            raise UsageError(f"{path} is a binary file, not UTF-8 text (nor JSON lines, Parquet or a gzip, zstd "
                             "or xz archive of them)")
        if problem:
            raise UsageError(f"{path} is {problem}; convert it, e.g. with iconv -t utf-8")
        yield doc
    elif stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):  # a pipe such as <(cat a b), or a device
        with open(path, "rb") as stream:
            yield _spool(_stream_blocks(stream), str(path), str(path), text_field)
    else:
        raise UsageError(f"{path} is neither a file nor a folder")


def _stream_blocks(stream: BinaryIO) -> Iterator[bytes]:
    while block := stream.read(READ_BYTES):
        yield block


def release(docs: list[Document]) -> None:
    """Remove the temp copies of streams."""
    for d in docs:
        if d.spooled:
            with contextlib.suppress(OSError):
                d.path.unlink()


@contextlib.contextmanager
def documents(paths: list[str], warn: Warn, text_field: str | None = None) -> Iterator[list[Document]]:
    """collect_documents, released when the block ends."""
    docs = collect_documents(paths, warn, text_field)
    try:
        yield docs
    finally:
        release(docs)


def document_pieces(doc: Document, chunk_chars: int = CHUNK_CHARS) -> Iterator[tuple[bool, str]]:
    """The document's text as (starts a document, text) pieces that, encoded one by one,
    give the ids of each whole document (corpus_formats.pieces)."""
    return pieces(doc.path, doc.fmt, doc.name, chunk_chars)


def iter_documents_text(docs: list[Document]) -> Iterator[str]:
    """Pieces of every document in order, for training a tokenizer."""
    for doc in docs:
        for _, text in document_pieces(doc):
            yield text
