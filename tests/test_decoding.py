"""Decoding: logits processors, the fast decoder against the model's forward, the
KV-cached loops against full recompute, beam search against greedy and brute force,
seeds, batching, and how the generate command settles a strategy from the flags."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
import torch.nn.functional as F

from gptcli.config import ModelConfig, SampleConfig, flag
from gptcli.errors import RunError, SettingError
from gptcli.generation import kernels, search
from gptcli.generation.decoders import FastDecoder
from gptcli.generation.kernels import Matmul, Prepared, has_fp16_kernel, matmul_form, packs_for_cpu
from gptcli.generation.kv_cache import KVCache
from gptcli.generation.sampling import (
    apply_repetition_penalty,
    draw,
    min_p_filter,
    process_logits,
    top_k_filter,
    top_p_filter,
)
from gptcli.generation.search import beam_search, decode_steps
from gptcli.model import GPT


def tiny(vocab=300, block=32, seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=vocab, block_size=block, n_layer=2, n_head=2, n_embd=32)).eval()


def greedy(n, **kw) -> SampleConfig:
    return SampleConfig(strategy="greedy", max_new_tokens=n, **kw)


def run(model, prompts, cfg, eot=-1, gens=None):
    with torch.inference_mode():
        steps = list(decode_steps(model, prompts, cfg, eot, gens))
    return [[s[0][i] for s in steps] for i in range(len(prompts))]


# -- processors ----------------------------------------------------------------------


def test_top_k_keeps_exactly_k():
    logits = torch.tensor([[1.0, 5.0, 3.0, 3.0, 2.0, 0.0]])
    kept = top_k_filter(logits, 3)
    assert torch.isfinite(kept).sum() == 3
    assert torch.isfinite(kept[0, [1, 2, 3]]).all()


@pytest.mark.parametrize("scale", [0.1, 1.0, 4.0, 30.0])  # flat to peaked: sets of thousands down to one
def test_top_p_equals_a_full_sort_of_the_vocabulary(scale):
    def by_full_sort(logits, p):
        # the same probabilities, sorted with their indices: a softmax of the sorted logits
        # would sum in another order, and its last bits differ by CPU kind (AVX2, AVX-512)
        probs, order = logits.softmax(dim=-1).sort(dim=-1, descending=True)
        drop_sorted = probs.cumsum(dim=-1) - probs >= p
        drop_sorted[..., 0] = False
        return logits.masked_fill(torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted), float("-inf"))

    torch.manual_seed(0)
    logits = torch.randn(3, 4096) * scale
    for p in (0.05, 0.5, 0.9, 0.95, 0.999):
        kept = torch.isfinite(top_p_filter(logits, p))
        assert torch.equal(kept, torch.isfinite(by_full_sort(logits, p))), (scale, p)


def test_top_p_looks_among_the_likeliest_first_and_sorts_everything_only_when_they_fall_short(monkeypatch):
    """Peaked rows (nuclei of tens of tokens) never sort the vocabulary, and give the
    full sort's set; a flat row, whose nucleus is larger than the candidates, does sort."""
    from gptcli.generation import sampling

    torch.manual_seed(1)
    peaked, flat = torch.randn(16, 4096) * 6.0, torch.randn(2, 4096) * 0.1
    full = {p: torch.isfinite(top_p_filter(peaked, p)) for p in (0.5, 0.9, 0.95)}
    sorts = []
    real = sampling._sorted_descending
    monkeypatch.setattr(sampling, "_sorted_descending", lambda x: sorts.append(x.shape) or real(x))
    monkeypatch.setattr(sampling, "TOP_P_CANDIDATES", 10**6)  # first: every row sorted whole
    whole = {p: torch.isfinite(top_p_filter(peaked, p)) for p in full}
    assert len(sorts) == 3
    monkeypatch.setattr(sampling, "TOP_P_CANDIDATES", 512)
    sorts.clear()
    for p, kept in whole.items():
        assert torch.equal(torch.isfinite(top_p_filter(peaked, p)), kept) and torch.equal(full[p], kept)
    assert sorts == []
    top_p_filter(flat, 0.9)
    assert sorts == [flat.shape]


