"""The decoders that add one token per row and step: GPT's over a KV cache, computing
with weight matrices prepared once (kernels.Prepared), and the recurrent models' over
their state. Both prefill prompts, step, and reorder rows for beam search. Know nothing
of sampling, text or files.
"""

from __future__ import annotations

import torch

from gptcli.generation.kernels import Prepared
from gptcli.generation.kv_cache import KVCache
from gptcli.model import GPT
from gptcli.recurrent import RecurrentLM


class FastDecoder:
    """A GPT's decoder: prefill the prompts into a KVCache it owns, then one new token per
    row and step, both through the model's one forward (GPT.hidden) handed prepared
    Matmuls in place of its Linear modules: on a CPU, module calls and attribute reads
    cost as much as the small matrix products of a small model (docs/benchmarks.md).
    A float32 prefill computes with the model's own modules (a prompt is many rows);
    float16 and int8 with their prepared products, which take any number of rows (for
    them the model's float32 forward, with its first-call costs in a new process, took
    about 7% of a 128-token greedy generation). The tests pin every path to
    `model.forward`: within 1e-5 in float32, and in float16 on weights it holds exactly.

    Built from a model in eval mode; it refuses to run once the model is put in training
    mode or a parameter object is replaced (load_state_dict(assign=True)), since it would
    then compute with weights the model no longer has. `prepared` is the engine's, shared
    by its decoders; without one the decoder prepares its own."""

    def __init__(self, model: GPT, weights: str = "float32", prepared: Prepared | None = None):
        if model.training:
            raise ValueError("the fast decoder needs the model in eval mode: call model.eval()")
        if prepared is not None and (prepared.model is not model or prepared.weights != weights):
            raise ValueError("prepared weights belong to another model or weight kind")
        self.prepared = prepared or Prepared(model, weights)
        self.model, self.cfg, self.weights = model, model.config, weights
        self._owners = [(m._parameters, name, p) for m in model.modules() for name, p in m._parameters.items()]
        self.device = model.wte.weight.device
        self._step_layers: tuple[list, object] | None = None  # the prepared layers for the batch being stepped
        self.cache: KVCache | None = None
        self.next_pos: torch.Tensor | None = None  # (B,) each row's next position
        # the row count several-row steps take their packed matrices for (None: the batch's
        # own); continuous batching, whose row count changes every few steps, keeps one
        self.pack_rows: int | None = None
        self.context_limit = self.cfg.block_size  # positions a row may hold

    def _check(self) -> None:
        if self.model.training:
            raise ValueError("the model was put in training mode: the fast decoder runs in eval mode only")
        if not all(params.get(name) is p for params, name, p in self._owners):
            raise ValueError("the model's parameters were replaced after the fast decoder was built: build a new one")

    @property
    def full(self) -> bool:
        """Whether the context is full, so the next step needs a new prefill."""
        return self.cache is not None and self.cache.pos >= self.cfg.block_size

    def prefill(self, rows: list[list[int]]) -> torch.Tensor:
        """Run the prompts (each 1..block_size tokens) once, left-padded, into a fresh
        cache; returns the last position's logits (B, V)."""
        self._check()
        B, T = len(rows), max(len(r) for r in rows)
        if T > self.cfg.block_size:  # the same error whatever prefills them
            raise ValueError(f"sequence of {T} tokens exceeds block_size {self.cfg.block_size}")
        idx = torch.zeros((B, T), dtype=torch.long, device=self.device)  # padding: any id, it is masked
        valid = torch.zeros(B, T, dtype=torch.bool, device=self.device)
        for i, r in enumerate(rows):
            idx[i, T - len(r):] = torch.tensor(r, dtype=torch.long, device=self.device)
            valid[i, T - len(r):] = True
        self.cache = KVCache(self.cfg, B, device=self.device, dtype=self.model.wte.weight.dtype)
        if not bool(valid.all()):
            self.cache.mark_padding(valid)
        positions = (valid.long().cumsum(dim=1) - 1).clamp(min=0)  # each row counts from its first token
        self._step_layers = None  # fetched by the first step, for the batch it sees
        self.next_pos = valid.sum(dim=1)
        layers, head = (None, self.model.lm_head) if self.weights == "float32" else self.prepared.layers(B * T)
        x = self.model.hidden(idx, layers, self.cache, positions, last_only=True)  # (B, 1, n_embd)
        return head(x.view(B, -1))

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B,), one per row after the prefilled ones -> logits (B, V)."""
        self._check()
        if self._step_layers is None:
            rows = tokens.numel()
            self._step_layers = self.prepared.layers(rows if rows == 1 or self.pack_rows is None else self.pack_rows)
        layers, head = self._step_layers
        x = self.model.hidden(tokens[:, None], layers, self.cache, self.next_pos[:, None], last_only=True)
        self.next_pos = self.next_pos + 1
        return head(x.view(tokens.numel(), -1))

    @property
    def room(self) -> int:
        """Tokens the context can still take before it must slide."""
        return self.cfg.block_size - (self.cache.pos if self.cache is not None else 0)

    def extend(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T), after the cached ones (at most `room`) -> the last one's logits
        (B, V): a step of several tokens, such as the next line of an interactive session."""
        B, T = tokens.shape
        if T == 1:
            return self.step(tokens[:, 0])
        self._check()
        layers, head = (None, self.model.lm_head) if self.weights == "float32" else self.prepared.layers(B * T)
        positions = self.next_pos[:, None] + torch.arange(T, device=self.device)
        x = self.model.hidden(tokens, layers, self.cache, positions, last_only=True)
        self.next_pos = self.next_pos + T
        return head(x.view(B, -1))

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep cache rows `rows` (beam search: each new beam continues an old one)."""
        if rows.numel() != self.next_pos.numel():  # a new batch size: its own Matmuls
            self._step_layers = None
        self.cache.reorder(rows)
        self.next_pos = self.next_pos.index_select(0, rows)

    def keep(self, rows: list[int]) -> None:
        """Keep only batch rows `rows` (continuous batching: the others finished)."""
        self.cache.keep(rows)
        self.next_pos = self.next_pos[rows]
        self._step_layers = None  # a new row count: its own Matmuls

    def join(self, other: FastDecoder) -> None:
        """Take on other's rows (prefilled on their own) below this batch's: each goes
        on from where its own prefill left it, at its own positions."""
        self.cache.join(other.cache)
        self.next_pos = torch.cat([self.next_pos, other.next_pos])
        self._step_layers = None

    def warm_up(self, rows: int) -> None:
        """Prepare the matrices for `rows` rows at a time now (packing, float16 or int8
        copies: 5 to 30 ms for the tiny model), and run a 2-token prompt and one step
        through them. A process pays for the first call of each kernel: oneDNN builds a
        shape's kernel (0.4 to 0.6 ms each), OpenMP starts its threads, attention and
        layer norm set up (0.1 to 0.4 ms each): about 1 to 3 ms for the tiny model, which
        this makes part of loading the model, where the start-up figures count it,
        instead of part of the first generation's speed."""
        self.prepared.layers(rows)
        with torch.inference_mode():
            self.prefill([[0] * min(2, self.cfg.block_size)] * rows)
            if not self.full:
                self.step(torch.zeros(rows, dtype=torch.long, device=self.device))


