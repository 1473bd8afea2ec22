"""Attention maps: what each head of each layer attends to, for one sequence.

`attention_maps` runs the model's one forward (model.run_blocks) with an attention that
computes softmax(QK^T / sqrt(d) + mask) explicitly and keeps it, where training and
generation call scaled_dot_product_attention, which never materialises these weights.
Knows nothing of text or files.
"""

from __future__ import annotations

import math

import torch

from gptcli.model import GPT


class KeptAttention:
    """An `attend` for model.run_blocks that keeps each layer's weights (B, n_head, T, S)."""

    def __init__(self):
        self.weights: list[torch.Tensor] = []

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                 is_causal: bool, dropout_p: float = 0.0) -> torch.Tensor:
        T, S = q.size(-2), k.size(-2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, nh, T, S)
        if is_causal:  # query i sits at S - T + i and sees the keys up to it
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = scores.softmax(dim=-1)
        self.weights.append(probs)
        return probs @ v


def attention_maps(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """(n_layer, n_head, T, T) for one sequence idx (T,) of at most block_size tokens."""
    kept = KeptAttention()
    with torch.inference_mode():
        model.eval().hidden(idx[None], attend=kept)
    return torch.stack([w[0] for w in kept.weights])