@pytest.mark.parametrize("min_p", [0.0, 0.05, 0.2, 0.9, 1.0])
@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, None, None), (0.7, 50, None), (1.3, None, 0.9),
                                                       (0.8, 20, 0.95)])
def test_min_p_matches_transformers_min_p_warper(min_p, temperature, top_k, top_p):
    """The same tokens kept and the same distribution as transformers' warpers in its own
    order (temperature, top-k, top-p, min-p), on logits with ties and a long tail."""
    transformers = pytest.importorskip("transformers")
    lp = transformers.generation.logits_process
    torch.manual_seed(0)
    logits = torch.randn(4, 500) * 3
    logits[1, :5] = logits[1].max()  # ties at the top
    cfg = SampleConfig(strategy="sample", temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    ours = process_logits(logits, cfg, None)
    theirs = lp.TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k is not None:
        theirs = lp.TopKLogitsWarper(top_k)(None, theirs)
    if top_p is not None:
        theirs = lp.TopPLogitsWarper(top_p)(None, theirs)
    theirs = lp.MinPLogitsWarper(min_p)(None, theirs)
    assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
    torch.testing.assert_close(ours.softmax(-1), theirs.softmax(-1), rtol=0, atol=1e-6)


def test_min_p_keeps_what_is_likely_enough_against_the_top():
    logits = torch.tensor([[0.5, 0.25, 0.15, 0.1]]).log()
    assert torch.isfinite(min_p_filter(logits, 0.3)).tolist() == [[True, True, True, False]]  # 0.1 < 0.3 * 0.5
    assert torch.isfinite(min_p_filter(logits, 0.5)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(min_p_filter(logits, 1.0)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(min_p_filter(logits, 0.0)).all()
    model = tiny()  # min_p 1 keeps only the most likely token: sampling becomes greedy
    cfg = SampleConfig(strategy="sample", max_new_tokens=20, temperature=1.0, top_p=None, min_p=1.0)
    sampled = run(model, [[5, 6, 7]], cfg, gens=[torch.Generator().manual_seed(3)])[0]
    assert sampled == run(model, [[5, 6, 7]], greedy(20))[0]


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert torch.isfinite(top_p_filter(logits, 0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.79)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.81)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(top_p_filter(logits, 1.0)).all()
    tied = torch.tensor([[2.0, 1.0, 1.0, 0.0]])  # the set needs one of the tied tokens: both stay
    assert torch.isfinite(top_p_filter(tied, 0.6)).tolist() == [[True, True, True, False]]


def test_temperature_zero_is_argmax():
    cfg = SampleConfig.settle({"temperature": 0.0, "max_new_tokens": 5})
    assert cfg.strategy == "greedy"
    model = tiny()
    prompt = [[1, 2, 3]]
    with torch.inference_mode():
        logits, _ = model(torch.tensor(prompt))
    assert run(model, prompt, cfg)[0][0] == int(logits[0, -1].argmax())


def test_repetition_penalty_is_applied():
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    seen = torch.tensor([[True, True, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0]]
    model = tiny()
    plain = run(model, [[5, 6, 7]], greedy(20))[0]
    penalized = run(model, [[5, 6, 7]], greedy(20, repetition_penalty=5.0))[0]
    assert len(set(penalized)) > len(set(plain))


@pytest.mark.parametrize("flags, message", [
    ({"num_beams": 4, "top_k": 5}, "--top-k"),
    ({"greedy": True, "top_p": 0.5}, "--top-p"),
    ({"greedy": True, "temperature": 0.7}, "--temperature"),
    ({"greedy": True, "num_beams": 2}, "--greedy"),
    ({"length_penalty": 2.0}, "beam search"),
    ({"num_beams": 2, "num_return": 3}, "--num-return"),
    ({"top_k": 0}, "--top-k"),
    ({"top_p": 0.0}, "--top-p"),
    ({"top_p": 1.5}, "--top-p"),
    ({"min_p": 1.5}, "--min-p"),
    ({"min_p": -0.1}, "--min-p"),
    ({"greedy": True, "min_p": 0.1}, "--min-p"),
    ({"num_beams": 2, "min_p": 0.1}, "--min-p"),
    ({"temperature": -0.1}, "--temperature"),
    ({"num_beams": 0}, "--beams"),
    ({"max_new_tokens": -1}, "--max-new-tokens"),
])
def test_contradictory_or_bad_flags_are_errors(flags, message):
    given = dict(flags)
    greedy = given.pop("greedy", False)
    with pytest.raises(SettingError) as raised:
        SampleConfig.settle(given, greedy=greedy)
    assert message in raised.value.render(flag)


# -- the fast decoder --------------------------------------------------------------------


@pytest.mark.parametrize("pos_encoding, rows", [("learned", 3), ("sinusoidal", 3), ("learned", 1)])
def test_fast_decoder_equals_forward_and_full_recompute(pos_encoding, rows):
    """Within float32 rounding of the cached forward() and of full recompute, up to the
    last position of the context, and refused past it: one row takes the split
    products, several the packed ones."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=300, block_size=64, n_layer=2, n_head=2, n_embd=32,
                            pos_encoding=pos_encoding)).eval()
    idx = torch.randint(0, 300, (rows, 64))
    decoder, slow = FastDecoder(model), KVCache(model.config, batch_size=rows)
    with torch.no_grad():
        full, _ = model(idx)
        decoder.prefill(idx[:, :10].tolist())
        model(idx[:, :10], kv_cache=slow)
        for t in range(10, 64):
            got = decoder.step(idx[:, t])
            want, _ = model(idx[:, t:t + 1], kv_cache=slow)
            torch.testing.assert_close(got, want[:, 0], rtol=0, atol=1e-5)
            torch.testing.assert_close(got, full[:, t], rtol=0, atol=1e-5)
        assert decoder.full
        with pytest.raises(ValueError, match="block_size"):
            decoder.step(idx[:, 0])


def test_fast_decoder_masks_left_padding():
    """A row left-padded in a batch decodes as it would alone."""
    model = tiny(block=16)
    short, long_ = [5, 6, 7, 8, 9], [1, 2, 3, 4, 5, 6, 7, 8, 9]
    nxt = torch.tensor([11, 12])
    with torch.no_grad():
        batched = FastDecoder(model)
        batched.prefill([short, long_])
        got = batched.step(nxt)
        alone = FastDecoder(model)
        alone.prefill([short])
        want = alone.step(nxt[:1])
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-5)


def test_fast_decoder_reorder_follows_rows():
    model = tiny()
    idx = torch.randint(0, 300, (3, 10))
    decoder = FastDecoder(model)
    history = idx
    with torch.no_grad():
        decoder.prefill(idx.tolist())
        # duplicates, a swap, the identity, then a cycle: each reorder after the first
        # starts from the buffer the one before it swapped in
        for rows in ([2, 2, 0], [1, 0, 2], [0, 1, 2], [1, 2, 0]):
            decoder.reorder(torch.tensor(rows))
            nxt = torch.randint(0, 300, (3,))
            history = torch.cat([history[rows], nxt[:, None]], dim=1)
            got = decoder.step(nxt)
            want, _ = model(history)
            torch.testing.assert_close(got, want[:, -1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("form, rows", [("linear", 1), ("linear", 3), ("split", 1), ("packed", 1), ("packed", 2),
                                        ("packed", 5)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_every_float32_matmul_form_equals_f_linear(form, rows, threads):
    """Whatever the thread count (it sets split's slices; 3 does not divide 96, so it
    falls back to fewer), with and without bias, with the fused GELU."""
    if form == "packed" and not packs_for_cpu():
        pytest.skip("this torch has no oneDNN packing")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(threads)
        w, b = torch.randn(96, 40) * 0.1, torch.randn(96) * 0.1
        x = torch.randn(rows, 40)
        for bias in (b, None):
            for gelu in (False, True):
                want = F.linear(x, w, bias)
                want = F.gelu(want, approximate="tanh") if gelu else want
                got = Matmul(w, bias, form, rows, gelu)(x)
                torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
                acc = torch.randn(rows, 96)
                Matmul(w, bias, form, rows).add_to(updated := acc.clone(), x)
                torch.testing.assert_close(updated, acc + F.linear(x, w, bias), rtol=0, atol=1e-5)
    finally:
        torch.set_num_threads(before)


def test_int8_matmul_is_within_its_quantization_error():
    """Each row's error is bounded by what rounding weights to 1/127 of the row's
    largest entry (and activations to bf16) allows; the residual form adds in place."""
    torch.manual_seed(0)
    w, b, x = torch.randn(64, 256) * 0.02, torch.randn(64) * 0.02, torch.randn(3, 256)
    exact = F.linear(x, w, b)
    mm = Matmul(w, b, "int8", 3)
    assert mm.weight.dtype == torch.int8 and mm.weight.abs().max() == 127
    got = mm(x)
    assert got.dtype == torch.float32
    bound = (w.abs().amax(dim=1) / 127 / 2 * x.abs().sum(dim=1, keepdim=True) + exact.abs() * 2 ** -7) * 1.5
    assert ((got - exact).abs() <= bound + 1e-6).all()
    assert (got - exact).abs().max() > 0  # it is int8: not the exact product
    acc = torch.randn(3, 64)
    mm.add_to(updated := acc.clone(), x)
    torch.testing.assert_close(updated, acc + got, rtol=0, atol=1e-5)
    hidden = Matmul(w, b, "int8", 3, gelu=True, feeds_product=True)(x)  # the MLP's hidden layer stays bf16
    assert hidden.dtype == torch.bfloat16
    torch.testing.assert_close(hidden.float(), F.gelu(exact, approximate="tanh"), rtol=0.02, atol=0.02)


needs_fp16 = pytest.mark.skipif(not has_fp16_kernel(), reason="this torch has no FBGEMM float16 kernel")


@needs_fp16
@pytest.mark.parametrize("rows", [1, 3])
def test_fp16_matmul_is_the_product_with_weights_rounded_to_float16(rows):
    """FBGEMM's product equals F.linear with the weights rounded to float16 (float32
    activations and sums), with and without bias and GELU, and in the residual form;
    it is not float32's product (the rounding is real)."""
    torch.manual_seed(rows)
    w, b, x = torch.randn(96, 40) * 0.1, torch.randn(96) * 0.1, torch.randn(rows, 40)
    rounded = w.half().float()
    for bias in (b, None):
        for gelu in (False, True):
            want = F.linear(x, rounded, bias)
            want = F.gelu(want, approximate="tanh") if gelu else want
            torch.testing.assert_close(Matmul(w, bias, "fp16", rows, gelu)(x), want, rtol=0, atol=1e-5)
        acc = torch.randn(rows, 96)
        Matmul(w, bias, "fp16", rows).add_to(updated := acc.clone(), x)
        torch.testing.assert_close(updated, acc + F.linear(x, rounded, bias), rtol=0, atol=1e-5)
    assert (Matmul(w, b, "fp16", rows)(x) - F.linear(x, w, b)).abs().max() > 1e-6


@needs_fp16
def test_fp16_decoder_equals_the_models_forward_on_float16_representable_weights():
    """With every weight already a float16 value, rounding changes nothing, so each fp16
    step (one row, then 3 beams through reorders) must equal the model's own forward
    within float32 rounding: every matrix of the step goes through the fp16 form."""
    model = tiny()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    idx = torch.randint(0, 300, (1, 10))
    decoder = FastDecoder(model, "float16")
    with torch.no_grad():
        decoder.prefill(idx.tolist())
        decoder.reorder(torch.zeros(3, dtype=torch.long))
        history = idx.expand(3, -1)
        for rows in ([0, 0, 1], [2, 1, 0], [1, 1, 1]):
            decoder.reorder(torch.tensor(rows))
            nxt = torch.randint(0, 300, (3,))
            history = torch.cat([history[rows], nxt[:, None]], dim=1)
            want, _ = model(history)
            torch.testing.assert_close(decoder.step(nxt), want[:, -1], rtol=0, atol=1e-5)
    assert all(m.form == "fp16" for layer in decoder._step_layers[0] for m in layer[1:3] + layer[4:])
    # the prompts' own forward (the decoder's, through the same products): a left-padded
    # batch, each row against the model run on it alone, then one step further
    short, long = [5, 6, 7], [8, 9, 10, 11, 12, 13]
    with torch.no_grad():
        got = decoder.prefill([short, long])
        nxt = torch.tensor([14, 15])
        stepped = decoder.step(nxt)
        for row, prompt in enumerate((short, long)):
            want, _ = model(torch.tensor([prompt + [int(nxt[row])]]))
            torch.testing.assert_close(got[row], want[0, -2], rtol=0, atol=1e-5)
            torch.testing.assert_close(stepped[row], want[0, -1], rtol=0, atol=1e-5)


@needs_fp16
def test_fp16_gives_float32s_greedy_tokens_on_the_shipped_model():
    """The issue's bar for a reduced precision: 100 greedy tokens equal float32's."""
    from gptcli import workspace
    from gptcli.store import checkpoint as ckpt

    model, tok, _ = ckpt.load_run(workspace.SHIPPED)
    cfg = SampleConfig(strategy="greedy", max_new_tokens=100)
    prompt = tok.encode("ROMEO:")
    with torch.inference_mode():
        tokens = {w: [s[0][0] for s in decode_steps(model, [prompt], cfg, -1, None, w)] for w in ("float32", "float16")}
    assert len(tokens["float16"]) == 100 and tokens["float16"] == tokens["float32"]


@functools.cache
def _shipped_bits_per_byte(kind: str) -> float:
    """The shipped model's bits per byte on 1,200 held-out tokens of its text, its weights
    as `kind`, scored through the decoder's step as generation uses it (computed once per
    kind: float32 is the reference of every reduced kind)."""
    import math

    from gptcli import workspace
    from gptcli.store import checkpoint as ckpt

    model, tok, _ = ckpt.load_run(workspace.SHIPPED)
    text = (workspace.SHIPPED.parent / "tinyshakespeare.txt").read_text(encoding="utf-8")
    held_out = text[int(len(text) * 0.9):][:4000]
    ids = tok.encode(held_out)[:1201]
    n_bytes = len(tok.decode(ids).encode("utf-8"))
    with torch.inference_mode():
        decoder, nats = FastDecoder(model, kind), 0.0
        for start in range(0, len(ids) - 1, 200):
            window = ids[start:start + 201]
            logits = decoder.prefill([window[:1]])
            for t in range(1, len(window)):
                nats -= float(logits.log_softmax(-1)[0, window[t]])
                if t < len(window) - 1:
                    logits = decoder.step(torch.tensor([window[t]]))
    return nats / math.log(2) / n_bytes


@pytest.mark.parametrize("weights", ["float16", "int8"])
def test_reduced_weights_score_the_shipped_model_within_0_01_bits_per_byte(weights):
    """The reduced weights' cost in quality, on 1,200 held-out tokens of the shipped model's
    text, scored through the decoder's step as generation uses it (the full held-out
    10% is in docs/benchmarks.md)."""
    if weights == "float16" and not has_fp16_kernel():
        pytest.skip("this torch has no FBGEMM float16 kernel")
    bpb = {kind: _shipped_bits_per_byte(kind) for kind in ("float32", weights)}
    assert 1.5 < bpb["float32"] < 3.0
    assert abs(bpb[weights] - bpb["float32"]) <= 0.01, bpb


@pytest.mark.parametrize("block", [1, 2, 32])
def test_warm_up_runs_a_short_generation_whatever_the_context(block):
    """warm_up decodes a short prompt (and a step where the context has room) for every
    kind of weights and row count, and leaves the matrices prepared for them."""
    model = tiny(block=block)
    for weights in ("float32", "float16", "int8") if has_fp16_kernel() else ("float32", "int8"):
        prepared = Prepared(model, weights)
        for rows in (1, 3):
            FastDecoder(model, weights, prepared).warm_up(rows)
            row_dependent = matmul_form(weights, torch.device("cpu"), rows) in ("split", "packed")
            assert (rows if row_dependent else None) in prepared._by_rows


def test_prepared_matmuls_are_shared_and_follow_in_place_weight_changes():
    model = tiny()
    prepared = Prepared(model)
    first = prepared.layers(2)
    assert FastDecoder(model, prepared=prepared).prepared.layers(2) is first  # a second decoder reuses them
    with torch.no_grad():
        model.h[0].mlp.c_fc.weight.mul_(2.0)  # a change in place (as load_state_dict makes)
        decoder, slow = FastDecoder(model, prepared=prepared), KVCache(model.config, batch_size=2)
        decoder.prefill([[1, 2, 3], [4, 5, 6]])
        model(torch.tensor([[1, 2, 3], [4, 5, 6]]), kv_cache=slow)
        got = decoder.step(torch.tensor([7, 8]))
        want, _ = model(torch.tensor([[7], [8]]), kv_cache=slow)
    assert decoder._step_layers is not first
    torch.testing.assert_close(got, want[:, 0], rtol=0, atol=1e-5)


def test_reduced_weights_are_refused_off_the_cpu_or_without_their_kernel(monkeypatch):
    model = tiny()
    with pytest.raises(ValueError, match="weights must be one of"):
        FastDecoder(model, "bf16")
    monkeypatch.setattr(kernels, "has_fp16_kernel", lambda: False)
    with pytest.raises(ValueError, match="need FBGEMM"):
        FastDecoder(model, "float16")
    if torch.cuda.is_available():
        for weights in ("float16", "int8"):
            with pytest.raises(ValueError, match="CPU only"):
                FastDecoder(model.cuda(), weights)


def _batch_rows(cache: KVCache) -> torch.Tensor:
    """The cache's keys and values in batch order, whatever its slots."""
    return cache.kv if cache.slots is None else cache.kv.index_select(1, cache.slots)


def test_cache_reorder_relabels_and_equals_a_gather_for_every_order():
    """Every order of 4 rows (duplicates, swaps, cycles, identity), after a first reorder
    that already relabelled rows: in batch order the filled positions equal index_select's
    result, positions past them are never touched, and only rows that a second beam
    continues are written (one copy each)."""
    cfg = ModelConfig(vocab_size=10, block_size=8, n_layer=2, n_head=2, n_embd=8)
    for first in ([1, 2, 3, 0], [0, 0, 2, 3]):
        for order in itertools.product(range(4), repeat=4):
            cache = KVCache(cfg, batch_size=4)
            cache.kv.copy_(torch.randn_like(cache.kv))
            cache.advance(5)
            cache.reorder(torch.tensor(first))
            before, buffer = _batch_rows(cache).clone(), cache.kv.clone()
            cache.reorder(torch.tensor(order))
            torch.testing.assert_close(_batch_rows(cache)[..., :5, :],
                                       before[..., :5, :].index_select(1, torch.tensor(order)), rtol=0, atol=0)
            assert torch.equal(cache.kv[..., 5:, :], buffer[..., 5:, :])
            written = sum(not torch.equal(cache.kv[:, r], buffer[:, r]) for r in range(4))
            assert written <= len(order) - len(set(order))
            if cache.slots is not None:
                assert cache.rows_in_slot[cache.slots].tolist() == [0, 1, 2, 3]


def test_relabelled_rows_of_a_padded_batch_keep_their_padding():
    """A left-padded batch whose rows are relabelled and copied: the copy takes the
    padding mask of the row it copies, so each row still equals the model run on its
    own history (a public path: beam search itself never pads)."""
    model = tiny()
    short, long = [5, 6, 7], [8, 9, 10, 11, 12, 13]
    decoder = FastDecoder(model)
    with torch.no_grad():
        decoder.prefill([short, long])
        history = [list(long), list(long)]
        for rows in ([1, 1], [1, 0]):  # a copy of row 1 into row 0's buffer, then a swap
            decoder.reorder(torch.tensor(rows))
            history = [list(history[r]) for r in rows]
            nxt = torch.tensor([20, 21])
            got = decoder.step(nxt)
            for row in range(2):
                history[row].append(int(nxt[row]))
                want, _ = model(torch.tensor([history[row]]))
                torch.testing.assert_close(got[row], want[0, -1], rtol=0, atol=1e-5)


def test_int8_prompts_equal_one_token_then_steps():
    """int8's prompt forward (whole prompts through the int8 products, left-padded) gives
    what prefilling each row's first token and stepping through the rest gives."""
    model = tiny()
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13]]
    with torch.no_grad():
        together = FastDecoder(model, "int8").prefill(prompts)
        for row, prompt in enumerate(prompts):
            alone = FastDecoder(model, "int8")
            logits = alone.prefill([prompt[:1]])
            for t in prompt[1:]:
                logits = alone.step(torch.tensor([t]))
            torch.testing.assert_close(together[row], logits[0], rtol=0, atol=1e-4)


@pytest.mark.parametrize("weights", ["float32", "float16", "int8"])
def test_a_prompt_longer_than_the_context_is_the_same_error_for_every_weight_kind(weights):
    if weights == "float16" and not has_fp16_kernel():
        pytest.skip("this torch has no FBGEMM float16 kernel")
    model = tiny(block=8)
    with pytest.raises(ValueError, match="sequence of 9 tokens exceeds block_size 8"):
        FastDecoder(model, weights).prefill([list(range(9))])


def test_cache_reorder_to_another_batch_size_gathers_in_batch_order():
    cfg = ModelConfig(vocab_size=10, block_size=8, n_layer=2, n_head=2, n_embd=8)
    cache = KVCache(cfg, batch_size=3)
    cache.kv.copy_(torch.randn_like(cache.kv))
    cache.advance(4)
    cache.reorder(torch.tensor([2, 0, 1]))  # relabelled
    before = _batch_rows(cache).clone()
    cache.reorder(torch.tensor([1, 1, 0, 2, 2]))
    assert cache.slots is None and cache.kv.size(1) == 5
    torch.testing.assert_close(cache.kv[..., :4, :], before[..., :4, :].index_select(1, torch.tensor([1, 1, 0, 2, 2])),
                               rtol=0, atol=0)


def test_the_models_forward_follows_a_relabelled_cache_for_any_number_of_tokens():
    """After a reorder that relabels rows (no copies), the one forward runs in the cache's
    buffer order inside and answers in batch order, for 1 new token or several: equal to
    full recompute on the reordered histories."""
    model = tiny()
    idx = torch.randint(0, 300, (3, 4))
    cache = KVCache(model.config, batch_size=3)
    with torch.no_grad():
        model(idx, kv_cache=cache)
        rows = [2, 0, 0]  # a relabelling, and a copy for the second reader of row 0
        cache.reorder(torch.tensor(rows))
        assert cache.slots is not None
        new = torch.randint(0, 300, (3, 3))
        got, _ = model(new, kv_cache=cache)
        want, _ = model(torch.cat([idx[rows], new], dim=1))
    torch.testing.assert_close(got, want[:, -3:], rtol=0, atol=1e-5)


def test_fast_decoder_refuses_training_mode_and_replaced_parameters():
    model = tiny()
    with pytest.raises(ValueError, match="eval mode"):
        FastDecoder(model.train())
    model.eval()
    decoder = FastDecoder(model)
    with torch.no_grad():
        decoder.prefill([[1, 2, 3]])
        model.train()
        with pytest.raises(ValueError, match="training mode"):
            decoder.step(torch.tensor([4]))
        model.eval()
        decoder.step(torch.tensor([4]))
        model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)
        with pytest.raises(ValueError, match="replaced"):
            decoder.step(torch.tensor([5]))


