"""The GPT-2 architecture, exactly: token and position embeddings (learned, or the fixed
sinusoidal table), pre-LayerNorm blocks of causal self-attention and a tanh-GELU MLP, a
final LayerNorm, and an lm_head tied to the token embedding.

The blocks' arithmetic is written once, in `run_blocks`: training, evaluation, generation
(whose decoders hand in prepared weight matrices) and attention maps (which hand in an
attention that keeps its weights) all run it. `forward` takes an optional KVCache, an
object the caller owns and hands in. Knows nothing of tokenizers or files.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptcli.config import ModelConfig
from gptcli.fused_loss import fuses, linear_cross_entropy

if TYPE_CHECKING:  # the cache is generation's; the model only writes into it
    from gptcli.generation.kv_cache import KVCache


# What one block computes with: (ln_1, qkv, proj, ln_2, fc + GELU, out). The norms are
# (weight, bias) pairs; the four products are callables x (N, in) -> (N, out) with
# add_to(x, inp) -> x + product(inp): the model's own Linear layers, or generation's
# prepared Matmuls (kernels.py), which add in place.
Layer = tuple
Attend = Callable[..., torch.Tensor]


class Linear(nn.Linear):
    """nn.Linear, optionally followed by GPT-2's tanh GELU, that can also add its output
    to the residual stream: the interface of generation's prepared kernels.Matmul, so
    that `run_blocks` computes with either. `dropout` drops the added output (training)."""

    def __init__(self, n_in: int, n_out: int, bias: bool, gelu: bool = False, dropout: float | None = None):
        super().__init__(n_in, n_out, bias=bias)
        self.gelu = gelu
        self.dropout = nn.Dropout(dropout) if dropout is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        return F.gelu(y, approximate="tanh") if self.gelu else y  # GPT-2's gelu_new

    def add_to(self, x: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        """x + (this layer of inp), not in place: autograd keeps x for the layer norms."""
        return x + self.dropout(self(inp))


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_attn = Linear(cfg.n_embd, 3 * cfg.n_embd, cfg.bias)  # q, k, v at once
        self.c_proj = Linear(cfg.n_embd, cfg.n_embd, cfg.bias, dropout=cfg.dropout)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = Linear(cfg.n_embd, 4 * cfg.n_embd, cfg.bias, gelu=True)
        self.c_proj = Linear(4 * cfg.n_embd, cfg.n_embd, cfg.bias, dropout=cfg.dropout)


class Block(nn.Module):
    """One block's weights; `run_blocks` computes with them."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def layer(self) -> Layer:
        return ((self.ln_1.weight, self.ln_1.bias), self.attn.c_attn, self.attn.c_proj,
                (self.ln_2.weight, self.ln_2.bias), self.mlp.c_fc, self.mlp.c_proj)