class RecurrentDecoder:
    """A recurrent model's generation engine: the state carries the whole history, so
    there is no context to fill and no window to slide (generation past block_size just
    goes on). Same interface as FastDecoder."""

    full = False  # never: a recurrent model has no context limit
    room = 1 << 62
    context_limit = None

    def __init__(self, model: RecurrentLM, prepared: None = None):
        if model.training:
            raise ValueError("the decoder needs the model in eval mode: call model.eval()")
        self.model, self.state = model, None
        self.device = model.wte.weight.device

    def prefill(self, rows: list[list[int]]) -> torch.Tensor:
        """Run the prompts (right-padded, each to its own length) from a zero state;
        returns each row's last logits (B, V)."""
        lengths = torch.tensor([len(r) for r in rows], device=self.device)
        idx = torch.zeros((len(rows), int(lengths.max())), dtype=torch.long, device=self.device)
        for i, r in enumerate(rows):
            idx[i, :len(r)] = torch.tensor(r, dtype=torch.long, device=self.device)
        x, self.state = self.model.run(idx, lengths=lengths)
        return self.model.lm_head(x[torch.arange(len(rows), device=self.device), lengths - 1])

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        x, self.state = self.model.run(tokens[:, None], self.state)
        return self.model.lm_head(x[:, 0])

    def extend(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) after the ones seen -> the last one's logits (B, V)."""
        x, self.state = self.model.run(tokens, self.state)
        return self.model.lm_head(x[:, -1])

    def reorder(self, rows: torch.Tensor) -> None:
        self.state = tuple(s.index_select(1, rows) for s in self.state) if isinstance(self.state, tuple) \
            else self.state.index_select(1, rows)

    def keep(self, rows: list[int]) -> None:
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        self.reorder(index)

    def join(self, other: RecurrentDecoder) -> None:
        """Take on other's rows: a state is (layers, B, hidden), so rows are stacked."""
        if isinstance(self.state, tuple):
            self.state = tuple(torch.cat([a, b], dim=1) for a, b in zip(self.state, other.state))
        else:
            self.state = torch.cat([self.state, other.state], dim=1)