# -- the loops -----------------------------------------------------------------------


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal"])
def test_cached_logits_equal_full_recompute_past_the_window(monkeypatch, pos_encoding):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=300, block_size=32, n_layer=2, n_head=2, n_embd=32,
                            pos_encoding=pos_encoding)).eval()
    seen_logits = []
    real = search.process_logits

    def spy(logits, cfg, seen):
        seen_logits.append(logits.clone())
        return real(logits, cfg, seen)

    monkeypatch.setattr(search, "process_logits", spy)
    prompt = list(range(10, 30))
    tokens = run(model, [prompt], greedy(100))[0]  # 20 + 100 tokens through a 32-token window
    keep = search.window_size(model)
    context, start = prompt[:], 0
    with torch.inference_mode():
        for step, token in enumerate(tokens):
            window = context[start:]
            full, _ = model(torch.tensor([window]))
            torch.testing.assert_close(seen_logits[step][0], full[0, -1], rtol=0, atol=1e-5)
            context.append(token)
            if len(context) - start > model.config.block_size:  # the cache slid: same rule
                start = len(context) - keep
    assert len(tokens) == 100


def test_batched_greedy_equals_unbatched():
    model = tiny()
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8, 9], [42], [7, 7, 7, 100, 200]]
    batched = run(model, prompts, greedy(40))
    for p, out in zip(prompts, batched):
        assert run(model, [p], greedy(40))[0] == out


