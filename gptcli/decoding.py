"""Generation in token ids: pure functions over logits (repetition penalty, temperature,
top-k, top-p, drawing a token), and the decoding loops over a decoder (decoders.py):
greedy and sampling for a batch, and beam search scored as HF transformers scores it.

Knows nothing of text, stop strings or output formats; the caller decodes and decides
when to stop listening. Every sampled row draws from its own torch.Generator.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from gptcli.architectures import LanguageModel
from gptcli.config import SampleConfig
from gptcli.decoders import make_decoder
from gptcli.errors import RunError
from gptcli.model import GPT

WINDOW_KEEP = 0.75  # past block_size, keep this share of the context and rebuild the cache
NEG = -1.0e9  # HF's "impossible" score in beam bookkeeping


# -- logits processors -------------------------------------------------------------


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
    desc = _sorted_descending(probs)
    mass_before = desc.cumsum(dim=-1) - desc  # grows along the row
    last = ((mass_before < p).sum(dim=-1, keepdim=True) - 1).clamp(min=0)  # the most likely token always stays
    return logits.masked_fill(probs < desc.gather(-1, last), float("-inf"))


def _sorted_descending(x: torch.Tensor) -> torch.Tensor:
    """The values of each row, largest first. On the CPU numpy's vectorized sort takes a
    few microseconds where torch.sort takes over a hundred on a model's real
    probabilities (docs/benchmarks.md, "Generation kernels")."""
    if x.device.type != "cpu":
        return x.sort(dim=-1, descending=True).values
    return torch.from_numpy(np.ascontiguousarray(np.sort(x.numpy(), axis=-1)[..., ::-1]))


def process_logits(logits: torch.Tensor, cfg: SampleConfig, seen: torch.Tensor | None) -> torch.Tensor:
    """Repetition penalty, then (sampling only) temperature, top-k and top-p: HF's order."""
    logits = logits.float()
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, cfg.repetition_penalty)
    if cfg.strategy == "sample":  # shifted first, so a tiny temperature cannot overflow to inf
        logits = (logits - logits.amax(dim=-1, keepdim=True)) / cfg.temperature
        if cfg.top_k is not None:
            logits = top_k_filter(logits, cfg.top_k)
        if cfg.top_p is not None:
            logits = top_p_filter(logits, cfg.top_p)
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


# -- the loops ----------------------------------------------------------------------


def window_size(model: GPT) -> int:
    return max(1, int(model.config.block_size * WINDOW_KEEP))


# -- greedy and sampling -----------------------------------------------------------


def decode_steps(model: LanguageModel, prompts: list[list[int]], cfg: SampleConfig, eot_id: int,
                 generators: list[torch.Generator] | None = None, weights: str = "float32",
                 ) -> Iterator[tuple[list[int], list[float]]]:
    """Greedy or sampled continuation of a batch of prompts (each non-empty, at most
    block_size tokens). Yields every step's new token per row and its log-probability
    under the distribution it was drawn from. Stops after max_new_tokens, or once every
    row has produced end-of-text; the caller may stop listening sooner."""
    if cfg.max_new_tokens == 0:
        return
    rows = [list(p) for p in prompts]
    B, V = len(rows), model.config.vocab_size
    decoder = make_decoder(model, weights)
    logits = decoder.prefill(rows)
    seen = None
    if cfg.repetition_penalty != 1.0:
        seen = torch.zeros(B, V, dtype=torch.bool, device=logits.device)
        for i, r in enumerate(rows):
            seen[i, r] = True
    done = [False] * B
    for step in range(cfg.max_new_tokens):
        scores = process_logits(logits, cfg, seen)
        if cfg.strategy == "greedy":
            nxt = scores.argmax(dim=-1)
        else:
            nxt = draw(scores.softmax(dim=-1), generators)
        logp = scores.log_softmax(dim=-1).gather(1, nxt[:, None])[:, 0]
        ids = nxt.tolist()
        yield ids, logp.tolist()
        for i, t in enumerate(ids):
            rows[i].append(t)
            done[i] = done[i] or t == eot_id
        if all(done) or step == cfg.max_new_tokens - 1:
            return
        if seen is not None:
            seen[torch.arange(B), nxt] = True
        if decoder.full:  # window full: keep the recent part, rebuild
            logits = decoder.prefill([r[-window_size(model):] for r in rows])
        else:
            logits = decoder.step(nxt)


