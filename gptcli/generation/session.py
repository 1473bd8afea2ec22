"""A running text continued turn after turn: what `generate --interactive` drives, and
`Generator.session()` hands to Python callers.

One row, whose KV cache (a recurrent model's state) is kept between turns, so a turn
computes only its new tokens: the text added is encoded on its own and run on top of the
cache, then continued. When the context is full, its most recent search.WINDOW_KEEP share
is kept and prefilled anew: GPT-2's learned positions are written into the cached keys,
so a cache cannot simply shift. Knows nothing of terminals (commands/interactive.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

from gptcli.config import SampleConfig
from gptcli.errors import UsageError
from gptcli.generation.search import choose, window_size
from gptcli.tokenizer import check_text

if TYPE_CHECKING:
    from gptcli.generation.engine import Generator


class Session:
    """`text` is everything added and generated since the start (or `reset`), which is
    what /save writes; `context` holds the token ids the model sees now, its most recent
    part. After `reply`, `ended_by` says why it stopped: "length" (max_new_tokens),
    "eos" (<|endoftext|>), "reverse_prompt" (the text ends with one), "interrupted" (its
    `interrupted` callback said so), or None while it runs or when the caller stopped
    listening."""

    def __init__(self, engine: Generator, sample: SampleConfig, reverse_prompts: tuple[str, ...] = ()):
        if sample.strategy == "beam" or sample.num_samples != 1:
            raise UsageError("a session continues one text: use greedy or sampling with one sample, not beams")
        if sample.stop:
            raise UsageError("a session hands control back at a reverse prompt, which it keeps in the text; "
                             "stop strings (which cut it) do not apply: use a reverse prompt")
        for r in reverse_prompts:
            if not check_text(r, "a reverse prompt"):
                raise UsageError("a reverse prompt must not be empty")
        self.engine, self.sample, self.reverse_prompts = engine, sample, tuple(reverse_prompts)
        self.tokenizer = engine.tokenizer
        self.window = window_size(engine.model)
        self.generator = torch.Generator(device=engine.device).manual_seed(sample.seed)
        engine.ready(sample, 1)
        self.reset()

    def reset(self) -> None:
        """Start over from an empty text (a new document)."""
        self.text = ""
        self.context: list[int] = []
        self.ended_by: str | None = None
        self._decoder = None
        self._logits: torch.Tensor | None = None  # the next token's logits; None: the cache must be rebuilt
        self._utf8 = self.tokenizer.stream_decoder()

    def add(self, text: str) -> None:
        """Append text to the running text; the model reads it now, so the next reply
        starts at once."""
        # only the tail the context can hold is encoded: a pasted book costs no more memory
        ids = self.tokenizer.encode_tail(check_text(text, "the text"), self.engine.config.block_size)
        self.text += text
        self._advance(ids)

    def reply(self, interrupted: Callable[[], bool] = lambda: False) -> Iterator[str]:
        """Continue the text: its new pieces as they come (never a partial character).
        `interrupted` is asked before each token (a Ctrl-C seen by the caller's signal
        handler); the caller may also stop listening at any point. Either way what was
        generated stays in the text and the context."""
        self.ended_by = None
        eot, limit = self.tokenizer.eot_id, self.sample.max_new_tokens
        seen = None
        if self.sample.repetition_penalty != 1.0:
            seen = torch.zeros(1, self.engine.config.vocab_size, dtype=torch.bool, device=self.engine.device)
            seen[0, self.context] = True
        if not self.context:  # nothing added: a new document, as an empty prompt is
            self._advance([eot])
        turn = ""
        for _ in range(limit):
            if interrupted():
                self.ended_by = "interrupted"
                break
            if self._logits is None:
                self._advance([])
            with torch.inference_mode():
                token = int(choose(self._logits, self.sample, seen, [self.generator])[0][0])
            if token == eot:
                self._advance([token])
                self.ended_by = "eos"
                break
            piece = self._utf8.step(token)
            self.text += piece
            turn += piece
            self._advance([token])
            if seen is not None:
                seen[0, token] = True
            if piece:
                yield piece
            if any(r in turn[-(len(r) + len(piece)):] for r in self.reverse_prompts):
                self.ended_by = "reverse_prompt"
                break
        else:
            self.ended_by = "length"
        if rest := self._utf8.flush():  # a character cut off by the end of the turn
            self.text += rest
            yield rest

    def _advance(self, ids: list[int]) -> None:
        """Put `ids` after the context and compute the next token's logits: on top of
        the cache when they fit, else (or when a forward was interrupted, which leaves
        the cache unknown) from a fresh prefill of the context's most recent part."""
        if not ids and self._logits is not None:
            return
        rebuild = self._logits is None or len(ids) > self._decoder.room
        self._logits = None
        self.context += ids
        with torch.inference_mode():
            if rebuild:
                if len(self.context) > self.engine.config.block_size:
                    self.context = self.context[-self.window:]
                self._decoder = self.engine.decoder()
                logits = self._decoder.prefill([self.context])
            else:
                logits = self._decoder.extend(torch.tensor([ids], device=self.engine.device))
        self._logits = logits
