"""Generation in token ids: pure functions over logits (repetition penalty, temperature,
top-k, top-p, drawing a token), the decoders that add one token a step (GPT's fast
decoder over a KV cache; the recurrent models' state), and the decoding loops: greedy
and sampling for a batch, and beam search scored as HF transformers scores it.

Knows nothing of text, stop strings or output formats; the caller decodes and decides
when to stop listening. Every sampled row draws from its own torch.Generator.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gptcli.architectures import LanguageModel
from gptcli.config import SampleConfig
from gptcli.errors import RunError
from gptcli.kv_cache import KVCache
from gptcli.model import GPT
from gptcli.recurrent import RecurrentLM

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
    """Keep the smallest set of most likely tokens whose probability reaches p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False  # the most likely token always stays
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def process_logits(logits: torch.Tensor, cfg: SampleConfig, seen: torch.Tensor | None) -> torch.Tensor:
    """Repetition penalty, then (sampling only) temperature, top-k and top-p: HF's order."""
    logits = logits.float()
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, cfg.repetition_penalty)
    if cfg.strategy == "sample":  # shifted first, so a tiny temperature cannot overflow to inf
        logits = (logits - logits.max(dim=-1, keepdim=True).values) / cfg.temperature
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


# -- the fast decoder ------------------------------------------------------------------


class FastDecoder:
    """A GPT's generation engine: prefill the prompts into a KVCache it owns, then one new
    token per row and step. `step` does Block.forward's arithmetic in fewer tensor
    operations (no transposes, no split, one query per head) on the parameters read from a
    flat list, not through the modules: on a CPU, module calls and attribute reads cost as
    much as the small matrix products of a small model (docs/benchmarks.md). The tests pin
    its logits bitwise to `model.forward` with a cache.

    Built from a model in eval mode; it refuses to run once the model is put in training
    mode or a parameter object is replaced (load_state_dict(assign=True)), since it would
    then compute with weights the model no longer has."""

    def __init__(self, model: GPT):
        if model.training:
            raise ValueError("the fast decoder needs the model in eval mode: call model.eval()")
        self.model, self.cfg = model, model.config
        self._params = [(b.ln_1.weight, b.ln_1.bias, b.attn.c_attn.weight, b.attn.c_attn.bias, b.attn.c_proj.weight,
                         b.attn.c_proj.bias, b.ln_2.weight, b.ln_2.bias, b.mlp.c_fc.weight, b.mlp.c_fc.bias,
                         b.mlp.c_proj.weight, b.mlp.c_proj.bias) for b in model.h]
        self._final = (model.ln_f.weight, model.ln_f.bias, model.lm_head.weight)
        self._owners = [(m._parameters, name, p) for m in model.modules() for name, p in m._parameters.items()]
        self.device, self.dtype = model.wte.weight.device, model.wte.weight.dtype
        self.cache: KVCache | None = None
        self.next_pos: torch.Tensor | None = None  # (B,) each row's next position

    def _check(self) -> None:
        if self.model.training:
            raise ValueError("the model was put in training mode: the fast decoder runs in eval mode only")
        if not all(params.get(name) is p for params, name, p in self._owners):
            raise ValueError("the model's parameters were replaced after the fast decoder was built: build a new one")

    @property
    def full(self) -> bool:
        """Whether the context is full, so the next step needs a new prefill."""
        return self.cache is not None and self.cache.pos >= self.cfg.block_size

    def prefill(self, rows: list[list[int]]) -> torch.Tensor:
        """Run the prompts (each 1..block_size tokens) once, left-padded, into a fresh
        cache; returns the last position's logits (B, V)."""
        self._check()
        T = max(len(r) for r in rows)
        idx = torch.zeros((len(rows), T), dtype=torch.long, device=self.device)  # padding: any id, it is masked
        valid = torch.zeros(len(rows), T, dtype=torch.bool, device=self.device)
        for i, r in enumerate(rows):
            idx[i, T - len(r):] = torch.tensor(r, dtype=torch.long, device=self.device)
            valid[i, T - len(r):] = True
        self.cache = KVCache(self.cfg, len(rows), device=self.device, dtype=self.dtype)
        positions = None
        if not bool(valid.all()):
            self.cache.mark_padding(valid)
            positions = (valid.long().cumsum(dim=1) - 1).clamp(min=0)  # each row counts from its first token
        logits, _ = self.model(idx, kv_cache=self.cache, positions=positions, last_only=True)
        self.next_pos = valid.sum(dim=1)
        return logits[:, -1]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B,), one per row after the prefilled ones -> logits (B, V)."""
        self._check()
        cache = self.cache
        if cache.pos >= self.cfg.block_size:
            raise ValueError(f"sequence of {cache.pos + 1} tokens exceeds block_size {self.cfg.block_size}")
        x = self.model.embed(tokens, self.next_pos)  # (B, n_embd)
        mask = cache.step_mask()
        (B, C), nh, eps, shape = x.shape, self.cfg.n_head, self.cfg.layer_norm_eps, (self.cfg.n_embd,)
        for layer, (ln1_w, ln1_b, attn_w, attn_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b, out_w, out_b) in \
                enumerate(self._params):
            qkv = F.linear(F.layer_norm(x, shape, ln1_w, ln1_b, eps), attn_w, attn_b).view(B, 3, nh, C // nh)
            keys, values = cache.append(layer, qkv.select(1, 1), qkv.select(1, 2))  # (B, nh, S, hd)
            y = F.scaled_dot_product_attention(qkv.select(1, 0).unsqueeze(2), keys, values, attn_mask=mask)
            x = x + F.linear(y.view(B, C), proj_w, proj_b)
            h = F.gelu(F.linear(F.layer_norm(x, shape, ln2_w, ln2_b, eps), fc_w, fc_b), approximate="tanh")
            x = x + F.linear(h, out_w, out_b)
        cache.advance(1)
        self.next_pos = self.next_pos + 1
        ln_w, ln_b, head = self._final
        return F.linear(F.layer_norm(x, shape, ln_w, ln_b, eps), head)

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep cache rows `rows` (beam search: each new beam continues an old one)."""
        self.cache.reorder(rows)
        self.next_pos = self.next_pos.index_select(0, rows)


