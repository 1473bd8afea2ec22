"""`gptcli tokenizer train|encode|decode`: a byte-level BPE tokenizer on its own, for
pipelines (text on stdin -> ids on stdout, and back)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gptcli.console import Console
from gptcli.data import collect_documents, iter_documents_text
from gptcli.errors import UsageError
from gptcli.tokenizer import BPETokenizer
from gptcli.workspace import TOKENIZER, TOKENIZER_FILE


@dataclass
class TrainTokenizerRequest:
    paths: list[str]
    vocab_size: int
    out: Path  # a folder, or a .json file
    overwrite: bool


@dataclass
class CodecRequest:
    tokenizer: Path | None  # tokenizer.json, its folder or a run folder; None: ./tokenizer/
    read: Callable[[], str]  # the input (encode: text; decode: ids), read once the tokenizer has loaded


@dataclass
class Ids:
    ids: list[int]

    def to_json(self) -> list[int]:
        return self.ids

    def to_text(self) -> str:
        return " ".join(map(str, self.ids))


@dataclass
class Text:
    text: str

    def to_json(self) -> str:
        return self.text

    def to_text(self) -> str:
        return self.text


def train(req: TrainTokenizerRequest, console: Console) -> Text:
    target = req.out if req.out.suffix == ".json" else req.out / TOKENIZER_FILE
    if target.exists() and not req.overwrite:
        raise UsageError(f"{target} exists: pass --overwrite to replace it")
    docs = collect_documents(req.paths, console.warn)
    tok = BPETokenizer.train(iter_documents_text(docs), req.vocab_size)
    tok.save(target)
    return Text(f"wrote {target} ({tok.vocab_size} tokens)")


def encode(req: CodecRequest) -> Ids:
    tok = BPETokenizer.load(req.tokenizer or TOKENIZER)
    return Ids(tok.encode(req.read()))


def decode(req: CodecRequest) -> Text:
    """Ids, space-separated or as a JSON list, back to text."""
    tok = BPETokenizer.load(req.tokenizer or TOKENIZER)
    raw = req.read().strip()
    try:
        ids = json.loads(raw) if raw.startswith("[") else [int(t) for t in raw.split()]
    except ValueError:
        raise UsageError("stdin must hold integer token ids, space-separated or as a JSON list") from None
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise UsageError("stdin must hold integer token ids")
    bad = [i for i in ids if not 0 <= i < tok.vocab_size]
    if bad:
        raise UsageError(f"token id {bad[0]} is outside the vocabulary (0..{tok.vocab_size - 1})")
    return Text(tok.decode(ids))
