"""Documents to tokens: tokenize in streamed chunks into a memory-mapped cache; split
train/validation; sample batches with saveable state.

Peak memory does not grow with the corpus: text is encoded a few MB at a time. The cache
is keyed on the corpus contents and the tokenizer, so a second run on the same data skips
tokenization and a changed file is re-tokenized. An entry proves itself: its digest and
largest id, written with it, are checked on use, and one that fails is rebuilt with a
warning. Knows nothing of models.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptcli import workspace
from gptcli.config import TrainConfig
from gptcli.corpus import Document, document_pieces
from gptcli.errors import UsageError, first_line
from gptcli.settings import check_value, specs
from gptcli.store import atomic
from gptcli.tokenizer import BPETokenizer

CACHE_FORMAT = 2  # 2: entries carry their digest and largest id
ENCODE_BATCH_CHARS = 2 << 20  # characters handed to the parallel encoder at once (~100 MB peak)
ENCODE_BATCH_PIECES = 16384  # and at most this many pieces (records), so short ones do not pile up
HASH_BYTES = 8 << 20  # read per step when checking an entry's digest

Warn = Callable[[str], None]


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


def _digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        while block := f.read(HASH_BYTES):
            h.update(block)
    return h.hexdigest()


def lookup_cache(docs: list[Document], tok: BPETokenizer, cache_dir: Path | None = None,
                 warn: Warn | None = None) -> TokenFile | None:
    """The cached tokens of these documents under this tokenizer, if the entry is whole:
    its size, digest and largest id must be those written with it. A damaged entry is
    reported (`warn`) and left to be rebuilt."""
    key, meta_path, bin_path = _cache_paths(docs, tok, cache_dir)
    if not (meta_path.is_file() and bin_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        tf = TokenFile(bin_path, meta["dtype"], meta["n_tokens"], meta["n_bytes"], key)
        whole = (tf.dtype == token_dtype(tok.vocab_size) and meta["max_id"] < tok.vocab_size
                 and bin_path.stat().st_size == tf.n_tokens * np.dtype(tf.dtype).itemsize
                 and _digest(bin_path) == meta["blake2b"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        whole, why = False, first_line(e)
    else:
        why = "its tokens are not the ones written"
    if whole:
        return tf
    if warn:
        warn(f"the token cache entry {bin_path.name} is damaged ({why}): tokenizing again")
    return None


def tokenize_to_cache(
    docs: list[Document],
    tok: BPETokenizer,
    *,
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    warn: Warn | None = None,
) -> tuple[TokenFile, bool]:
    """Tokenize the documents into a memmap cache; returns (file, was_cached).

    Layout: every document (a file of text, or one record) is preceded by <|endoftext|>, so
    documents are separated by it and an empty prompt (which starts from <|endoftext|>)
    looks like a document start."""
    cached = lookup_cache(docs, tok, cache_dir, warn)
    if cached is not None:
        return cached, True
    key, meta_path, bin_path = _cache_paths(docs, tok, cache_dir)
    atomic.remove_stale(bin_path.parent)
    dtype = np.dtype(token_dtype(tok.vocab_size))
    total_bytes = sum(d.size for d in docs)
    n_tokens, done_bytes, max_id = 0, 0, tok.eot_id
    digest = hashlib.blake2b(digest_size=20)
    with atomic.atomic_path(bin_path) as tmp, open(tmp, "wb") as out:
        for doc in docs:
            for ids, size in _encoded(doc, tok, dtype):
                data = ids.tobytes()
                out.write(data)
                digest.update(data)
                n_tokens += len(ids)
                max_id = max(max_id, int(ids.max()) if len(ids) else 0)
                done_bytes += size  # characters: close enough for a progress bar
                if progress and size:
                    progress(done_bytes, total_bytes)
    meta = {"format": CACHE_FORMAT, "dtype": dtype.name, "n_tokens": n_tokens, "n_bytes": total_bytes,
            "tokenizer_sha256": tok.sha256, "blake2b": digest.hexdigest(), "max_id": max_id,
            "documents": [d.name for d in docs]}
    atomic.write_text(meta_path, json.dumps(meta))
    return TokenFile(bin_path, dtype.name, n_tokens, total_bytes, key), False


def _encoded(doc: Document, tok: BPETokenizer, dtype: np.dtype) -> Iterator[tuple[np.ndarray, int]]:
    """The document's ids, <|endoftext|> before each document it holds, a batch of pieces
    (a few MB of text, or many records) at a time, with the batch's size in characters."""
    eot = np.array([tok.eot_id], dtype=dtype)
    batch: list[tuple[bool, str]] = []
    size = 0
    for piece in itertools.chain(document_pieces(doc), [None]):
        if piece is not None:
            batch.append(piece)
            size += len(piece[1])
        if batch and (piece is None or size >= ENCODE_BATCH_CHARS or len(batch) >= ENCODE_BATCH_PIECES):
            parts = []
            for (starts, _), ids in zip(batch, tok.encode_batch([text for _, text in batch])):
                if starts:
                    parts.append(eot)
                parts.append(np.asarray(ids, dtype=dtype))
            yield np.concatenate(parts), size
            batch, size = [], 0


# -- splits and batches ------------------------------------------------------------


@dataclass
class Split:
    tokens: np.ndarray  # uint16/uint32 ids (a memmap view)
    n_bytes: int  # UTF-8 bytes these tokens stand for (for bits per byte)


def split_train_val(tokens: np.ndarray, byte_lengths: np.ndarray, val_fraction: float) -> tuple[Split, Split]:
    """The last `val_fraction` of the tokens is validation."""
    check_value("val_fraction", val_fraction, float, specs(TrainConfig)["val_fraction"][1])
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
        except (TypeError, ValueError, KeyError, OverflowError) as e:
            raise UsageError(f"the saved sampler state is unreadable ({first_line(e)})") from None


def random_windows(tokens: np.ndarray, block_size: int, count: int, seed: int = 0) -> np.ndarray:
    """`count` windows (count, block_size + 1) at distinct random starts, the same for the
    same seed: an average over them has no period to alias with, as evenly spread
    windows can."""
    last = len(tokens) - block_size - 1
    starts = np.sort(np.random.Generator(np.random.PCG64(seed)).choice(last + 1, size=min(count, last + 1),
                                                                          replace=False))
    return tokens[starts[:, None] + np.arange(block_size + 1)].astype(np.int64)


def spread_windows(tokens: np.ndarray, block_size: int, count: int) -> np.ndarray:
    """`count` windows spread evenly over the split, the same at every evaluation, and
    drawn without touching any RNG (so evaluating never changes what training sees)."""
    last = len(tokens) - block_size - 1
    starts = np.linspace(0, max(last, 0), num=count).round().astype(np.int64)
    return tokens[starts[:, None] + np.arange(block_size + 1)].astype(np.int64)

