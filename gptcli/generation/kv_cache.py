"""The key/value cache generation hands to the model: an object the caller owns.

Preallocated keys and values for every layer, which positions hold real tokens (left
padding is masked), and the attention mask new queries need. The model writes into it
layer by layer during `forward`; the decoding loops create it, reorder its rows for beam
search, and throw it away. Knows nothing of sampling or text.
"""

from __future__ import annotations

import torch

from gptcli.config import ModelConfig


class KVCache:
    """Preallocated keys and values for every layer, plus which positions hold real tokens.

    One buffer `kv` of shape (n_layer, B, 2, n_head, max_len, head_dim), keys before
    values, in the order the fused q/k/v product leaves them, so that a decoding step
    stores a layer's keys and values in one copy. `pos` counts the
    positions already stored; the model writes layer by layer through `views`, then calls
    `advance` once per forward. Left-padded batches mark their padding in `valid` so attention skips it.

    Beam search's `reorder` relabels rows instead of moving them: after it, row i of the
    batch lives in buffer row `slots[i]` (None: row i in row i), and the forwards that
    follow (GPT.hidden) run in buffer order, permuting their input and output.
    Only a row that two beams continue is copied."""

    def __init__(self, cfg: ModelConfig, batch_size: int, *, max_len: int | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.max_len = max_len or cfg.block_size
        # empty, not zeros: a position is written (prompt, padding or step) before anything
        # reads it, and zeroing the tiny model's 4 MB took 85 us a generation
        self.kv = torch.empty((cfg.n_layer, batch_size, 2, cfg.n_head, self.max_len, cfg.head_dim),
                              device=device, dtype=dtype)
        self.valid = torch.ones(batch_size, self.max_len, dtype=torch.bool, device=device)  # (B, max_len)
        self.padded = False  # whether any stored position is padding
        self.pos = 0
        self.slots: torch.Tensor | None = None  # (B,) the buffer row of each batch row; None: the same row
        self.rows_in_slot: torch.Tensor | None = None  # (B,) the batch row in each buffer row (the inverse)

    def mark_padding(self, valid: torch.Tensor) -> None:
        """valid (B, T), in the buffer's row order: False where the next T positions are
        left padding (a fresh cache's prefill marks it; after a reorder, rows have moved)."""
        if self.slots is not None:
            raise ValueError("padding is marked before the first reorder (at prefill)")
        self.valid[:, self.pos:self.pos + valid.size(1)] = valid
        self.padded = self.padded or not bool(valid.all())

    def views(self, T: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """For T new positions, per layer: the slot to copy their keys and values into,
        (B, 2, n_head, T, head_dim) as the fused q/k/v product leaves them, and the keys
        and values up to them, (B, n_head, pos + T, head_dim) each. The one way into the
        cache; views made once a forward for every layer (a layer's own slicing costs as
        much as its copy)."""
        end = self.pos + T
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} were asked for")
        keys, values = self.kv.narrow(4, 0, end).unbind(2)  # (n_layer, B, n_head, end, head_dim)
        return list(zip(self.kv.narrow(4, self.pos, T).unbind(0), keys.unbind(0), values.unbind(0)))

    def advance(self, n: int) -> None:
        self.pos += n

    def reorder(self, rows: torch.Tensor) -> None:
        """Batch row i continues batch row rows[i] (beam search: each new beam continues an
        old one). A new batch size gathers into a new buffer; the same size relabels the
        buffer rows (`slots`): the first beam to continue a row takes that row as it is,
        and each further one gets a copy of its filled positions in a row no beam
        continues. Beam steps mostly keep good beams and drop poor ones, so this copies
        about one row a step where moving every row to its new place took several
        (docs/benchmarks.md, "Generation kernels")."""
        slots = list(range(self.kv.size(1))) if self.slots is None else self.slots.tolist()
        wanted = [slots[j] for j in rows.tolist()]  # the buffer row holding each new row's history
        if len(wanted) != len(slots):  # the batch changes size: a new buffer, in batch order
            index = torch.tensor(wanted, device=self.kv.device)
            kv = self.kv.new_empty((self.kv.size(0), len(wanted), *self.kv.shape[2:]))
            # only the filled positions: gathering the whole buffer (512 positions for the
            # tiny model) took 3.7 ms when beam search went from its prompt's row to 4
            torch.index_select(self.kv.narrow(4, 0, self.pos), 1, index, out=kv.narrow(4, 0, self.pos))
            self.kv = kv
            self.valid = self.valid.index_select(0, index)
            self.slots = self.rows_in_slot = None
            return
        taken, second_readers = set(), []
        for i, src in enumerate(wanted):
            if src in taken:
                second_readers.append(i)
            taken.add(src)
        free = [r for r in range(len(slots)) if r not in taken]  # rows no beam continues
        live = self.kv.narrow(4, 0, self.pos)  # (n_layer, B, 2, n_head, pos, head_dim)
        for i, dst in zip(second_readers, free):
            src = wanted[i]
            live.select(1, dst).copy_(live.select(1, src))
            if self.padded:
                self.valid[dst] = self.valid[src]
            wanted[i] = dst
        if wanted == list(range(len(wanted))):
            self.slots = self.rows_in_slot = None
        else:
            inverse = [0] * len(wanted)
            for i, slot in enumerate(wanted):
                inverse[slot] = i
            self.slots = torch.tensor(wanted, device=self.kv.device)
            self.rows_in_slot = torch.tensor(inverse, device=self.kv.device)

    # -- continuous batching (generation/batcher.py): rows leave and join between steps --

    def keep(self, rows: list[int]) -> None:
        """Keep only batch rows `rows` (the others finished), then drop the leading
        positions no kept row uses, so the buffer holds as many positions as its longest
        row needs. Each row's positions stay its own (the model's positions are per row,
        and the mask marks what each row may see), so moving columns changes nothing."""
        if self.slots is not None:
            raise ValueError("rows leave a batch that beam search has not reordered")
        index = torch.tensor(rows, dtype=torch.long, device=self.kv.device)
        self.kv = self.kv.index_select(1, index)  # a new buffer: the rows left go with the old one
        self.valid = self.valid.index_select(0, index)
        used = self.valid[:, :self.pos].any(dim=0).nonzero()
        first = int(used[0]) if used.numel() else self.pos
        if first:
            n = self.pos - first
            self.kv.narrow(4, 0, n).copy_(self.kv.narrow(4, first, n).clone())
            self.valid[:, :n] = self.valid[:, first:self.pos].clone()
            self.valid[:, n:] = True
            self.pos = n
        self.padded = not bool(self.valid[:, :self.pos].all())

    def join(self, other: KVCache) -> None:
        """Append other's rows below this cache's, both right-aligned at the later of the
        two ends: the shorter side's first positions become masked padding."""
        if self.slots is not None or other.slots is not None:
            raise ValueError("a cache joins a batch before any beam reordering")
        end = max(self.pos, other.pos)
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} were asked for")
        kv = self.kv.new_empty((self.kv.size(0), self.kv.size(1) + other.kv.size(1), *self.kv.shape[2:]))
        valid = torch.ones(kv.size(1), self.max_len, dtype=torch.bool, device=self.kv.device)
        for lo, part in ((0, self), (self.kv.size(1), other)):
            rows, shift = part.kv.size(1), end - part.pos
            kv.narrow(1, lo, rows).narrow(4, shift, part.pos).copy_(part.kv.narrow(4, 0, part.pos))
            # padding is masked, but a masked weight (0) times a value left in fresh memory
            # (NaN, inf) is still NaN: padding holds zeros
            kv.narrow(1, lo, rows).narrow(4, 0, shift).zero_()
            valid[lo:lo + rows, shift:end] = part.valid[:, :part.pos]
            valid[lo:lo + rows, :shift] = False
        self.kv, self.valid, self.pos = kv, valid, end
        self.padded = not bool(valid[:, :end].all())

    def attention_mask(self, T: int) -> tuple[torch.Tensor | None, bool]:
        """(mask, is_causal) for T new queries after the stored positions."""
        past, device = self.pos, self.valid.device
        if T == 1 and self.padded:  # one real query (a step): it may see every real key
            return self.valid[:, None, None, :past + 1], False
        if not self.padded:
            if T == 1:
                return None, False  # one new query may see every stored position
            if past == 0:
                return None, True
            # query i sits at absolute position past + i and sees keys 0..past + i
            return torch.ones(T, past + T, dtype=torch.bool, device=device).tril(diagonal=past), False
        allowed = torch.ones(T, past + T, dtype=torch.bool, device=device).tril(diagonal=past)
        mask = allowed[None] & self.valid[:, None, :past + T]  # (B, T, S): no attending to padding
        # A padding query would see no key at all (NaN); let every query see itself.
        mask |= _diagonal(T, past, device)
        return mask[:, None], False  # (B, 1, T, S)


def _diagonal(T: int, past: int, device) -> torch.Tensor:
    """(1, T, past + T) True where query i meets its own key past + i."""
    d = torch.zeros(T, past + T, dtype=torch.bool, device=device)
    d[torch.arange(T), past + torch.arange(T)] = True
    return d[None]


