"""Corpus to tokens: read files, folders and stdin; tokenize in streamed chunks into a
memory-mapped cache; split train/validation; sample batches with saveable state.

Peak memory does not grow with the corpus: text is read and encoded a few MB at a time.
The cache is keyed on the corpus contents and the tokenizer, so a second run on the same
data skips tokenization and a changed file is re-tokenized. Knows nothing of models.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptcli import atomic, workspace
from gptcli.errors import RunError, UsageError
from gptcli.tokenizer import BPETokenizer

CACHE_FORMAT = 1
READ_BYTES = 1 << 20  # raw bytes read per step
ENCODE_BATCH_CHARS = 2 << 20  # characters handed to the parallel encoder at once (~100 MB peak)
CHUNK_CHARS = 64 << 10  # target size of one chunk of text given to the encoder
SNIFF_BYTES = 8192

Warn = Callable[[str], None]


# -- corpus ------------------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    path: Path  # a file on disk (stdin is spooled to a file first)
    name: str  # what the user called it, for messages and config.json
    digest: str  # blake2b of the bytes
    n_bytes: int


def _looks_binary(path: Path) -> bool:
    with open(path, "rb") as f:
        return b"\0" in f.read(SNIFF_BYTES)


def _hash_and_check_utf8(path: Path) -> tuple[str, int, str | None]:
    """One pass over the file: its digest, its size, and the first UTF-8 error if any."""
    h = hashlib.blake2b(digest_size=20)
    dec = codecs.getincrementaldecoder("utf-8")()
    n, error = 0, None
    with open(path, "rb") as f:
        while block := f.read(READ_BYTES):
            h.update(block)
            if error is None:
                try:
                    dec.decode(block)
                except UnicodeDecodeError as e:
                    error = f"invalid UTF-8 at byte {n + e.start}"
            n += len(block)
    if error is None:
        try:
            dec.decode(b"", final=True)
        except UnicodeDecodeError:
            error = "truncated UTF-8 character at the end"
    return h.hexdigest(), n, error


def _spool_stdin() -> Path:
    """Copy stdin to a temp file, so it can be hashed and read twice (tokenizer, tokens)."""
    if sys.stdin is None or sys.stdin.closed:
        raise UsageError("'-' means read the corpus from stdin, but stdin is closed")
    if sys.stdin.isatty():
        raise UsageError("'-' means read the corpus from stdin, but stdin is a terminal: pipe text in")
    spool_dir = workspace.stdin_spool()
    spool_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="stdin-", suffix=".txt", dir=spool_dir)
    with os.fdopen(fd, "wb") as out:
        while block := sys.stdin.buffer.read(READ_BYTES):
            out.write(block)
    return Path(name)


def _text_files_under(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name


def collect_documents(paths: list[str], warn: Warn) -> list[Document]:
    """Resolve the user's paths into documents, in order. Named files must be UTF-8 text;
    binary or non-UTF-8 files found inside folders are skipped with a warning."""
    if not paths:
        raise UsageError("no corpus given: pass one or more files, folders, or - for stdin")
    docs: list[Document] = []
    for given in paths:
        if given == "-":
            spooled = _spool_stdin()
            digest, n, error = _hash_and_check_utf8(spooled)
            if error:
                spooled.unlink()
                raise UsageError(f"stdin is not UTF-8 text ({error})")
            docs.append(Document(spooled, "<stdin>", digest, n))
            continue
        path = Path(given)
        if path.is_dir():
            found = 0
            for f in _text_files_under(path):
                if _looks_binary(f):
                    warn(f"skipping {f}: binary file")
                    continue
                digest, n, error = _hash_and_check_utf8(f)
                if error:
                    warn(f"skipping {f}: not UTF-8 text ({error})")
                    continue
                docs.append(Document(f, str(f), digest, n))
                found += 1
            if not found:
                raise UsageError(f"{path} holds no UTF-8 text files")
        elif path.is_file():
            if _looks_binary(path):
                raise UsageError(f"{path} is a binary file, not UTF-8 text")
            digest, n, error = _hash_and_check_utf8(path)
            if error:
                raise UsageError(f"{path} is not UTF-8 text ({error}); convert it, e.g. with iconv -t utf-8")
            docs.append(Document(path, str(path), digest, n))
        elif path.exists():
            raise UsageError(f"{path} is neither a file nor a folder")
        else:
            raise UsageError(f"{path}: no such file or folder")
    if sum(d.n_bytes for d in docs) == 0:
        raise UsageError("the corpus is empty: " + ", ".join(d.name for d in docs))
    return docs


_SAFE_SPLIT = re.compile(r"(?<=\S)\s")


def iter_text_chunks(path: Path, chunk_chars: int = CHUNK_CHARS) -> Iterator[str]:
    """Stream a UTF-8 file as chunks that tokenize exactly as the whole text would.

    Chunks end just before whitespace that follows non-whitespace: no match of the
    GPT-2 pre-tokenizer pattern crosses such a point, and the pattern has no look-behind,
    so encoding the chunks one by one gives the same ids as encoding the whole file."""
    dec = codecs.getincrementaldecoder("utf-8")()
    pending = ""
    with open(path, "rb") as f:
        while block := f.read(READ_BYTES):
            pending += dec.decode(block)
            while len(pending) >= 2 * chunk_chars:
                m = _SAFE_SPLIT.search(pending, chunk_chars, 2 * chunk_chars)
                # Text with no split point in a whole window (one giant "word") is cut
                # anyway: memory stays bounded, and ids differ only at the cut.
                cut = m.start() if m else 2 * chunk_chars
                yield pending[:cut]
                pending = pending[cut:]
        pending += dec.decode(b"", final=True)
    if pending:
        yield pending


def iter_documents_text(docs: list[Document]) -> Iterator[str]:
    """Chunks of every document in order, for training a tokenizer."""
    for doc in docs:
        yield from iter_text_chunks(doc.path)


# -- token cache -------------------------------------------------------------------


@dataclass(frozen=True)
class TokenFile:
    path: Path  # raw little-endian uint16/uint32 ids
    dtype: str  # "uint16" | "uint32"
    n_tokens: int
    n_bytes: int  # UTF-8 bytes of the text the tokens stand for
    key: str

    def array(self) -> np.ndarray:
        if self.n_tokens == 0:
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.n_tokens,))


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 2**16 else "uint32"


def cache_key(docs: list[Document], tok: BPETokenizer) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"gptcli-tokens/{CACHE_FORMAT}/{tok.sha256}/{len(docs)}".encode())
    for d in docs:
        h.update(f"/{d.digest}:{d.n_bytes}".encode())
    return h.hexdigest()


def _cache_paths(docs: list[Document], tok: BPETokenizer, cache_dir: Path | None) -> tuple[str, Path, Path]:
    folder = cache_dir / "tokens" if cache_dir else workspace.token_cache()
    key = cache_key(docs, tok)
    return key, folder / f"{key}.json", folder / f"{key}.bin"


def lookup_cache(docs: list[Document], tok: BPETokenizer, cache_dir: Path | None = None) -> TokenFile | None:
    """The cached tokens of these documents under this tokenizer, if complete."""
    key, meta_path, bin_path = _cache_paths(docs, tok, cache_dir)
    if not (meta_path.is_file() and bin_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        tf = TokenFile(bin_path, meta["dtype"], meta["n_tokens"], meta["n_bytes"], key)
        if bin_path.stat().st_size == tf.n_tokens * np.dtype(tf.dtype).itemsize:
            return tf
    except (OSError, ValueError, KeyError, TypeError):
        pass  # a damaged entry is rebuilt
    return None


def tokenize_to_cache(
    docs: list[Document],
    tok: BPETokenizer,
    *,
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[TokenFile, bool]:
    """Tokenize the documents into a memmap cache; returns (file, was_cached).

    Layout: every document is preceded by <|endoftext|>, so documents are separated by it
    and an empty prompt (which starts from <|endoftext|>) looks like a document start."""
    cached = lookup_cache(docs, tok, cache_dir)
    if cached is not None:
        return cached, True
    key, meta_path, bin_path = _cache_paths(docs, tok, cache_dir)
    dtype = np.dtype(token_dtype(tok.vocab_size))
    total_bytes = sum(d.n_bytes for d in docs)
    n_tokens, done_bytes = 0, 0
    eot = np.array([tok.eot_id], dtype=dtype)
    with atomic.atomic_path(bin_path) as tmp, open(tmp, "wb") as out:
        for doc in docs:
            out.write(eot.tobytes())
            n_tokens += 1
            batch: list[str] = []
            size = 0
            for chunk in _chunks_with_flush(doc.path):
                if chunk is not None:
                    batch.append(chunk)
                    size += len(chunk)
                if batch and (chunk is None or size >= ENCODE_BATCH_CHARS):
                    ids = np.concatenate([np.asarray(enc, dtype=dtype) for enc in tok.encode_batch(batch)])
                    out.write(ids.tobytes())
                    n_tokens += len(ids)
                    done_bytes += size  # characters: close enough for a progress bar
                    batch, size = [], 0
                    if progress:
                        progress(done_bytes, total_bytes)
    meta = {"format": CACHE_FORMAT, "dtype": dtype.name, "n_tokens": n_tokens,
            "n_bytes": total_bytes, "tokenizer_sha256": tok.sha256,
            "documents": [d.name for d in docs]}
    atomic.write_text(meta_path, json.dumps(meta))
    return TokenFile(bin_path, dtype.name, n_tokens, total_bytes, key), False


def _chunks_with_flush(path: Path) -> Iterator[str | None]:
    """The file's chunks, then None to say 'flush what is batched'."""
    yield from iter_text_chunks(path)
    yield None


