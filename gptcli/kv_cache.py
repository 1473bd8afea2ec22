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

    Shape (n_layer, B, n_head, max_len, head_dim). `pos` counts the positions already
    stored; the model writes layer by layer, then calls `advance` once per forward.
    Left-padded batches mark their padding in `valid` so attention skips it."""

    def __init__(self, cfg: ModelConfig, batch_size: int, *, max_len: int | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.max_len = max_len or cfg.block_size
        shape = (cfg.n_layer, batch_size, cfg.n_head, self.max_len, cfg.head_dim)
        self._use(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
        self._spare: tuple[torch.Tensor, torch.Tensor] | None = None  # reorder's second buffer
        self.valid = torch.ones(batch_size, self.max_len, dtype=torch.bool, device=device)  # (B, max_len)
        self.padded = False  # whether any stored position is padding
        self.pos = 0

    def mark_padding(self, valid: torch.Tensor) -> None:
        """valid (B, T): False where the next T positions are left padding."""
        self.valid[:, self.pos:self.pos + valid.size(1)] = valid
        self.padded = self.padded or not bool(valid.all())

    def _use(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Make k, v the buffers, with their per-layer views for `append`."""
        self.k, self.v = k, v
        self._layers = list(zip(k.unbind(0), v.unbind(0)))

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's (B, n_head, T, head_dim) keys/values; return all so far."""
        end = self.pos + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} were asked for")
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`store` for one new position: k, v (B, n_head, head_dim). The fast decoder's
        path: a copy and a narrow per tensor instead of Python slicing."""
        if self.pos >= self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {self.pos + 1} were asked for")
        keys, values = self._layers[layer]
        keys.select(2, self.pos).copy_(k)
        values.select(2, self.pos).copy_(v)
        return keys.narrow(2, 0, self.pos + 1), values.narrow(2, 0, self.pos + 1)

    def step_mask(self) -> torch.Tensor | None:
        """The attention mask for one new query: (B, 1, 1, S) where padding was stored, else None."""
        return self.valid[:, None, None, :self.pos + 1] if self.padded else None

    def advance(self, n: int) -> None:
        self.pos += n

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep cache rows `rows` (beam search: each new beam continues an old one)."""
        if rows.numel() != self.k.size(1):  # the batch changes size: new buffers
            self._use(self.k.index_select(1, rows), self.v.index_select(1, rows))
            self._spare = None
        else:
            order = rows.tolist()
            if order == list(range(len(order))):  # every row kept its own history
                return
            # Copy each kept row's filled positions into a spare buffer, then swap: one pass
            # over the live part of the cache, faster than a gather and a copy back in place
            # (docs/benchmarks.md). The spare doubles the cache's memory while beams run.
            if self._spare is None:
                self._spare = torch.empty_like(self.k), torch.empty_like(self.v)
            for old, new in zip((self.k, self.v), self._spare):
                src, dst = old.narrow(3, 0, self.pos), new.narrow(3, 0, self.pos)
                for i, j in enumerate(order):
                    dst.select(1, i).copy_(src.select(1, j))
            spare = self._spare
            self._spare = self.k, self.v
            self._use(*spare)
        self.valid = self.valid.index_select(0, rows)

    def attention_mask(self, T: int) -> tuple[torch.Tensor | None, bool]:
        """(mask, is_causal) for T new queries after the stored positions."""
        past, device = self.pos, self.valid.device
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


