"""Continuous batching over one engine: the rows of many requests decoded together, one
token per row and step, on a thread of its own. A row joins at the next step boundary
(its prompt prefilled on its own, then its cache joined below the batch's) and leaves
when it finishes or its caller cancels it. Each row keeps its own sampling settings and
random generator and sees only its own context, so its output is what the engine gives
it alone, up to the float rounding of products over more rows.

What `serve` runs on; knows nothing of HTTP or JSON (server/ turns rows into responses).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from gptcli.config import SampleConfig
from gptcli.errors import first_line
from gptcli.generation.sampling import process_logits
from gptcli.generation.search import pick, window_size
from gptcli.generation.text import Output

if TYPE_CHECKING:
    from gptcli.generation.engine import Generator


@dataclass
class Token:
    """One step of one row, as its listener hears it."""

    id: int
    logprob: float  # under the distribution it was drawn from (after temperature, top-p, ...)
    text: str  # the text now safe to show (never half a character, never past a stop string)
    top: list[tuple[int, float]] = field(default_factory=list)  # the most likely ids, when asked


@dataclass
class Done:
    """A row's end: its Output settled (finish_reason eos, stop or length), or an error
    (`error` says what; `output` holds what was made before it)."""

    output: Output
    text: str = ""  # the text held back until the end (a stop string's possible start, a partial character)
    error: str | None = None
    kind: str = ""  # with an error: "shutdown" (the server is stopping) or "failure"


class QueueFull(Exception):
    pass


class Row:
    """One output to generate: `prompt` ids (1..block_size of them, or any number for a
    recurrent model), greedy or sampled by `sample` (one output: num_samples is not
    read), drawing from its own `generator`. `listen` is called on the batcher's thread
    with each Token and then one Done; it must not block."""

    def __init__(self, prompt: list[int], sample: SampleConfig, output: Output, listen: Callable,
                 generator: torch.Generator | None = None, top_logprobs: int = 0):
        if sample.strategy == "beam":
            raise ValueError("beam search runs on its own, not in the batch")
        self.prompt, self.sample, self.output, self.listen = list(prompt), sample, output, listen
        self.generator, self.top_logprobs = generator, top_logprobs
        self.context = list(prompt)  # what a rebuilt window is taken from
        self.produced = 0
        self.cancelled = self.ended = False
        self.seen: torch.Tensor | None = None  # (V,) for a repetition penalty
        # rows sampling alike are chosen together: every setting but the seed and the end
        s = sample
        self.group = (s.strategy, s.temperature, s.top_k, s.top_p, s.min_p, s.repetition_penalty)

    def cancel(self) -> None:
        """Stop this row at the next step boundary (its caller went away)."""
        self.cancelled = True


class Batcher:
    """Runs rows, at most `parallel` at a time, the rest waiting in order (at most
    `max_queue`: submit raises QueueFull beyond). `stats` counts what /metrics shows."""

    def __init__(self, engine: Generator, parallel: int = 16, max_queue: int = 64):
        self.engine, self.parallel, self.max_queue = engine, parallel, max_queue
        self.eot = engine.tokenizer.eot_id
        self.window = window_size(engine.model)
        self._waiting: collections.deque[Row] = collections.deque()
        self._rows: list[Row] = []  # the batch, in the decoder's row order
        self._decoder = None
        self._logits: torch.Tensor | None = None  # (len(_rows), V): each row's next-token logits
        self._cond = threading.Condition()
        self._stopping: str | None = None
        self.stats = collections.Counter()
        self._thread = threading.Thread(target=self._run, name="gptcli-batcher", daemon=True)

    # -- the caller's side (any thread) --------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, rows: list[Row]) -> None:
        """Queue one request's rows together, or refuse them all."""
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._waiting) + len(rows) > self.max_queue + max(0, self.parallel - len(self._rows)):
                raise QueueFull(f"{len(self._waiting)} outputs are already waiting (--max-queue {self.max_queue})")
            self._waiting.extend(rows)
            self._cond.notify()

    def stop(self, reason: str = "the server is shutting down", wait: float = 10.0) -> None:
        """End every row, running or waiting, with an error Done, and stop the thread."""
        with self._cond:
            self._stopping = reason
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(wait)

    @property
    def running(self) -> int:
        return len(self._rows)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # -- the batcher's thread ------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._waiting or self._rows or self._stopping):
                    self._cond.wait()
                if self._stopping:
                    rows, self._rows = self._rows + list(self._waiting), []
                    self._waiting.clear()
                    for row in rows:
                        self._end(row, Done(row.output, error=self._stopping, kind="shutdown"))
                    return
                new = []
                while self._waiting and len(self._rows) + len(new) < self.parallel:
                    new.append(self._waiting.popleft())
            try:
                with torch.inference_mode():
                    self._iterate(new)
            except Exception as e:  # the batch's state is unknown now: end its rows, start afresh
                message = f"generation failed: {first_line(e)}"
                for row in self._rows + new:
                    self._end(row, Done(row.output, error=message, kind="failure"))
                self._rows, self._decoder, self._logits = [], None, None

    def _iterate(self, new: list[Row]) -> None:
        """Admit the new rows, choose every row's next token, let finished rows go, and
        step the rest."""
        for row in new:
            if row.cancelled:
                self._end(row, None)
            else:
                self._admit(row, row.prompt)
        if not self._rows:
            return
        chosen = self._choose()
        keep, slide = [], []
        limit = self._decoder.context_limit
        held = self._decoder.next_pos.tolist() if limit is not None else None  # positions each row holds
        for i, (row, token) in enumerate(zip(self._rows, chosen)):
            if token is None:
                continue
            row.context.append(token)
            if held is not None and held[i] >= limit:
                slide.append(row)  # its context is full: rebuilt from its most recent part, as generate does
            else:
                keep.append(i)
        tokens = [chosen[i] for i in keep]
        rows = [self._rows[i] for i in keep]
        if len(keep) < len(self._rows):
            if keep:
                self._decoder.keep(keep)
            else:
                self._decoder = None
        self._rows = rows
        self._logits = None
        if rows:
            self._logits = self._decoder.step(torch.tensor(tokens, device=self.engine.device))
            self.stats["steps"] += 1
            self.stats["row_steps"] += len(rows)
        for row in slide:
            self._admit(row, row.context[-self.window:])

    def _admit(self, row: Row, ids: list[int]) -> None:
        """Prefill ids on their own and join the row to the batch."""
        decoder = self.engine.decoder()
        decoder.pack_rows = self.parallel
        logits = decoder.prefill([ids])
        if row.sample.repetition_penalty != 1.0 and row.seen is None:
            row.seen = torch.zeros(logits.size(-1), dtype=torch.bool, device=logits.device)
            row.seen[row.prompt] = True
        if self._decoder is None:
            self._decoder, self._logits = decoder, logits
        else:
            self._decoder.join(decoder)
            self._logits = torch.cat([self._logits, logits])
        self._rows.append(row)
        self.stats["admitted"] += 1

    def _choose(self) -> list[int | None]:
        """Each row's next token (None: the row is over), its listener told."""
        chosen: list[int | None] = [None] * len(self._rows)
        groups: dict[tuple, list[int]] = {}
        for i, row in enumerate(self._rows):
            if row.cancelled:
                self._end(row, None)
            else:
                groups.setdefault(row.group, []).append(i)
        for members in groups.values():
            try:
                self._choose_group(members, chosen)
            except Exception:  # find the rows it was: only they fail
                for i in members:
                    try:
                        self._choose_group([i], chosen)
                    except Exception as e:
                        row = self._rows[i]
                        self._end(row, Done(row.output, error=f"generation failed: {first_line(e)}", kind="failure"))
        return chosen

    def _choose_group(self, members: list[int], chosen: list[int | None]) -> None:
        """The next token of rows that sample alike, chosen together."""
        sample = self._rows[members[0]].sample
        index = torch.tensor(members, device=self._logits.device)
        seen = torch.stack([self._rows[i].seen for i in members]) if sample.repetition_penalty != 1.0 else None
        scores = process_logits(self._logits.index_select(0, index), sample, seen)
        nxt, logp = pick(scores, sample, [self._rows[i].generator for i in members])
        wanted = max(self._rows[i].top_logprobs for i in members)
        top = scores.log_softmax(dim=-1).topk(wanted) if wanted else None
        for j, (i, t, lp) in enumerate(zip(members, nxt.tolist(), logp.tolist())):
            row = self._rows[i]
            best = [] if top is None else [  # a token filtered out (-inf) is no alternative
                (k, v) for k, v in zip(top.indices[j].tolist(), top.values[j].tolist()) if v != float("-inf")]
            if self._take(row, t, lp, best[:row.top_logprobs]):
                chosen[i] = t

    def _take(self, row: Row, token: int, logprob: float, top: list) -> bool:
        """Give the row its token; whether it goes on."""
        out = row.output
        piece = out.take(token, logprob, self.eot)
        row.produced += 1
        if row.seen is not None:
            row.seen[token] = True
        self.stats["generated"] += 1
        row.listen(Token(token, logprob, piece, top))
        if out.finish_reason is None and row.produced < row.sample.max_new_tokens:
            return True
        rest = out.close() if out.finish_reason is None else ""
        self._end(row, Done(out, rest))
        return False

    def _end(self, row: Row, done: Done | None) -> None:
        """Tell a row's listener it is over, once (done None: it was cancelled, nobody
        listens)."""
        if row.ended:
            return
        row.ended = True
        self.stats["cancelled" if done is None else "finished"] += 1
        if done is not None:
            row.listen(done)