def test_seeded_sampling_reproduces_and_ignores_batch_mates():
    model = tiny()
    cfg = SampleConfig(strategy="sample", max_new_tokens=30, temperature=1.0, top_p=None)

    def gen(seed):
        return torch.Generator().manual_seed(seed)

    alone = run(model, [[1, 2, 3]], cfg, gens=[gen(7)])[0]
    assert run(model, [[1, 2, 3]], cfg, gens=[gen(7)])[0] == alone
    crowd = run(model, [[9, 9], [1, 2, 3], [5, 6, 7, 8]], cfg, gens=[gen(1), gen(7), gen(3)])
    assert crowd[1] == alone
    assert run(model, [[1, 2, 3]], cfg, gens=[gen(8)])[0] != alone


def test_end_of_text_ends_the_loop():
    model = tiny()
    first = run(model, [[1, 2]], greedy(1))[0][0]
    with torch.inference_mode():
        steps = list(decode_steps(model, [[1, 2]], greedy(50), first))
    assert len(steps) == 1


def test_beam_search_with_one_beam_is_greedy():
    model = tiny()
    with torch.inference_mode():
        hyp = beam_search(model, [3, 1, 4], SampleConfig(strategy="beam", num_beams=1, max_new_tokens=25), -1)
    assert hyp[0].tokens == run(model, [[3, 1, 4]], greedy(25))[0]