# -- beam search -------------------------------------------------------------------


@dataclass
class Hypothesis:
    tokens: list[int]  # generated ids, end-of-text included when it ended the beam
    score: float  # sum of log-probabilities / generated_length ** length_penalty
    logprob: float  # sum of log-probabilities


def beam_search(model: LanguageModel, prompt: list[int], cfg: SampleConfig, eot_id: int,
                weights: str = "float32") -> list[Hypothesis]:
    """Beam search following HF transformers' conventions, so that equal weights give
    equal beams: the top 2*K continuations of all beams are scored each step; those
    that end (end-of-text, or the length limit) and rank in the top K enter the
    finished set with score sum_logprobs / generated_len ** length_penalty; the best K
    unfinished continue. early_stopping=True stops once K hypotheses are finished;
    False stops when no running beam can beat the worst finished one at its current
    length. Returns the best `num_return` hypotheses, best first.

    The model's side stays in tensors (log-probabilities, the top 2K, the cache); the
    2K candidates come to the host in one sync per step and their bookkeeping is plain
    Python, cheaper than the dozens of tiny tensor operations it would take
    (docs/benchmarks.md, "Generation kernels")."""
    K, V, lp, n = cfg.num_beams, model.config.vocab_size, cfg.length_penalty, cfg.max_new_tokens
    if n == 0:
        return [Hypothesis([], 0.0, 0.0)] * cfg.num_return
    decoder = make_decoder(model, weights)
    logits = decoder.prefill([prompt])
    device = logits.device
    decoder.reorder(torch.zeros(K, dtype=torch.long, device=device))
    logits = logits.expand(K, V)
    running: list[list[int]] = [[] for _ in range(K)]  # each beam's generated tokens
    running_scores = torch.full((K,), NEG, device=device)
    running_scores[0] = 0.0  # the K copies of the prompt count once
    finished: list[Hypothesis] = []  # at most K, best first
    seen = None
    if cfg.repetition_penalty != 1.0:
        seen = torch.zeros(K, V, dtype=torch.bool, device=device)
        seen[:, prompt] = True
    for step in range(n):
        logp = logits.float().log_softmax(dim=-1)
        if seen is not None:  # HF applies its processors to the log-probabilities here
            logp = apply_repetition_penalty(logp, seen, cfg.repetition_penalty)
        top_scores, top_idx = (logp + running_scores[:, None]).view(-1).topk(2 * K)
        last = step == n - 1
        rows, nxt, scores = [], [], []
        for rank, (score, i) in enumerate(zip(top_scores.tolist(), top_idx.tolist())):
            beam, tok = divmod(i, V)
            if tok == eot_id or last:  # it ends; only the top K candidates may enter the finished set
                if rank < K:
                    _add_finished(finished, Hypothesis(running[beam] + [tok], score / (step + 1) ** lp, score), K)
            elif len(rows) < K:
                rows.append(beam), nxt.append(tok), scores.append(score)
        if last or _beams_done(finished, scores[0] / (step + 1) ** lp, K, cfg.early_stopping):
            break
        running = [running[b] + [t] for b, t in zip(rows, nxt)]
        running_scores = torch.tensor(scores, device=device)
        rows_t, nxt_t = torch.tensor(rows, device=device), torch.tensor(nxt, device=device)
        if seen is not None:
            seen = seen[rows_t]
            seen[torch.arange(K, device=device), nxt_t] = True
        if decoder.full:  # window full: rebuild from the kept beams' text
            logits = decoder.prefill([(prompt + r)[-window_size(model):] for r in running])
            continue
        decoder.reorder(rows_t)
        logits = decoder.step(nxt_t)
    return finished[:cfg.num_return]


def _add_finished(finished: list[Hypothesis], hyp: Hypothesis, K: int) -> None:
    """HF's BeamHypotheses.add: enter while fewer than K, or when better than the worst
    (strictly); keep the best K, best first."""
    if len(finished) < K or hyp.score > finished[-1].score:
        finished.append(hyp)
        finished.sort(key=lambda h: -h.score)  # stable: an equal score stays behind the earlier one
        del finished[K:]


def _beams_done(finished: list[Hypothesis], best_running: float, K: int, early_stopping: bool) -> bool:
    """HF's is_done: K finished, and (early_stopping) that is enough, or no running beam
    can still beat the worst of them at its current length."""
    if len(finished) < K:
        return False
    return early_stopping or finished[-1].score >= best_running
