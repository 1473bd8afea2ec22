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

    One buffer `kv` of shape (2, n_layer, B, n_head, max_len, head_dim): keys at [0],
    values at [1], so that a decoding step stores both in one copy and beam search moves
    a row's whole history in one gather. `pos` counts the positions already stored; the
    model writes layer by layer, then calls `advance` once per forward. Left-padded
    batches mark their padding in `valid` so attention skips it."""

    def __init__(self, cfg: ModelConfig, batch_size: int, *, max_len: int | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.max_len = max_len or cfg.block_size
        self._use(torch.zeros((2, cfg.n_layer, batch_size, cfg.n_head, self.max_len, cfg.head_dim),
                              device=device, dtype=dtype))
        self.valid = torch.ones(batch_size, self.max_len, dtype=torch.bool, device=device)  # (B, max_len)
        self.padded = False  # whether any stored position is padding
        self.pos = 0

    def _use(self, kv: torch.Tensor) -> None:
        """Make kv the buffer, with its per-layer views (2, B, n_head, max_len, head_dim) for `append`."""
        self.kv = kv
        self._layers = kv.unbind(1)

    def mark_padding(self, valid: torch.Tensor) -> None:
        """valid (B, T): False where the next T positions are left padding."""
        self.valid[:, self.pos:self.pos + valid.size(1)] = valid
        self.padded = self.padded or not bool(valid.all())

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's (B, n_head, T, head_dim) keys/values; return all so far."""
        end = self.pos + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} were asked for")
        keys, values = self.kv[0, layer], self.kv[1, layer]
        keys[:, :, self.pos:end] = k
        values[:, :, self.pos:end] = v
        return keys[:, :, :end], values[:, :, :end]

    def append(self, layer: int, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`store` for one new position, the fast decoder's path: kv (B, 2, n_head,
        head_dim) holds its keys and values side by side, as the fused q/k/v product
        leaves them; one copy stores both."""
        if self.pos >= self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {self.pos + 1} were asked for")
        layer_kv = self._layers[layer]  # (2, B, n_head, max_len, head_dim)
        layer_kv.select(3, self.pos).copy_(kv.transpose(0, 1))
        upto = layer_kv.narrow(3, 0, self.pos + 1)
        return upto[0], upto[1]

    def step_mask(self) -> torch.Tensor | None:
        """The attention mask for one new query: (B, 1, 1, S) where padding was stored, else None."""
        return self.valid[:, None, None, :self.pos + 1] if self.padded else None

    def advance(self, n: int) -> None:
        self.pos += n

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep cache rows `rows` (beam search: each new beam continues an old one)."""
        if rows.numel() != self.kv.size(2):  # the batch changes size: new buffers
            self._use(self.kv.index_select(2, rows))
        else:
            self._move_rows(rows.tolist())
        if self.padded or rows.numel() != self.valid.size(0):
            self.valid = self.valid.index_select(0, rows)

    def _move_rows(self, order: list[int]) -> None:
        """Row i takes row order[i]'s history, in place, copying only the rows that change
        and only their filled positions: a row is overwritten once no other row still
        needs to read it, and a cycle parks one row in a temporary. Beam steps mostly
        copy a good beam over a dropped one, so this moves far fewer bytes than a
        gather of every row (docs/benchmarks.md, "Generation kernels")."""
        live = self.kv.narrow(4, 0, self.pos)  # (2, n_layer, B, n_head, pos, head_dim)
        pending: dict[int, int | torch.Tensor] = {i: j for i, j in enumerate(order) if i != j}  # dst -> src
        while pending:
            still_read = {j for j in pending.values() if isinstance(j, int)}
            free = [i for i in pending if i not in still_read]
            if not free:  # a cycle: keep one row's history aside, and let its readers read that
                parked = next(iter(pending))
                copy = live.select(2, parked).clone()
                pending = {i: copy if j == parked else j for i, j in pending.items()}
                continue
            for i in free:
                j = pending.pop(i)
                live.select(2, i).copy_(j if isinstance(j, torch.Tensor) else live.select(2, j))

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


