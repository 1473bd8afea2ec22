"""`gptcli tokenizer train|encode|decode`: a byte-level BPE tokenizer on its own, for
pipelines (text on stdin -> ids on stdout, and back). encode streams: its memory does not
grow with the input."""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

from gptcli.console import Console
from gptcli.corpus import READ_BYTES, documents, iter_documents_text
from gptcli.errors import UsageError
from gptcli.store import folders
from gptcli.tokenizer import BPETokenizer, safe_split
from gptcli.workspace import TOKENIZER, TOKENIZER_FILE


@dataclass
class TrainTokenizerRequest:
    paths: list[str]
    vocab_size: int
    out: Path  # a folder, or a .json file
    overwrite: bool
    text_field: str | None = None  # the records' text field (JSON lines, Parquet); None: "text"


@dataclass
class DecodeRequest:
    tokenizer: Path | None  # tokenizer.json, its folder or a run folder; None: ./tokenizer/
    read: Callable[[], str]  # the ids as text, read once the tokenizer has loaded


@dataclass
class EncodeRequest:
    tokenizer: Path | None
    source: Callable[[], BinaryIO]  # opens the UTF-8 text, read in pieces once the tokenizer has loaded
    json_list: bool = False  # a JSON list instead of space-separated ids


@dataclass
class Encoded:
    count: int  # ids written

    def to_json(self) -> dict:
        return {"ids": self.count}

    def to_text(self) -> str:
        return f"{self.count:,} ids"


@dataclass
class Text:
    text: str

    def to_json(self) -> str:
        return self.text

    def to_text(self) -> str:
        return self.text


def train(req: TrainTokenizerRequest, console: Console) -> Text:
    target = req.out if req.out.suffix == ".json" else req.out / TOKENIZER_FILE
    if target != req.out and os.path.lexists(req.out) and not req.out.is_dir():  # not the folder it must be
        if not req.out.is_file() or req.out.is_symlink():
            folders.check_file_out(req.out, "--out")  # names a device, FIFO, socket or link for what it is
        raise UsageError(f"--out {req.out} is a file: name a .json file, or a folder to hold {TOKENIZER_FILE}")
    folders.check_file_out(target, "--out", req.overwrite, reads=[Path(p) for p in req.paths if p != "-"])
    with documents(req.paths, console.warn, req.text_field) as docs:
        tok = BPETokenizer.train(iter_documents_text(docs), req.vocab_size)
    tok.save(target)
    return Text(f"wrote {target} ({tok.vocab_size} tokens)")


def encode(req: EncodeRequest, out: TextIO) -> Encoded:
    """Stream the ids of the source to `out`, a piece of text at a time: memory stays
    bounded whatever the input's size, and the ids equal those of the whole text."""
    tok = BPETokenizer.load(req.tokenizer or TOKENIZER)
    utf8 = codecs.getincrementaldecoder("utf-8")()
    pending, count, read = "", 0, 0
    source = req.source()
    while True:
        block = source.read(READ_BYTES)
        if (nul := block.find(b"\0")) >= 0:
            raise UsageError(f"stdin holds binary data (a NUL byte at offset {read + nul}), not text")
        try:
            pending += utf8.decode(block, final=not block)
        except UnicodeDecodeError as e:
            raise UsageError(f"stdin is not UTF-8 text (invalid byte at {read + e.start})") from None
        read += len(block)
        cut = len(pending) if not block else safe_split(pending, max(len(pending) - READ_BYTES, 0), len(pending))
        piece, pending = pending[:cut], pending[cut:]
        ids = tok.encode(piece) if piece else []
        if ids:
            sep = ", " if req.json_list else " "
            out.write((sep if count else "[" if req.json_list else "") + sep.join(map(str, ids)))
            count += len(ids)
        if not block:
            break
    out.write(("]" if count else "[]") + "\n" if req.json_list else "\n")
    out.flush()
    return Encoded(count)


def decode(req: DecodeRequest) -> Text:
    """Ids, space-separated or as a JSON list, back to text."""
    tok = BPETokenizer.load(req.tokenizer or TOKENIZER)
    raw = req.read().strip()
    try:
        ids = json.loads(raw) if raw.startswith("[") else [int(t) for t in raw.split()]
    except (ValueError, RecursionError):  # RecursionError: brackets nested without end
        raise UsageError("stdin must hold integer token ids, space-separated or as a JSON list") from None
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise UsageError("stdin must hold integer token ids")
    bad = [i for i in ids if not 0 <= i < tok.vocab_size]
    if bad:
        raise UsageError(f"token id {bad[0]} is outside the vocabulary (0..{tok.vocab_size - 1})")
    return Text(tok.decode(ids))
