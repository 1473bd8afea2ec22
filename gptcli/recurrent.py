"""Recurrent language models beside GPT: an Elman RNN (tanh), an LSTM or a GRU.

token embedding -> n_layer recurrent layers (torch.nn.RNN/LSTM/GRU: cuDNN on CUDA), with
dropout between them -> final LayerNorm -> lm_head, tied to the embedding (the hidden
width is the embedding width, so the shapes always allow it). Trained on block_size
windows with the state starting from zero in each (truncated backpropagation through
time); generation carries the state from token to token, so it has no context limit.
The state is the recurrent counterpart of the KV cache: a value the caller owns, handed
in and returned. Knows nothing of tokenizers or files.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptcli.config import ModelConfig
from gptcli.fused_loss import fuses, linear_cross_entropy

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
GATES = {"rnn": 1, "lstm": 4, "gru": 3}  # weight blocks per layer: input-to-hidden and hidden-to-hidden each

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # h (n_layer, B, H), or (h, c) for an LSTM


class RecurrentLM(nn.Module):
    def __init__(self, cfg: ModelConfig, init: bool = True):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        kwargs = {"nonlinearity": "tanh"} if cfg.arch == "rnn" else {}
        self.rnn = CELLS[cfg.arch](cfg.n_embd, cfg.n_embd, num_layers=cfg.n_layer, bias=cfg.bias, batch_first=True,
                                   dropout=cfg.dropout if cfg.n_layer > 1 else 0.0, **kwargs)
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as GPT's
        if init:
            nn.init.normal_(self.wte.weight, mean=0.0, std=0.02)

    def scale_dropout(self, share: float) -> None:
        """Dropout at this share of the configured rate (the trainer's --regularize-beyond)."""
        self.drop.p = share * self.config.dropout
        if self.config.n_layer > 1:
            self.rnn.dropout = self.drop.p

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # the tied matrix counts once

    def run(self, idx: torch.Tensor, state: State | None = None, lengths: torch.Tensor | None = None,
            ) -> tuple[torch.Tensor, State]:
        """idx (B, T) -> the last layer's normalised outputs (B, T, n_embd) and the new state.
        With `lengths` (B,), row i holds lengths[i] real tokens then padding, and the state
        returned is each row's after its last real token."""
        x = self.drop(self.wte(idx))  # (B, T, n_embd)
        if lengths is not None:
            x = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        y, state = self.rnn(x, state)  # (B, T, n_embd)
        if lengths is not None:
            y, _ = nn.utils.rnn.pad_packed_sequence(y, batch_first=True, total_length=idx.size(1))
        return self.ln_f(self.drop(y)), state

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, state: State | None = None,
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """As GPT.forward: logits (B, T, vocab), and the mean cross-entropy if targets are
        given; each call starts from `state` (zero when None)."""
        B, T = idx.shape
        x, _ = self.run(idx, state)
        if targets is not None and fuses(x, self.lm_head.weight):
            return None, linear_cross_entropy(x.reshape(B * T, -1), self.lm_head.weight, targets.reshape(B * T))
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(B * T, -1).float(), targets.reshape(B * T))
        return logits, loss


def param_count(cfg: ModelConfig) -> int:
    """RecurrentLM.num_params() from the config alone."""
    H, gates = cfg.n_embd, GATES[cfg.arch]
    per_layer = gates * (2 * H * H) + (gates * 2 * H if cfg.bias else 0)
    return cfg.vocab_size * H + cfg.n_layer * per_layer + (2 * H if cfg.bias else H)


def matched_width(cfg: ModelConfig, target: int) -> int:
    """The width (a multiple of 8) that gives cfg's recurrent model, at cfg's depth, the
    parameter count closest to `target`: how `--arch lstm --preset tiny` matches tiny."""
    best, best_gap = 8, None
    for width in range(8, 8193, 8):
        gap = abs(param_count(_with_width(cfg, width)) - target)
        if best_gap is None or gap < best_gap:
            best, best_gap = width, gap
    return best


def _with_width(cfg: ModelConfig, width: int) -> ModelConfig:
    return dataclasses.replace(cfg, n_embd=width, n_head=1)
