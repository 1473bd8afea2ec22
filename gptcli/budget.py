"""Memory budgets: what a model, a training step, a generation batch or a beam set will
need, checked against what this machine allows before anything is allocated.

The estimates count float32 tensors from the shapes alone (parameters, optimizer state,
activations, KV cache, logits), so a setting that cannot fit is refused with exit 2 and
the number, instead of running out of memory later. They are estimates: they leave out
PyTorch's own few hundred MB, and the training figure assumes attention that does not
store the (T, T) weights (SDPA's fused kernels). Limits honoured: physical memory,
RLIMIT_AS and RLIMIT_DATA, and a cgroup's memory.max.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

from gptcli.architectures import param_count
from gptcli.config import ModelConfig
from gptcli.errors import UsageError

FLOAT = 4  # bytes per float32


def machine_bytes() -> int:
    """The most memory this process may use: the smallest of RAM and its limits."""
    limits = [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
    for which in (resource.RLIMIT_AS, resource.RLIMIT_DATA):
        soft, _ = resource.getrlimit(which)
        if soft != resource.RLIM_INFINITY:
            limits.append(soft)
    for path in (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append(int(text))
    return min(limits)


def _fmt(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.0f} MiB"


def require(need: int, what: str) -> None:
    have = machine_bytes()
    if need > have:
        raise UsageError(f"{what} would need about {_fmt(need)} of memory, and this machine allows {_fmt(have)}: "
                         "choose a smaller model, batch or count")


def check_model(cfg: ModelConfig, what: str = "the model") -> None:
    params = param_count(cfg)
    require(params * FLOAT, f"{what} ({params:,} parameters)")


def check_training(cfg: ModelConfig, batch_size: int) -> None:
    """Weights, gradients and two optimizer moments, plus one micro-batch's activations
    (about 34 values per token, layer and channel, after Korthikanti et al. 2022)."""
    params = param_count(cfg)
    tokens = batch_size * cfg.block_size
    activations = tokens * cfg.n_layer * 34 * cfg.n_embd * FLOAT
    logits_chunk = min(tokens, 4096) * cfg.vocab_size * FLOAT * 2
    require(params * 4 * FLOAT + activations + logits_chunk,
            f"training ({params:,} parameters, {batch_size} x {cfg.block_size} tokens a micro-batch)")


def check_generation(cfg: ModelConfig, rows: int, new_tokens: int, beams: int = 1) -> None:
    """The model and the decoder's prepared copy of its matrices (packed, float16 or
    int8: at most as large), a KV cache for `rows` rows, the logits a step processes,
    and beam search's (beams, new_tokens) bookkeeping."""
    cache = 2 * cfg.n_layer * rows * cfg.block_size * cfg.n_embd * FLOAT
    logits = rows * cfg.vocab_size * FLOAT * 8
    bookkeeping = 7 * beams * new_tokens * 8 if beams > 1 else 0
    require(2 * param_count(cfg) * FLOAT + cache + logits + bookkeeping,
            f"generating {rows} row{'s' if rows != 1 else ''} of up to {new_tokens:,} tokens")


def check_scoring(cfg: ModelConfig, batch_size: int) -> None:
    logits = batch_size * cfg.block_size * cfg.vocab_size * FLOAT * 3
    activations = batch_size * cfg.block_size * cfg.n_embd * FLOAT * 8
    require(param_count(cfg) * FLOAT + logits + activations, f"scoring {batch_size} windows at a time")
