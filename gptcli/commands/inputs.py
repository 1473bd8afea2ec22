"""What commands read besides run folders: text on stdin, prompt files, and corpora
turned into tokens through the cache with a progress bar.

Shared by train, eval, generate and tokenizer: each mechanism once.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import BinaryIO

from gptcli.console import Console
from gptcli.corpus import Document
from gptcli.data import Split, TokenFile, lookup_cache, split_train_val, tokenize_to_cache
from gptcli.errors import UsageError
from gptcli.tokenizer import BPETokenizer, check_text

MAX_STDIN_TEXT = 256 << 20  # what a prompt or a list of ids read whole from stdin may hold


def stdin_stream() -> BinaryIO:
    """stdin, for reading text that was piped in."""
    if sys.stdin is None or sys.stdin.closed:
        raise UsageError("stdin is closed: pipe text in")
    if sys.stdin.isatty():
        raise UsageError("stdin is a terminal: pipe text in, e.g. echo hello | gptcli tokenizer encode")
    return sys.stdin.buffer


def read_stdin_text() -> str:
    """All of stdin as text, up to MAX_STDIN_TEXT bytes (a prompt, a prompts list, ids);
    binary data stops it at the first block that holds a NUL byte."""
    stream, blocks, size = stdin_stream(), [], 0
    while block := stream.read(1 << 20):
        if (nul := block.find(b"\0")) >= 0:
            raise UsageError(f"stdin holds binary data (a NUL byte at offset {size + nul}), not text")
        size += len(block)
        if size > MAX_STDIN_TEXT:
            raise UsageError(f"stdin holds more than {MAX_STDIN_TEXT >> 20} MiB, more than a prompt or a list of "
                             "prompts or ids may: save it to a file, or use `gptcli tokenizer encode` to stream it")
        blocks.append(block)
    try:
        return b"".join(blocks).decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"stdin is not UTF-8 text (invalid byte at {e.start})") from None


def prompt_text(prompt: str | None, what: str = "--prompt") -> str:
    """--prompt's text: stdin for - (or when none is given and stdin is piped)."""
    if prompt == "-" or (prompt is None and stdin_is_piped()):
        return read_stdin_text()
    return check_text(prompt or "", what)


def stdin_is_piped() -> bool:
    return sys.stdin is not None and not sys.stdin.closed and not sys.stdin.isatty()


def read_prompts(source: str) -> list[str]:
    """One prompt per line, or JSON lines with a "prompt" field (when every non-blank
    line starts with '{'). `source` is a file or - for stdin."""
    if source == "-":
        text = read_stdin_text()
    else:
        path = Path(source)
        if not path.is_file():
            raise UsageError(f"--prompts {source}: no such file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"--prompts {source} is not UTF-8 text") from None
    lines = _lines(text)
    if lines and all(line.lstrip().startswith("{") for line in lines if line.strip()):
        prompts = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:
                raise UsageError(f"--prompts {source} line {n}: not valid JSON ({e.msg})") from None
            except RecursionError:
                raise UsageError(f"--prompts {source} line {n}: nested too deeply to read") from None
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise UsageError(f"--prompts {source} line {n}: needs a string \"prompt\" field")
            prompts.append(record["prompt"])
        return prompts
    return lines


def _lines(text: str) -> list[str]:
    """Lines split at \n alone (a CRLF's \r goes too): U+2028, form feeds and other
    characters str.splitlines() breaks at stay inside a prompt, so outputs line up with
    input lines."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def tokens(docs: list[Document], tok: BPETokenizer, console: Console, what: str) -> TokenFile:
    """The documents' tokens from the cache, or tokenized into it under a progress bar."""
    total = sum(d.size for d in docs)
    tf = lookup_cache(docs, tok, warn=console.warn)
    if tf is not None:
        how = "cached"
    else:
        t0 = time.perf_counter()
        with console.progress(f"tokenizing {what}", total, "bytes") as bar:
            tf, _ = tokenize_to_cache(docs, tok, progress=lambda done, _: bar.update(done))
            bar.update(total)
        how = f"tokenized in {time.perf_counter() - t0:.1f}s"
    console.info(f"data: {what} {total:,} bytes -> {tf.n_tokens:,} tokens ({how})")
    return tf


def splits(docs: list[Document], val_docs: list[Document], tok: BPETokenizer, val_fraction: float,
           console: Console) -> tuple[Split, Split]:
    """The training and validation tokens: --val's text, else the corpus's last val_fraction."""
    tf = tokens(docs, tok, console, "corpus")
    if val_docs:
        vf = tokens(val_docs, tok, console, "validation")
        return Split(tf.array(), tf.n_bytes), Split(vf.array(), vf.n_bytes)
    return split_train_val(tf.array(), tok.token_byte_lengths(), val_fraction)
