"""Byte-level BPE tokenizer: train, encode, decode, save, load.

A thin, validated wrapper around HuggingFace `tokenizers`: ByteLevel pre-tokenizer and
decoder, the 256-byte initial alphabet (so any UTF-8 text round-trips exactly), and
`<|endoftext|>` as document separator and end-of-text token. Knows nothing of corpora on
disk or of models.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from gptcli.config import MIN_VOCAB
from gptcli.errors import UsageError, first_line
from gptcli.store import atomic
from gptcli.workspace import TOKENIZER_FILE

EOT = "<|endoftext|>"


class BPETokenizer:
    def __init__(self, tok: Tokenizer, json_text: str | None = None):
        self.tok = tok
        self.json_text = json_text if json_text is not None else tok.to_str()
        eot = tok.token_to_id(EOT)
        if eot is None:
            raise UsageError(f"tokenizer has no {EOT} token: it is not a gptcli/GPT-2 style tokenizer")
        self.eot_id: int = eot
        self.vocab_size: int = tok.get_vocab_size()

    # -- building -------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "BPETokenizer":
        if vocab_size < MIN_VOCAB:
            raise UsageError(f"--vocab-size must be at least {MIN_VOCAB} (256 bytes + {EOT}), got {vocab_size}")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=2,
            special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: Path | str) -> "BPETokenizer":
        """Load tokenizer.json, or the tokenizer.json inside a folder."""
        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        if not path.is_file():
            raise UsageError(f"no tokenizer at {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"{path} is not a valid tokenizer.json ({first_line(e)})") from None
        return cls.from_text(text, str(path))

    @classmethod
    def from_text(cls, text: str, where: str) -> "BPETokenizer":
        """A tokenizer from the text of a tokenizer.json (`where` names it in errors)."""
        try:
            spec = json.loads(text)
            tok = Tokenizer.from_str(text)
        except Exception as e:  # bad JSON, or tokenizers' own errors
            raise UsageError(f"{where} is not a valid tokenizer.json ({first_line(e)})") from None
        model_type = (spec.get("model") or {}).get("type") if isinstance(spec, dict) else None
        decoder = json.dumps(spec.get("decoder")) if isinstance(spec, dict) else ""
        if model_type != "BPE" or "ByteLevel" not in decoder:
            raise UsageError(f"{where} is not a byte-level BPE tokenizer (model {model_type!r})")
        return cls(tok, text)

    @classmethod
    def from_vocab_merges(cls, vocab: Path, merges: Path) -> "BPETokenizer":
        """GPT-2's older tokenizer files (vocab.json + merges.txt), as a byte-level BPE."""
        try:
            tok = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
        except Exception as e:  # tokenizers raises plain Exception on bad files
            raise UsageError(f"cannot read {vocab.name} + {merges.name} in {vocab.parent} ({first_line(e)})") from None
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([EOT])  # keeps its id in vocab.json; marks it special
        return cls(tok)

    def save(self, path: Path | str) -> Path:
        """Write tokenizer.json atomically; `path` may be a folder or a file name."""
        path = Path(path)
        if path.suffix != ".json":
            path = path / TOKENIZER_FILE
        atomic.write_text(path, self.json_text)
        return path

    # -- using ----------------------------------------------------------------------
    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.json_text.encode("utf-8")).hexdigest()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encodes in parallel across cores. `encode_batch_fast` (tokenizers >= 0.21)
        skips character offsets, which nothing here uses, and is faster (docs/benchmarks.md)."""
        encode = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=False)]

    def encode_tail(self, text: str, n: int) -> list[int]:
        """The last n ids of encode(text), in memory bounded by n rather than by the text:
        only a tail long enough to hold n tokens, cut where safe_split allows, is encoded.
        A tail with no such point is one giant "word" (a line of 100 MB without a space),
        cut anyway, as safe_split cuts one: memory stays bounded, and ids differ only at
        the cut."""
        longest = max(len(b) for b in self.token_bytes) or 1
        span = n * longest + 1
        while span < len(text):
            start = safe_split(text, len(text) - span, len(text))
            if start == len(text):
                start = len(text) - span
            ids = self.encode(text[start:])
            if len(ids) > n:  # the tail began before the n-th last token: those n are exact
                return ids[-n:]
            span *= 4
        return self.encode(text)[-n:]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    @functools.cached_property
    def token_bytes(self) -> list[bytes]:
        """The bytes each token id stands for (special tokens: their text)."""
        out = [b""] * self.vocab_size
        specials = {t.content for t in self.tok.get_added_tokens_decoder().values() if t.special}
        alphabet = byte_alphabet()
        for token, i in self.tok.get_vocab().items():
            out[i] = token.encode("utf-8") if token in specials else bytes(alphabet[c] for c in token)
        return out

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder(self.token_bytes)

    def token_byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes each token stands for (special tokens: 0), for bits per byte.
        In byte-level BPE each character of a token's string is exactly one byte."""
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        specials = {t.content for t in self.tok.get_added_tokens_decoder().values() if t.special}
        for token, i in self.tok.get_vocab().items():
            lengths[i] = 0 if token in specials else len(token)
        return lengths

    def summary(self) -> dict:
        return {"vocab_size": self.vocab_size, "eot_id": self.eot_id, "sha256": self.sha256}


_SAFE_SPLIT = re.compile(r"(?<=\S)\s")


def safe_split(text: str, start: int, end: int) -> int:
    """The first point in text[start:end] where the text may be cut without changing its
    tokens: just before whitespace that follows non-whitespace. No match of the GPT-2
    pre-tokenizer pattern crosses such a point, and the pattern has no look-behind, so the
    pieces encode to the same ids as the whole. `end` if there is none (one giant "word"
    is cut anyway: memory stays bounded, and ids differ only at the cut)."""
    m = _SAFE_SPLIT.search(text, start, end)
    return m.start() if m else end


@functools.cache
def byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character -> byte: printable Latin-1 bytes stand for
    themselves, the other 68 are shifted to code points from 256 up, in byte order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    table, shifted = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


class StreamDecoder:
    """Token ids in, text out, one id at a time, never a partial UTF-8 character: bytes
    are held back until they complete a character (invalid ones become U+FFFD). All
    pieces plus `flush()` concatenate to the text of all the ids."""

    def __init__(self, token_bytes: list[bytes]):
        self._token_bytes = token_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def step(self, token_id: int) -> str:
        return self._utf8.decode(self._token_bytes[token_id])

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


def check_text(text: str, what: str) -> str:
    """Text given as an argument: Python hands invalid UTF-8 in argv over as lone
    surrogates, which no tokenizer (and no output) can take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UsageError(f"{what} is not valid UTF-8 text (a bad byte at character {e.start})") from None
    return text
