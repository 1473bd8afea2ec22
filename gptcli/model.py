"""The GPT-2 architecture, exactly: token and position embeddings (learned, or the fixed
sinusoidal table), pre-LayerNorm blocks of causal self-attention and a tanh-GELU MLP, a
final LayerNorm, and an lm_head tied to the token embedding.

`forward` takes an optional KVCache, an object the caller owns and hands in (generation
prefills it once, then feeds new tokens). The one-token fast path of generation is
decoders.FastDecoder, pinned equal to this forward by the tests. Knows nothing of
tokenizers or files.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptcli.config import ModelConfig
from gptcli.fused_loss import fuses, linear_cross_entropy
from gptcli.kv_cache import KVCache


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_embd, self.dropout = cfg.n_head, cfg.n_embd, cfg.attention_dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v at once
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None, layer: int, mask: tuple) -> torch.Tensor:
        B, T, C = x.shape  # (B, T, n_embd)
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hd)
        if kv_cache is not None:
            k, v = kv_cache.store(layer, k, v)  # (B, nh, past + T, hd)
        attn_mask, is_causal = mask
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, nh, T, hd)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.c_fc(x), approximate="tanh")  # GPT-2's gelu_new; (B, T, 4 * n_embd)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None, layer: int, mask: tuple) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), kv_cache, layer, mask)
        return x + self.mlp(self.ln_2(x))


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
            elif isinstance(m, CausalSelfAttention):
                m.dropout = share * self.config.attention_dropout

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # the tied matrix counts once

    def embed(self, idx: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Token plus position embeddings, for ids and positions of any matching shape."""
        learned = self.config.pos_encoding == "learned"
        # torch.embedding: F.embedding's Python wrapper adds 0.2 us a call (1.69 against
        # 1.50 us for one row), and the decoder embeds every step
        pos = torch.embedding(self.wpe.weight, positions) if learned else self.pos_table[positions]
        return torch.embedding(self.wte.weight, idx) + pos

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                positions: torch.Tensor | None = None, last_only: bool = False,
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """idx (B, T) token ids -> logits (B, T, vocab), and the mean cross-entropy if
        targets (B, T) are given. With a cache, idx holds only the new tokens.
        positions (B, T) overrides 0, 1, 2, ... (left-padded rows start later);
        last_only computes logits for the last position alone (generation).
        With targets and gradients on a float32 CPU model, no logits are returned (None):
        the loss comes from fused_loss.linear_cross_entropy."""
        B, T = idx.shape
        start = kv_cache.pos if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        if positions is None:
            positions = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.embed(idx, positions))  # (B, T, n_embd)
        mask = kv_cache.attention_mask(T) if kv_cache is not None else (None, True)
        for layer, block in enumerate(self.h):
            x = block(x, kv_cache, layer, mask)
        if kv_cache is not None:
            kv_cache.advance(T)
        if last_only:
            x = x[:, -1:]  # (B, 1, n_embd)
        x = self.ln_f(x)
        if targets is not None and fuses(x, self.lm_head.weight):
            return None, linear_cross_entropy(x.view(B * T, -1), self.lm_head.weight, targets.reshape(B * T))
        logits = self.lm_head(x)  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(B * T, -1).float(), targets.reshape(B * T))
        return logits, loss
