"""How one corpus file is read: plain UTF-8 text, JSON lines or Parquet, the first two
possibly inside a gzip, zstd or xz stream. The format comes from the name's suffixes, else
from the first bytes (compression magic numbers, Parquet's PAR1); a stream with no name is
JSON lines only when --text-field says so. A plain file is one document; a record is one.
Streams are decompressed as they are read, JSON lines read one bounded line at a time and
Parquet one row group at a time, so memory does not grow with the file. Knows nothing of
tokens; corpus.py decides which files are read and checks them.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import io
import json
import lzma
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gptcli.errors import UsageError
from gptcli.tokenizer import safe_split

READ_BYTES = 1 << 20  # raw bytes read per step
CHUNK_CHARS = 64 << 10  # target size of one piece of text given to the encoder
MAX_LINE_BYTES = 64 << 20  # the longest JSON line read: one record must fit in memory
PARQUET_BATCH_ROWS = 1024  # rows converted to Python strings at once
ZSTD_FEED = 512  # compressed bytes decompressed at once (see _Zstd)
DEFAULT_FIELD = "text"

COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".xz": "xz"}
MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"\xfd7zXZ\x00": "xz"}
RECORD_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
PARQUET_MAGIC = b"PAR1"
EXTRA_HINT = "pip install 'gptcli[data]'"


@dataclass(frozen=True)
class Format:
    kind: str = "text"  # "text" | "jsonl" | "parquet"
    compression: str | None = None  # "gzip" | "zstd" | "xz" around the bytes
    field: str | None = None  # the record field that holds a document's text

    @property
    def records(self) -> bool:
        return self.kind != "text"

    @property
    def key(self) -> str:
        """What a document's digest covers besides its bytes: the same bytes read with
        another field are other text (empty for plain text, whose bytes say it all)."""
        return f"{self.kind}:{self.field}" if self.records else ""

    def __str__(self) -> str:
        what = {"text": "text", "jsonl": "JSON lines", "parquet": "Parquet"}[self.kind]
        return what + (f" ({self.compression})" if self.compression else "")


def detect(name: str | None, head: bytes, text_field: str | None) -> Format:
    """The format of a file called `name` (None for a stream) that starts with `head`."""
    suffixes = [s.lower() for s in Path(name).suffixes] if name else []
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes.pop()
    else:
        compression = next((c for magic, c in MAGIC.items() if head.startswith(magic)), None)
    kind = RECORD_SUFFIXES.get(suffixes[-1], "text") if suffixes else "text"
    if kind == "text" and compression is None and head.startswith(PARQUET_MAGIC):
        kind = "parquet"
    if kind == "text" and name is None and text_field is not None:
        kind = "jsonl"  # a stream has no suffix: --text-field is what says it holds records
    return Format(kind, compression, (text_field or DEFAULT_FIELD) if kind != "text" else None)


@contextlib.contextmanager
def opened(path: Path, compression: str | None, name: str) -> Iterator[BinaryIO]:
    """The file's bytes, decompressed as they are read. A corrupt or truncated stream
    raises a UsageError naming the file."""
    with open(path, "rb") as raw:
        if compression is None:
            yield raw
            return
        if compression == "gzip":
            stream = gzip.GzipFile(fileobj=raw, mode="rb")
        elif compression == "xz":
            stream = lzma.LZMAFile(raw, mode="rb")
        else:
            try:
                import zstandard
            except ImportError:
                raise UsageError(f"{name} is zstd-compressed, and reading zstd needs the zstandard package: "
                                 f"{EXTRA_HINT}") from None
            stream = io.BufferedReader(_Zstd(raw, zstandard), buffer_size=READ_BYTES)
        with stream:
            yield stream


class _Zstd(io.RawIOBase):
    """zstd frames decompressed as read, in memory bounded by the output of ZSTD_FEED
    input bytes (zstd's densest block, run-length, turns 4 bytes into 128 KB: 512 bytes
    give at most 16 MB). zstandard's own stream reader ends a truncated frame silently;
    this one raises EOFError, as gzip and lzma do."""

    def __init__(self, raw: BinaryIO, zstandard):
        self.raw, self.zstandard = raw, zstandard
        self.frame, self.started = zstandard.ZstdDecompressor().decompressobj(), False
        self.unfed, self.fed = b"", 0  # input read but not yet decompressed, from offset fed
        self.out, self.taken = b"", 0  # output not yet handed out, from offset taken

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self.taken == len(self.out):
            if self.fed == len(self.unfed):
                self.unfed, self.fed = self.raw.read(READ_BYTES), 0
                if not self.unfed:
                    if self.started and not self.frame.eof:
                        raise EOFError("the zstd stream ended inside a frame: the file is truncated")
                    return 0
            data = self.unfed[self.fed:self.fed + ZSTD_FEED]
            self.fed += len(data)
            self.out, self.taken = b"", 0
            while data:
                if self.frame.eof:  # the next frame starts here
                    self.frame = self.zstandard.ZstdDecompressor().decompressobj()
                self.started = True
                self.out += self.frame.decompress(data)
                data = self.frame.unused_data if self.frame.eof else b""
        n = min(len(buffer), len(self.out) - self.taken)
        buffer[:n] = self.out[self.taken:self.taken + n]
        self.taken += n
        return n


def _corrupt(e: BaseException) -> bool:
    """An error a damaged archive raises while being read."""
    if isinstance(e, (EOFError, lzma.LZMAError, gzip.BadGzipFile)):
        return True
    with contextlib.suppress(ImportError):
        import zstandard

        if isinstance(e, zstandard.ZstdError):
            return True
    return isinstance(e, OSError) and not isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError))


def _read(read, size: int, fmt: Format, where: str) -> bytes:
    """stream.read or readline: a damaged archive raises a UsageError saying where."""
    try:
        return read(size)
    except Exception as e:
        if _corrupt(e):
            raise UsageError(f"{where} is not a readable {fmt.compression} file ({e})") from None
        raise


def blocks(path: Path, fmt: Format, name: str) -> Iterator[bytes]:
    """The decompressed bytes in blocks of about READ_BYTES."""
    with opened(path, fmt.compression, name) as stream:
        while block := _read(stream.read, READ_BYTES, fmt, name):
            yield block


def split_text(parts: Iterator[str], chunk_chars: int = CHUNK_CHARS) -> Iterator[str]:
    """Join and cut streamed text into chunks that tokenize exactly as the whole text
    would: cuts fall where tokenizer.safe_split allows."""
    pending = ""
    for part in parts:
        pending += part
        while len(pending) >= 2 * chunk_chars:
            cut = safe_split(pending, chunk_chars, 2 * chunk_chars)
            yield pending[:cut]
            pending = pending[cut:]
    if pending:
        yield pending


def _decoded(path: Path, fmt: Format, name: str) -> Iterator[str]:
    dec = codecs.getincrementaldecoder("utf-8")()
    for block in blocks(path, fmt, name):
        yield dec.decode(block)
    yield dec.decode(b"", final=True)


def pieces(path: Path, fmt: Format, name: str, chunk_chars: int = CHUNK_CHARS) -> Iterator[tuple[bool, str]]:
    """The file's text as (starts a document, text) pieces, in order. Plain text is one
    document, however many pieces; a record is one document. Plain text must already have
    been checked to be UTF-8 (corpus.py does); records are checked here, and a bad one
    raises a UsageError naming the file and its line or row group."""
    if fmt.kind == "text":
        first = True
        for chunk in split_text(_decoded(path, fmt, name), chunk_chars):
            yield first, chunk
            first = False
        if first:
            yield True, ""  # an empty file is still a document
        return
    texts = _jsonl(path, fmt, name) if fmt.kind == "jsonl" else _parquet(path, fmt, name)
    for text in texts:
        if len(text) <= 2 * chunk_chars:
            yield True, text
            continue
        for i, chunk in enumerate(split_text(iter([text]), chunk_chars)):
            yield i == 0, chunk


def _record_text(value: object, field: str, where: str) -> str:
    if not isinstance(value, dict):
        raise UsageError(f"{where} is not a JSON object but {_json_type(value)}: each line must be one record")
    if field not in value:
        fields = ", ".join(sorted(value)[:8]) or "none"
        raise UsageError(f"{where} has no {field!r} field (it has: {fields}); name the text's field with --text-field")
    text = value[field]
    if not isinstance(text, str):
        raise UsageError(f"{where}: the {field!r} field is {_json_type(text)}, not a string")
    _check_encodable(text, where)
    return text


def _check_encodable(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate, such as "\ud800" in JSON
        raise UsageError(f"{where}: the text holds a lone surrogate (U+{ord(text[e.start]):04X}), "
                         "which is not a character") from None


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _jsonl(path: Path, fmt: Format, name: str) -> Iterator[str]:
    with opened(path, fmt.compression, name) as stream:
        number = 0
        while True:
            number += 1
            where = f"{name} line {number}"
            line = _read(stream.readline, MAX_LINE_BYTES + 1, fmt, f"{name} at line {number}")
            if not line:
                return
            if len(line) > MAX_LINE_BYTES:
                raise UsageError(f"{where} is longer than {MAX_LINE_BYTES >> 20} MiB: one record must fit in memory")
            if not line.strip():
                continue
            if number == 1 and line.lstrip().startswith(b"["):
                raise UsageError(f"{name} is a JSON array, not JSON lines (one record per line): "
                                 "convert it, e.g. with jq -c '.[]'")
            try:
                value = json.loads(line)
            except UnicodeDecodeError as e:
                raise UsageError(f"{where} is not UTF-8 (invalid byte at column {e.start + 1})") from None
            except ValueError as e:
                raise UsageError(f"{where} is not valid JSON ({e})") from None
            except RecursionError:
                raise UsageError(f"{where} nests too deeply to read") from None
            yield _record_text(value, fmt.field, where)


def _parquet(path: Path, fmt: Format, name: str) -> Iterator[str]:
    try:
        import pyarrow
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(f"{name} is a Parquet file, and reading Parquet needs pyarrow: {EXTRA_HINT}") from None
    try:
        pf = pq.ParquetFile(path)
    except (pyarrow.ArrowException, OSError) as e:
        raise UsageError(f"{name} is not a readable Parquet file ({e})") from None
    field = fmt.field
    schema = pf.schema_arrow
    if field not in schema.names:
        fields = ", ".join(schema.names[:8]) or "none"
        raise UsageError(f"{name} has no {field!r} column (it has: {fields}); name the text's column with --text-field")
    kind = schema.field(field).type
    if not (pyarrow.types.is_string(kind) or pyarrow.types.is_large_string(kind)):
        raise UsageError(f"{name}: the {field!r} column holds {kind}, not strings")
    for group in range(pf.num_row_groups):
        where = f"{name} row group {group}"
        row = 0
        try:
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group], columns=[field]):
                for text in batch.column(0).to_pylist():
                    if text is None:
                        raise UsageError(f"{where}, row {row}: the {field!r} value is null, not a string")
                    yield text  # decoded from UTF-8, so it holds no lone surrogate
                    row += 1
        except (pyarrow.ArrowException, OSError, ValueError) as e:
            raise UsageError(f"{where} is not readable ({e})") from None