class RecurrentDecoder:
    """A recurrent model's generation engine: the state carries the whole history, so
    there is no context to fill and no window to slide (generation past block_size just
    goes on). Same interface as FastDecoder."""

    full = False  # never: a recurrent model has no context limit

    def __init__(self, model: RecurrentLM):
        if model.training:
            raise ValueError("the decoder needs the model in eval mode: call model.eval()")
        self.model, self.state = model, None
        self.device = model.wte.weight.device

    def prefill(self, rows: list[list[int]]) -> torch.Tensor:
        """Run the prompts (right-padded, each to its own length) from a zero state;
        returns each row's last logits (B, V)."""
        lengths = torch.tensor([len(r) for r in rows], device=self.device)
        idx = torch.zeros((len(rows), int(lengths.max())), dtype=torch.long, device=self.device)
        for i, r in enumerate(rows):
            idx[i, :len(r)] = torch.tensor(r, dtype=torch.long, device=self.device)
        x, self.state = self.model.run(idx, lengths=lengths)
        return self.model.lm_head(x[torch.arange(len(rows), device=self.device), lengths - 1])

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        x, self.state = self.model.run(tokens[:, None], self.state)
        return self.model.lm_head(x[:, 0])

    def reorder(self, rows: torch.Tensor) -> None:
        self.state = tuple(s.index_select(1, rows) for s in self.state) if isinstance(self.state, tuple) \
            else self.state.index_select(1, rows)


def make_decoder(model: LanguageModel) -> FastDecoder | RecurrentDecoder:
    return RecurrentDecoder(model) if model.config.recurrent else FastDecoder(model)


def window_size(model: GPT) -> int:
    return max(1, int(model.config.block_size * WINDOW_KEEP))


# -- greedy and sampling -----------------------------------------------------------


def decode_steps(model: LanguageModel, prompts: list[list[int]], cfg: SampleConfig, eot_id: int,
                 generators: list[torch.Generator] | None = None) -> Iterator[tuple[list[int], list[float]]]:
    """Greedy or sampled continuation of a batch of prompts (each non-empty, at most
    block_size tokens). Yields every step's new token per row and its log-probability
    under the distribution it was drawn from. Stops after max_new_tokens, or once every
    row has produced end-of-text; the caller may stop listening sooner."""
    if cfg.max_new_tokens == 0:
        return
    rows = [list(p) for p in prompts]
    B, V = len(rows), model.config.vocab_size
    decoder = make_decoder(model)
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