def test_beam_search_finds_the_brute_force_best():
    V, L = 6, 3
    model = tiny(vocab=V, seed=3)
    prompt = [1, 2]
    with torch.inference_mode():
        best, best_score = None, -float("inf")
        for seq in itertools.product(range(V), repeat=L):
            logits, _ = model(torch.tensor([prompt + list(seq)]))
            logp = logits[0].log_softmax(-1)
            score = sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(seq))
            if score > best_score:
                best, best_score = list(seq), score
        cfg = SampleConfig(strategy="beam", num_beams=V ** (L - 1), max_new_tokens=L, num_return=3)
        hyps = beam_search(model, prompt, cfg, -1)
    assert hyps[0].tokens == best
    assert hyps[0].logprob == pytest.approx(best_score, abs=1e-4)
    assert hyps[0].score >= hyps[1].score >= hyps[2].score


def test_beam_scores_follow_the_length_penalty():
    model = tiny()
    for lp in (0.5, 1.0, 2.0):
        cfg = SampleConfig(strategy="beam", num_beams=3, max_new_tokens=8, length_penalty=lp, num_return=3)
        with torch.inference_mode():
            hyps = beam_search(model, [5, 6], cfg, -1)
        for h in hyps:
            assert h.score == pytest.approx(h.logprob / len(h.tokens) ** lp, rel=1e-5)


