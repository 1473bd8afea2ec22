"""What commands read besides run folders: text on stdin, prompt files, and corpora
turned into tokens through the cache with a progress bar.

Shared by train, eval, generate, tokenizer (and compare): each mechanism once.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from gptcli.console import Console
from gptcli.data import Document, TokenFile, lookup_cache, tokenize_to_cache
from gptcli.errors import UsageError
from gptcli.tokenizer import BPETokenizer


def read_stdin_text() -> str:
    if sys.stdin is None or sys.stdin.closed:
        raise UsageError("stdin is closed: pipe text in")
    if sys.stdin.isatty():
        raise UsageError("stdin is a terminal: pipe text in, e.g. echo hello | gptcli tokenizer encode")
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"stdin is not UTF-8 text (invalid byte at {e.start})") from None


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
    lines = text.splitlines()
    if lines and all(line.lstrip().startswith("{") for line in lines if line.strip()):
        prompts = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:
                raise UsageError(f"--prompts {source} line {n}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise UsageError(f"--prompts {source} line {n}: needs a string \"prompt\" field")
            prompts.append(record["prompt"])
        return prompts
    return lines


def tokens(docs: list[Document], tok: BPETokenizer, console: Console, what: str) -> TokenFile:
    """The documents' tokens from the cache, or tokenized into it under a progress bar."""
    total = sum(d.n_bytes for d in docs)
    tf = lookup_cache(docs, tok)
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