def beam_search(model: LanguageModel, prompt: list[int], cfg: SampleConfig, eot_id: int) -> list[Hypothesis]:
    """Beam search following HF transformers' conventions, so that equal weights give
    equal beams: the top 2*K continuations of all beams are scored each step; those
    that end (end-of-text, or the length limit) and rank in the top K enter the
    finished set with score sum_logprobs / generated_len ** length_penalty; the best K
    unfinished continue. early_stopping=True stops once K hypotheses are finished;
    False stops when no running beam can beat the worst finished one at its current
    length. Returns the best `num_return` hypotheses, best first.

    The bookkeeping lives in tensors (token rows, scores, lengths), so a step costs a
    handful of small operations and two host syncs (the stop test, and which cache rows
    move), whatever the number of beams."""
    K, V, lp, n = cfg.num_beams, model.config.vocab_size, cfg.length_penalty, cfg.max_new_tokens
    if n == 0:
        return [Hypothesis([], 0.0, 0.0)] * cfg.num_return
    decoder = make_decoder(model)
    logits = decoder.prefill([prompt])
    device = logits.device
    decoder.reorder(torch.zeros(K, dtype=torch.long, device=device))
    logits = logits.expand(K, V)
    running = torch.zeros(K, n, dtype=torch.long, device=device)  # generated tokens, row per beam
    running_scores = torch.full((K,), NEG, device=device)
    running_scores[0] = 0.0
    # the finished set: K slots, NEG-scored while empty
    fin_scores = torch.full((K,), NEG, device=device)
    fin_tokens = torch.zeros(K, n, dtype=torch.long, device=device)
    fin_len = torch.zeros(K, dtype=torch.long, device=device)
    fin_logprobs = torch.zeros(K, device=device)
    fin_done = torch.zeros(K, dtype=torch.bool, device=device)
    seen = None
    if cfg.repetition_penalty != 1.0:
        seen = torch.zeros(K, V, dtype=torch.bool, device=device)
        seen[:, prompt] = True
    in_top_k = torch.arange(2 * K, device=device) < K
    beam_rows = torch.arange(K, device=device)
    for step in range(n):
        logp = logits.float().log_softmax(dim=-1)
        if seen is not None:  # HF applies its processors to the log-probabilities here
            logp = apply_repetition_penalty(logp, seen, cfg.repetition_penalty)
        top_scores, top_idx = (logp + running_scores[:, None]).view(-1).topk(2 * K)
        beam, tok = top_idx // V, top_idx % V
        hits = (tok == eot_id) | (step == n - 1)
        cand_tokens = running[beam]  # (2K, n)
        cand_tokens[:, step] = tok

        # candidates for the finished set: those that ended among the top K
        just_finished = hits & in_top_k
        cand = top_scores / ((step + 1) ** lp) + (~just_finished).float() * NEG
        merged = torch.cat([fin_scores, cand]).topk(K).indices
        fin_scores = torch.cat([fin_scores, cand])[merged]
        fin_tokens = torch.cat([fin_tokens, cand_tokens])[merged]
        fin_len = torch.cat([fin_len, torch.full((2 * K,), step + 1, device=device)])[merged]
        fin_logprobs = torch.cat([fin_logprobs, top_scores])[merged]
        fin_done = torch.cat([fin_done, just_finished])[merged]

        # the best K unfinished continue
        keep = (top_scores + hits.float() * NEG).topk(K)
        running_scores, running = keep.values, cand_tokens[keep.indices]
        rows, nxt = beam[keep.indices], tok[keep.indices]
        if seen is not None:
            seen = seen[rows]
            seen[beam_rows, nxt] = True

        # stop when no running beam can beat the worst finished one, or (early_stopping) K are done
        best_possible = running_scores[0] / ((step + 1) ** lp)
        worst_finished = torch.where(fin_done, fin_scores.min(), NEG)
        stop = ~(best_possible > worst_finished).any() | hits.all()
        if cfg.early_stopping:
            stop = stop | fin_done.all()
        if bool(stop):
            break
        if decoder.full:  # window full: rebuild from the kept beams' text
            history = running[:, :step + 1].tolist()
            logits = decoder.prefill([(prompt + r)[-window_size(model):] for r in history])
            continue
        decoder.reorder(rows)
        logits = decoder.step(nxt)
    lengths, tokens = fin_len.tolist(), fin_tokens.tolist()
    return [Hypothesis(tokens[i][:lengths[i]], float(fin_scores[i]), float(fin_logprobs[i]))
            for i in range(cfg.num_return)]