# -- splits and batches ------------------------------------------------------------


@dataclass
class Split:
    tokens: np.ndarray  # uint16/uint32 ids (a memmap view)
    n_bytes: int  # UTF-8 bytes these tokens stand for (for bits per byte)


def check_val_fraction(val_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")


def split_train_val(tokens: np.ndarray, byte_lengths: np.ndarray, val_fraction: float) -> tuple[Split, Split]:
    """The last `val_fraction` of the tokens is validation."""
    check_val_fraction(val_fraction)
    n_val = int(len(tokens) * val_fraction)
    train, val = tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val :]
    return Split(train, count_bytes(train, byte_lengths)), Split(val, count_bytes(val, byte_lengths))


def count_bytes(tokens: np.ndarray, byte_lengths: np.ndarray, block: int = 1 << 22) -> int:
    return int(sum(byte_lengths[tokens[i : i + block]].sum() for i in range(0, len(tokens), block)))


def check_fits(split: Split, block_size: int, what: str) -> None:
    if len(split.tokens) < block_size + 1:
        raise UsageError(
            f"the {what} split has {len(split.tokens)} tokens, fewer than one block of "
            f"{block_size + 1}: give more text, a smaller --block-size, or a different --val-fraction"
        )


class BatchSampler:
    """Random windows of block_size + 1 tokens. Its whole state is the PCG64 state, a
    JSON-able dict, so a resumed run draws exactly the batches the first run would have."""

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int, rank: int = 0):
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        # Ranks draw from independent streams: each sees its own shard of windows.
        self.rng = np.random.Generator(np.random.PCG64([seed, rank]))
        self._offsets = np.arange(block_size + 1)

    def next(self) -> np.ndarray:
        """(batch_size, block_size + 1) int64; inputs are [:, :-1], targets [:, 1:]."""
        starts = self.rng.integers(0, len(self.tokens) - self.block_size, size=self.batch_size)
        return self.tokens[starts[:, None] + self._offsets].astype(np.int64)

    def state_dict(self) -> dict:
        return self.rng.bit_generator.state

    def load_state_dict(self, state: dict) -> None:
        try:
            self.rng.bit_generator.state = state
        except (TypeError, ValueError, KeyError) as e:
            raise RunError(f"saved sampler state is unreadable: {e}") from None


def spread_windows(tokens: np.ndarray, block_size: int, count: int) -> np.ndarray:
    """`count` windows spread evenly over the split, the same at every evaluation, and
    drawn without touching any RNG (so evaluating never changes what training sees)."""
    last = len(tokens) - block_size - 1
    starts = np.linspace(0, max(last, 0), num=count).round().astype(np.int64)
    return tokens[starts[:, None] + np.arange(block_size + 1)].astype(np.int64)

