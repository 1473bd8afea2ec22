"""Pure functions over logits, as generation applies them each step: repetition
penalty, temperature, top-k, top-p, min-p (HF's order), and drawing one token per row
from its own torch.Generator. Know nothing of models, caches or text.
"""

from __future__ import annotations

import numpy as np
import torch

from gptcli.config import SampleConfig
from gptcli.errors import RunError


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Tokens already in the context: divide positive logits by the penalty, multiply
    negative ones (the CTRL rule HF uses). seen (B, V) bool."""
    if penalty == 1.0:
        return logits
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalized, logits)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep exactly the k largest logits per row (ties broken by index), -inf the rest."""
    if k >= logits.size(-1):
        return logits
    top = logits.topk(k, dim=-1)
    return torch.full_like(logits, float("-inf")).scatter_(-1, top.indices, top.values)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches p: every
    token at least as likely as the last one that set needs (tokens exactly as likely
    as it all stay). Only the probabilities are sorted, not their indices."""
    if p >= 1.0:
        return logits
    probs = logits.softmax(dim=-1)
    desc = _largest_reaching(probs, p)
    mass_before = desc.cumsum(dim=-1) - desc  # grows along the row
    last = ((mass_before < p).sum(dim=-1, keepdim=True) - 1).clamp(min=0)  # the most likely token always stays
    return logits.masked_fill(probs < desc.gather(-1, last), float("-inf"))


TOP_P_CANDIDATES = 512  # the most likely tokens top-p looks among before it sorts the whole vocabulary


def _largest_reaching(x: torch.Tensor, p: float) -> torch.Tensor:
    """The largest values of each row, largest first: enough of them that the mass
    before the last one reaches p in every row, else all of them. A prefix of the full
    descending sort, and cumsum adds in order (in float64), so top_p_filter keeps the
    same set from it. topk(512) over 16 rows of 4,096 took 125 us where numpy's full
    sort took 917 (docs/benchmarks.md, "Serving"); nuclei of a few hundred tokens are
    the common case at p = 0.95."""
    if x.size(-1) > 2 * TOP_P_CANDIDATES:
        top = x.topk(TOP_P_CANDIDATES, dim=-1).values
        if bool(((top.cumsum(dim=-1) - top)[:, -1] >= p).all()):
            return top
    return _sorted_descending(x)


def _sorted_descending(x: torch.Tensor) -> torch.Tensor:
    """The values of each row, largest first. On the CPU numpy's vectorized sort takes a
    few microseconds where torch.sort takes over a hundred on a model's real
    probabilities (docs/benchmarks.md, "Generation kernels")."""
    if x.device.type != "cpu":
        return x.sort(dim=-1, descending=True).values
    return torch.from_numpy(np.ascontiguousarray(np.sort(x.numpy(), axis=-1)[..., ::-1]))


def min_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """min-p: keep the tokens at least p times as likely as the most likely one, -inf the
    rest (the most likely always stays, as with transformers' MinPLogitsWarper)."""
    probs = logits.softmax(dim=-1)
    return logits.masked_fill(probs < p * probs.amax(dim=-1, keepdim=True), float("-inf"))


def process_logits(logits: torch.Tensor, cfg: SampleConfig, seen: torch.Tensor | None) -> torch.Tensor:
    """Repetition penalty, then (sampling only) temperature, top-k, top-p and min-p: HF's
    order, so min-p measures each token against the most likely of what top-k and top-p
    left."""
    logits = logits.float()
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, cfg.repetition_penalty)
    if cfg.strategy == "sample":  # shifted first, so a tiny temperature cannot overflow to inf
        # a temperature below float32's smallest normal would round to 0 (0/0: NaN): as small as float32 allows
        temperature = max(cfg.temperature, torch.finfo(torch.float32).tiny)
        logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
        if cfg.top_k is not None:
            logits = top_k_filter(logits, cfg.top_k)
        if cfg.top_p is not None:
            logits = top_p_filter(logits, cfg.top_p)
        if cfg.min_p is not None:
            logits = min_p_filter(logits, cfg.min_p)
    return logits


def draw(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row of probs (B, V), each row from its own generator, by inverting
    the cumulative distribution with one uniform number. (torch.multinomial draws an
    exponential per vocabulary entry, which costs more than the rest of sampling: see
    docs/benchmarks.md.) A token of probability zero is never drawn."""
    cdf = probs.double().cumsum(dim=-1)  # float64: even the least likely tokens keep their share
    total = cdf[:, -1:]
    if not bool(torch.isfinite(total).all()):
        raise RunError("the model gave non-finite probabilities: its weights hold NaN or inf")
    u = torch.cat([torch.rand(1, generator=g, device=probs.device) for g in generators])[:, None]
    # u < 1, but u * total may round up to total: stay strictly below it
    x = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, x, right=True)[:, 0]  # the first token whose cdf passes x
