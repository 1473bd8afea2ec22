"""The decoding loops over a decoder (decoders.py): greedy and sampling for a batch,
and beam search scored as HF transformers scores it. Work in token ids only.

Know nothing of text, stop strings or output formats; the caller decodes and decides
when to stop listening. Every sampled row draws from its own torch.Generator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from gptcli.architectures import LanguageModel
from gptcli.architectures import of as architecture
from gptcli.config import SampleConfig
from gptcli.generation.kernels import Prepared
from gptcli.generation.sampling import apply_repetition_penalty, draw, process_logits
from gptcli.model import GPT

WINDOW_KEEP = 0.75  # past block_size, keep this share of the context and rebuild the cache
NEG = -1.0e9  # HF's "impossible" score in beam bookkeeping


def window_size(model: GPT) -> int:
    return max(1, int(model.config.block_size * WINDOW_KEEP))


# -- greedy and sampling -----------------------------------------------------------


def decode_steps(model: LanguageModel, prompts: list[list[int]], cfg: SampleConfig, eot_id: int,
                 generators: list[torch.Generator] | None = None, weights: str = "float32",
                 prepared: Prepared | None = None) -> Iterator[tuple[list[int], list[float]]]:
    """Greedy or sampled continuation of a batch of prompts (each non-empty, at most
    block_size tokens). Yields every step's new token per row and its log-probability
    under the distribution it was drawn from. Stops after max_new_tokens, or once every
    row has produced end-of-text; the caller may stop listening sooner. `prepared`: the
    engine's weights of that kind (None: the decoder prepares its own)."""
    if cfg.max_new_tokens == 0:
        return
    rows = [list(p) for p in prompts]
    B, V = len(rows), model.config.vocab_size
    decoder = architecture(model.config).decoder(model, weights, prepared)
    logits = decoder.prefill(rows)
    seen = None
    if cfg.repetition_penalty != 1.0:
        seen = torch.zeros(B, V, dtype=torch.bool, device=logits.device)
        for i, r in enumerate(rows):
            seen[i, r] = True
    done = [False] * B
    for step in range(cfg.max_new_tokens):
        nxt, logp = choose(logits, cfg, seen, generators)
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


def choose(logits: torch.Tensor, cfg: SampleConfig, seen: torch.Tensor | None,
           generators: list[torch.Generator] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's next token (B,) by the strategy, and its log-probability under the
    distribution it was drawn from (B,)."""
    return pick(process_logits(logits, cfg, seen), cfg, generators)


def pick(scores: torch.Tensor, cfg: SampleConfig, generators: list[torch.Generator] | None,
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """choose() after process_logits: the next token of each row of scores (B, V)."""
    if cfg.strategy == "greedy":
        nxt = scores.argmax(dim=-1)
    else:
        nxt = draw(scores.softmax(dim=-1), generators)
    return nxt, scores.log_softmax(dim=-1).gather(1, nxt[:, None])[:, 0]


# -- beam search -------------------------------------------------------------------


@dataclass
class Hypothesis:
    tokens: list[int]  # generated ids, end-of-text included when it ended the beam
    score: float  # sum of log-probabilities / generated_length ** length_penalty
    logprob: float  # sum of log-probabilities


class Interrupted(Exception):
    """A search stopped because its caller asked (its `interrupted` said so)."""


def beam_search(model: LanguageModel, prompt: list[int], cfg: SampleConfig, eot_id: int,
                weights: str = "float32", prepared: Prepared | None = None,
                interrupted: Callable[[], bool] | None = None) -> list[Hypothesis]:
    """Beam search following HF transformers' conventions, so that equal weights give
    equal beams: the top 2*K continuations of all beams are scored each step; those
    that end (end-of-text, or the length limit) and rank in the top K enter the
    finished set with score sum_logprobs / generated_len ** length_penalty; the best K
    unfinished continue. early_stopping=True stops once K hypotheses are finished;
    False stops when no running beam can beat the worst finished one at its current
    length. Returns the best `num_return` hypotheses, best first; raises Interrupted when
    `interrupted()` (asked before each step) says to stop.

    The model's side stays in tensors (log-probabilities, the top 2K, the cache); the
    2K candidates come to the host in one sync per step and their bookkeeping is plain
    Python, cheaper than the dozens of tiny tensor operations it would take
    (docs/benchmarks.md, "Generation kernels")."""
    K, V, lp, n = cfg.num_beams, model.config.vocab_size, cfg.length_penalty, cfg.max_new_tokens
    if n == 0:
        return [Hypothesis([], 0.0, 0.0)] * cfg.num_return
    decoder = architecture(model.config).decoder(model, weights, prepared)
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
        if interrupted is not None and interrupted():
            raise Interrupted()
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