def test_draw_follows_the_distribution_and_never_draws_a_zero():
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3, 0.0])
    n = 4000
    drawn = draw(probs.expand(n, 5), [torch.Generator().manual_seed(i) for i in range(n)])
    freq = torch.bincount(drawn, minlength=5).float() / n
    assert freq[1] == 0 and freq[4] == 0
    torch.testing.assert_close(freq, probs, rtol=0, atol=0.03)  # about 4 standard errors
    again = draw(probs.expand(n, 5), [torch.Generator().manual_seed(i) for i in range(n)])
    assert torch.equal(drawn, again)


@pytest.mark.parametrize("u, expected", [(0.0, 1), (1.0, 2)])  # 1.0: u * total rounded up to total
def test_draw_at_the_ends_of_the_unit_interval_stays_on_possible_tokens(monkeypatch, u, expected):
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.full((1,), u))
    probs = torch.tensor([[0.0, 0.5, 0.5, 0.0]])
    assert draw(probs, [torch.Generator()]).tolist() == [expected]


def test_a_vanishing_temperature_samples_the_argmax_instead_of_overflowing():
    model = tiny()
    cfg = SampleConfig(strategy="sample", max_new_tokens=20, temperature=1e-40, top_p=None)
    assert run(model, [[1, 2, 3]], cfg, gens=[torch.Generator().manual_seed(0)]) == run(model, [[1, 2, 3]], greedy(20))


def test_draw_refuses_non_finite_probabilities():
    with pytest.raises(RunError, match="non-finite"):
        draw(torch.tensor([[0.5, float("nan"), 0.5]]), [torch.Generator()])
