"""llama.cpp, through llama-cpp-python, as tests/test_gguf.py and the benchmarks
(gguf_parity.py, generate.py) drive it: find the build benchmarks/setup_llama_cpp.sh
cached, load a GGUF file, and tokenize, score, prefill and decode greedily with it; and
the texts the parity checks share. Knows nothing of gptcli."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("GPTCLI_LLAMA_CPP_DIR", Path.home() / ".cache" / "gptcli-bench" / "llama_cpp"))
# What tokenization must survive: English, Chinese and Japanese, code with tabs and runs of
# spaces, emoji with ZWJ sequences, accents, typographic quotes, trailing whitespace.
MIXED = ("The quick brown fox can't jump over 3.14 lazy dogs; isn't it?\n"
         "日本語のテキストと中文文本，还有标点。\n"
         "def f(x):\n\tif x  >=  10:\n        return {'a': [1, 2]}  # done\n"
         "emoji 🙂🚀👩‍💻 and naïve café — “quotes”\n\n\n   \t  trailing   \n")
MIXED_TEXTS = [MIXED, *MIXED.splitlines(keepends=True), "  ", "\n\n", "a<|endoftext|>b", "x" * 300]
PROMPTS = ["ROMEO:", "First Citizen:\nBefore we proceed", "The king", "\n", "What light through yonder"]


def import_llama_cpp():
    """The llama_cpp module, or None when it is not built (run benchmarks/setup_llama_cpp.sh)."""
    if CACHE.is_dir() and str(CACHE) not in sys.path:
        sys.path.append(str(CACHE))
    try:
        import llama_cpp
    except Exception:  # ImportError, or a shared library that fails to load
        return None
    return llama_cpp


class Peer:
    """One GGUF model in llama.cpp, with logits kept for every position it evaluates."""

    def __init__(self, path: Path, n_ctx: int, threads: int = 2, logits_all: bool = True):
        """logits_all=False keeps only the last position's logits: what timing wants."""
        llama_cpp = import_llama_cpp()
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                                   logits_all=logits_all, verbose=False, n_threads=threads, n_threads_batch=threads)
        self.eos = self.llm.token_eos()
        self.logits_all = logits_all

    def last_logits(self) -> np.ndarray:
        """The logits after the last token evaluated. Without logits_all, llama-cpp-python
        0.3.36 fills no `scores`, so they are read from the context: its one output row."""
        if self.logits_all:
            return self.llm.scores[self.llm.n_tokens - 1]
        return np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.llm.n_vocab(),))

    def tokenize(self, text: str) -> list[int]:
        # special=True: <|endoftext|> in the text is that token, as tokenizers' encode makes it
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def logits(self, ids: list[int]) -> np.ndarray:
        """(len(ids), vocab) float32 logits of one forward over ids."""
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def prefill(self, ids: list[int]) -> None:
        """One forward over ids from an empty cache: prompt processing, as timing wants it."""
        self.llm.reset()
        self.llm.eval(ids)

    def greedy(self, ids: list[int], n: int, stop_at_eos: bool = True) -> list[int]:
        """Up to n argmax tokens after ids, stopping after <|endoftext|> as gptcli does
        (unless stop_at_eos is False: timing makes exactly n)."""
        self.prefill(ids)
        out: list[int] = []
        while len(out) < n:
            t = int(np.argmax(self.last_logits()))
            out.append(t)
            if (t == self.eos and stop_at_eos) or len(out) == n:
                break  # the last token is not fed back: nothing reads its logits
            self.llm.eval([t])
        return out
