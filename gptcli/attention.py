"""Attention maps: what each head of each layer attends to, for one sequence.

`attention_maps` runs the model's normal forward pass once, with hooks that capture each
attention layer's input, and computes from it softmax(QK^T / sqrt(d) + causal mask)
explicitly, head by head. The forward pass itself is untouched: training and generation
keep scaled_dot_product_attention, which never materialises these weights. Knows
nothing of text or files.
"""

from __future__ import annotations

import math

import torch

from gptcli.model import GPT, CausalSelfAttention


def probabilities(attn: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """The attention weights of one layer for its input x (B, T, n_embd): (B, n_head, T, T),
    each row a distribution over the keys at or before the query."""
    B, T, C = x.shape
    q, k, _ = attn.c_attn(x).split(attn.n_embd, dim=2)
    q, k = (t.view(B, T, attn.n_head, C // attn.n_head).transpose(1, 2) for t in (q, k))  # (B, nh, T, hd)
    scores = q @ k.transpose(-2, -1) / math.sqrt(C // attn.n_head)  # (B, nh, T, T)
    future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(diagonal=1)
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1)


def attention_maps(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """(n_layer, n_head, T, T) for one sequence idx (T,) of at most block_size tokens."""
    inputs: list[torch.Tensor] = []
    hooks = [block.attn.register_forward_hook(lambda module, args, out: inputs.append(args[0]))
             for block in model.h]
    try:
        with torch.inference_mode():
            model.eval()(idx[None])
            return torch.stack([probabilities(block.attn, x)[0] for block, x in zip(model.h, inputs)])
    finally:
        for hook in hooks:
            hook.remove()