def norm(x: torch.Tensor, weights: tuple, eps: float) -> torch.Tensor:
    """The normalisation of every block and of the output: LayerNorm over the last dim."""
    return torch.layer_norm(x, (x.size(-1),), *weights, eps)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, is_causal: bool,
         dropout_p: float = 0.0) -> torch.Tensor:
    """Attention as training and generation run it: fused, the weights never materialised."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p)


def run_blocks(x: torch.Tensor, B: int, T: int, layers: list[Layer], cfg: ModelConfig, views: list | None,
               mask: tuple, attend: Attend = sdpa, dropout_p: float = 0.0) -> torch.Tensor:
    """GPT's blocks, the one place their arithmetic is written: x (B * T, n_embd), the
    residual stream of B rows of T new positions, -> the same after every block.
    `views` (KVCache.views) holds, per layer, the cache slot for these positions'
    keys and values and every key and value up to them; None: no cache."""
    C, nh, eps = cfg.n_embd, cfg.n_head, cfg.layer_norm_eps
    for i, (ln_1, qkv_mm, proj_mm, ln_2, fc_mm, out_mm) in enumerate(layers):
        qkv = qkv_mm(norm(x, ln_1, eps))  # (B * T, 3 * C)
        # (B, 3, nh, T, hd); one new position needs no permute (its view has the same layout)
        qkv = qkv.view(B, 3, nh, 1, C // nh) if T == 1 else qkv.view(B, T, 3, nh, C // nh).permute(0, 2, 3, 1, 4)
        if views is None:
            q, k, v = qkv.unbind(1)
        else:  # keys and values go into the cache in one copy: it is laid out as qkv[:, 1:]
            slot, k, v = views[i]  # k, v: (B, nh, past + T, hd)
            slot.copy_(qkv[:, 1:])
            q = qkv[:, 0]
        y = attend(q, k, v, *mask, dropout_p)  # (B, nh, T, hd)
        y = y.view(B, C) if T == 1 else y.transpose(1, 2).reshape(B * T, C)
        x = proj_mm.add_to(x, y)
        x = out_mm.add_to(x, fc_mm(norm(x, ln_2, eps)))
    return x


def sinusoidal_table(n_pos: int, dim: int) -> torch.Tensor:
    """The fixed table of Vaswani et al.: sin on even channels, cos on odd ones."""
    pos = torch.arange(n_pos, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(n_pos, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table  # (n_pos, dim)


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig, init: bool = True):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        if cfg.pos_encoding == "learned":
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        else:  # computed, never stored in a checkpoint
            self.register_buffer("pos_table", sinusoidal_table(cfg.block_size, cfg.n_embd), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.attn_dropout = cfg.attention_dropout  # on the attention weights, in training
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as GPT-2
        if init:
            self.apply(self._init_weights)
            # GPT-2 scales the init of each residual projection by 1/sqrt(2 * n_layer)
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def scale_dropout(self, share: float) -> None:
        """Dropout at this share of the configured rates (the trainer's --regularize-beyond)."""
        for m in self.modules():
            if isinstance(m, nn.Dropout):
                m.p = share * self.config.dropout
        self.attn_dropout = share * self.config.attention_dropout

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # the tied matrix counts once

    def embed(self, idx: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Token plus position embeddings, for ids and positions of any matching shape."""
        learned = self.config.pos_encoding == "learned"
        # torch.embedding: F.embedding's Python wrapper adds 0.2 us a call (1.69 against
        # 1.50 us for one row), and the decoder embeds every step
        pos = torch.embedding(self.wpe.weight, positions) if learned else self.pos_table[positions]
        return torch.embedding(self.wte.weight, idx) + pos

    def layers(self) -> list[Layer]:
        return [block.layer() for block in self.h]

    def hidden(self, idx: torch.Tensor, layers: list[Layer] | None = None, kv_cache: KVCache | None = None,
               positions: torch.Tensor | None = None, last_only: bool = False, attend: Attend = sdpa,
               ) -> torch.Tensor:
        """idx (B, T) token ids -> the normalised last hidden states (B, T, n_embd), or
        (B, 1, n_embd) with last_only. With a cache, idx holds only the new tokens, in
        batch order (a reordered cache's rows run in its buffer order inside). `layers`:
        what the blocks compute with (default: this model's own modules); positions
        (B, T) overrides 0, 1, 2, ... (left-padded rows start later)."""
        B, T = idx.shape
        start = kv_cache.pos if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        if positions is None:
            positions = torch.arange(start, start + T, device=idx.device)
        x = self.embed(idx, positions)  # (B, T, n_embd)
        if self.training:
            x = self.drop(x)
        views, mask, slots = None, (None, True), None
        if kv_cache is not None:
            slots = kv_cache.slots
            if slots is not None:
                x = x.index_select(0, kv_cache.rows_in_slot)
            mask, views = kv_cache.attention_mask(T), kv_cache.views(T)
        dropout_p = self.attn_dropout if self.training else 0.0
        x = run_blocks(x.view(B * T, -1), B, T, self.layers() if layers is None else layers, self.config, views,
                       mask, attend, dropout_p).view(B, T, -1)
        if kv_cache is not None:
            kv_cache.advance(T)
        if last_only and T > 1:
            x = x[:, -1:]  # (B, 1, n_embd)
        if slots is not None:
            x = x.index_select(0, slots)
        return norm(x, (self.ln_f.weight, self.ln_f.bias), self.config.layer_norm_eps)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                positions: torch.Tensor | None = None, last_only: bool = False,
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """idx (B, T) token ids -> logits (B, T, vocab), and the mean cross-entropy if
        targets (B, T) are given; kv_cache, positions and last_only as `hidden`.
        With targets and gradients on a float32 CPU model, no logits are returned (None):
        the loss comes from fused_loss.linear_cross_entropy."""
        B, T = idx.shape
        x = self.hidden(idx, kv_cache=kv_cache, positions=positions, last_only=last_only)
        if targets is not None and fuses(x, self.lm_head.weight):
            return None, linear_cross_entropy(x.view(B * T, -1), self.lm_head.weight, targets.reshape(B * T))
        logits = self.lm_head(x)  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(B * T, -1).float(), targets.reshape(B * T))
        return logits, loss
