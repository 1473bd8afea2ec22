"""Scoring text with a model: loss, perplexity, bits per byte and next-token accuracy.

`score_tokens` slides windows over a (memory-mapped) token array so every token is
predicted with context and scored once: `gptcli eval` uses it, and so does the trainer
for a validation split small enough to score whole, so the two report the same figure
for the same text. `score_windows` scores every target of fixed windows (the trainer's
estimate on large splits). Both go through `_score_batch`. Knows nothing of files or
terminals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gptcli.architectures import LanguageModel
from gptcli.device import Precision
from gptcli.errors import Setting as S
from gptcli.errors import SettingError


def window_stride(stride: int | None, block: int) -> int:
    """Tokens between the starts of scored windows: half the context unless given, and
    never more than the context (a gap would leave tokens unscored)."""
    stride = max(block // 2, 1) if stride is None else stride
    if not 1 <= stride <= block:
        raise SettingError(S("stride"), f" must be between 1 and the model's context ({block}), got {stride}")
    return stride


@dataclass
class Score:
    tokens: int = 0  # targets scored
    nats: float = 0.0  # summed cross-entropy
    correct: int = 0  # targets that were the model's top guess
    bytes: int = 0  # UTF-8 bytes the scored targets stand for
    position_nats: np.ndarray | None = None  # (block_size,) summed by position in the window, when asked for
    position_tokens: np.ndarray | None = None

    @property
    def loss_by_position(self) -> np.ndarray:
        """Mean loss of the targets at window positions 1..block_size: position p is
        predicted from the p tokens before it in its window."""
        return self.position_nats / np.maximum(self.position_tokens, 1)

    @property
    def loss(self) -> float:
        return self.nats / max(self.tokens, 1)

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))

    @property
    def bits_per_byte(self) -> float:
        return self.nats / math.log(2) / max(self.bytes, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.tokens, 1)

    def as_dict(self) -> dict:
        return {"tokens": self.tokens, "bytes": self.bytes, "loss": self.loss, "perplexity": self.perplexity,
                "bits_per_byte": self.bits_per_byte, "accuracy": self.accuracy}


def sliding_windows(n_tokens: int, block: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(begin, end, first_new) for each window over n_tokens: inputs are tokens[begin:end-1],
    targets tokens[begin+1:end], and targets from index first_new on are scored (earlier
    ones were scored by a previous window and serve here as context only). Windows start
    `stride` apart, so a scored target has at least block + 1 - stride tokens before it in
    its window (all of them, in the first window)."""
    scored, begin = 1, 0  # token 0 is never a target
    while scored < n_tokens:
        end = min(begin + block + 1, n_tokens)
        yield begin, end, scored
        scored, begin = end, begin + stride


def _score_batch(model: LanguageModel, xy: torch.Tensor, keep: torch.Tensor | None, lengths: torch.Tensor,
                 precision: Precision, score: Score) -> None:
    """Add the targets of windows xy (B, T + 1) where `keep` (B, T) is True (all if None)."""
    x, y = xy[:, :-1], xy[:, 1:]
    with precision.autocast():
        logits, _ = model(x)
    nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none").view_as(y)
    hits = logits.argmax(-1) == y
    if score.position_nats is not None:
        kept = torch.ones_like(nll, dtype=torch.bool) if keep is None else keep
        width = nll.size(1)
        score.position_nats[:width] += (nll.double() * kept).sum(0).cpu().numpy()
        score.position_tokens[:width] += kept.sum(0).cpu().numpy()
    if keep is not None:
        nll, hits, y = nll[keep], hits[keep], y[keep]
    score.nats += float(nll.double().sum())
    score.tokens += y.numel()
    score.correct += int(hits.sum())
    score.bytes += int(lengths[y].sum())


def score_tokens(model: LanguageModel, tokens: np.ndarray, byte_lengths: np.ndarray, *, stride: int, batch_size: int,
                 precision: Precision, progress: Callable[[int, int], None] | None = None,
                 by_position: bool = False) -> Score:
    """Sliding-window score of a token array. Each window holds up to block_size inputs;
    consecutive windows start `stride` apart, so every scored token after the first
    window has at least block_size - stride tokens of context. `by_position` also sums
    the loss by position in the window (with stride = block_size, every position counts)."""
    device = next(model.parameters()).device
    lengths = torch.as_tensor(byte_lengths, device=device)
    block = model.config.block_size
    score = Score(position_nats=np.zeros(block), position_tokens=np.zeros(block)) if by_position else Score()
    plan = list(sliding_windows(len(tokens), block, stride))
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(plan), batch_size):
            group = plan[i:i + batch_size]
            for same in _by_length(group):  # windows in a batch share a length except the last
                xy = torch.from_numpy(np.stack([tokens[b:e].astype(np.int64) for b, e, _ in same])).to(device)
                keep = torch.zeros(len(same), xy.size(1) - 1, dtype=torch.bool, device=device)
                for row, (b, _, first) in enumerate(same):
                    keep[row, first - b - 1:] = True
                _score_batch(model, xy, keep, lengths, precision, score)
            if progress:
                progress(group[-1][1], len(tokens))
    return score


def score_windows(model: LanguageModel, windows: torch.Tensor, byte_lengths: torch.Tensor, *, batch_size: int,
                  precision: Precision, by_position: bool = False) -> Score:
    """Every target of fixed windows (N, block_size + 1), batch_size windows at a time;
    `by_position` also sums the loss by position in the window."""
    device = byte_lengths.device
    block = windows.size(1) - 1
    score = Score(position_nats=np.zeros(block), position_tokens=np.zeros(block)) if by_position else Score()
    with torch.inference_mode():
        for i in range(0, len(windows), batch_size):
            _score_batch(model, windows[i:i + batch_size].to(device), None, byte_lengths, precision, score)
    return score


def _by_length(group: list[tuple[int, int, int]]) -> list[list[tuple[int, int, int]]]:
    out: dict[int, list] = {}
    for w in group:
        out.setdefault(w[1] - w[0], []).append(w)
    return list(out.values())
