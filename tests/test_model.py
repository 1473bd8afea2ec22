"""The GPT: causality, the KV cache, positions, tied weights, the fused loss, and that it
can learn."""

from __future__ import annotations

import pytest
import torch

from gptcli import fused_loss
from gptcli.config import ModelConfig
from gptcli.fused_loss import linear_cross_entropy
from gptcli.generation.kv_cache import KVCache
from gptcli.model import GPT, sinusoidal_table


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**dict(vocab_size=300, block_size=64, n_layer=2, n_head=2, n_embd=32), **kw})
    return GPT(cfg.validate()).eval()


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal"])
def test_logits_at_t_ignore_tokens_after_t(pos_encoding):
    model = tiny(pos_encoding=pos_encoding)
    idx = torch.randint(0, 300, (2, 40))
    changed = idx.clone()
    changed[:, 25:] = torch.randint(0, 300, (2, 15))
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    torch.testing.assert_close(a[:, :25], b[:, :25], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 25:], b[:, 25:])


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal"])
def test_kv_cache_logits_equal_full_recompute(pos_encoding):
    model = tiny(pos_encoding=pos_encoding)
    idx = torch.randint(0, 300, (3, 64))
    cache = KVCache(model.config, batch_size=3)
    with torch.no_grad():
        full, _ = model(idx)
        pieces = [model(idx[:, :20], kv_cache=cache)[0]]  # prefill
        pieces += [model(idx[:, t:t + 1], kv_cache=cache)[0] for t in range(20, 50)]  # one token per step
        pieces.append(model(idx[:, 50:], kv_cache=cache)[0])  # a multi-token chunk after a prefix
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-5)
    assert cache.pos == 64


def test_cache_and_context_limits_are_enforced():
    model = tiny(block_size=16)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_lm_head_is_tied_and_counted_once():
    model = tiny()
    assert model.lm_head.weight is model.wte.weight
    assert model.num_params() == sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def test_sinusoidal_positions_are_fixed_and_not_stored():
    model = tiny(pos_encoding="sinusoidal")
    assert not any("pos" in k or "wpe" in k for k in model.state_dict())
    table = sinusoidal_table(10, 8)
    assert table[0, 0] == 0 and table[0, 1] == 1  # sin(0), cos(0)
    assert torch.isclose(table[3, 2], torch.sin(torch.tensor(3 / 10000 ** (2 / 8))))


def test_gpt2_math_choices():
    model = tiny()
    block = model.h[0]
    x = torch.randn(2, 5, 32)
    fc, proj = block.mlp.c_fc, block.mlp.c_proj
    F = torch.nn.functional
    manual = F.linear(F.gelu(F.linear(x, fc.weight, fc.bias), approximate="tanh"), proj.weight, proj.bias)
    torch.testing.assert_close(proj(fc(x)), manual)  # GPT-2's gelu_new, fused into the first product
    assert block.mlp.c_fc.out_features == 4 * 32
    assert model.ln_f.eps == 1e-5
    nobias = tiny(bias=False)
    assert nobias.h[0].attn.c_attn.bias is None and nobias.ln_f.bias is None


@pytest.mark.parametrize("dropout, attn_dropout, attention_random, rest_random", [
    (0.0, 0.5, True, False),  # only the attention weights drop
    (0.5, 0.0, False, True),  # the residual branches drop, attention keeps every weight
    (0.5, None, True, True),  # unset: --dropout everywhere
])
def test_attention_dropout_is_its_own_setting(dropout, attn_dropout, attention_random, rest_random):
    model = tiny(dropout=dropout, attn_dropout=attn_dropout).train()
    idx = torch.randint(0, 300, (2, 5))
    residual = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]  # embeddings and both branches

    def varies() -> bool:
        torch.manual_seed(1)
        first = model.hidden(idx)
        torch.manual_seed(2)
        return not torch.equal(first, model.hidden(idx))

    kept = [m.p for m in residual]
    for m in residual:  # strip the residual dropout to see attention's alone
        m.p = 0.0
    assert varies() == attention_random
    for m, p in zip(residual, kept):
        m.p = p
    model.attn_dropout, kept_attention = 0.0, model.attn_dropout  # and the other way round
    assert varies() == rest_random
    model.attn_dropout = kept_attention
    model.eval()
    assert not varies()  # never when generating


def test_tiny_model_overfits_a_short_text():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=300, block_size=32, n_layer=2, n_head=2, n_embd=64))
    data = torch.randint(0, 300, (1, 33))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        _, loss = model(data[:, :-1], data[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_linear_cross_entropy_equals_the_plain_loss_and_its_gradients(monkeypatch):
    monkeypatch.setattr(fused_loss, "CHUNK_BYTES", 4 * 50 * 7)  # 7 rows a chunk: 45 rows end on a part chunk
    monkeypatch.setattr(fused_loss, "CHUNK_MIN_ROWS", 1)
    torch.manual_seed(0)
    x = torch.randn(45, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    t = torch.randint(0, 50, (45,))
    (0.5 * torch.nn.functional.cross_entropy(x @ w.t(), t)).backward()  # a scaled loss, as grad_accum scales it
    expected = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    loss = linear_cross_entropy(x, w, t)
    (0.5 * loss).backward()
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(x @ w.t(), t), rtol=0, atol=1e-5)
    torch.testing.assert_close(x.grad, expected[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w.grad, expected[1], rtol=1e-4, atol=1e-6)


def test_training_loss_and_every_gradient_equal_the_loss_from_full_logits():
    model = tiny().train()
    idx, targets = torch.randint(0, 300, (2, 3, 40)).unbind(0)
    logits, loss = model(idx, targets)
    assert logits is None  # the fused path: no (B, T, vocab) logits were made
    loss.backward()
    fused = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits, _ = model(idx)
    reference = torch.nn.functional.cross_entropy(logits.view(-1, 300), targets.reshape(-1))
    reference.backward()
    torch.testing.assert_close(loss, reference, rtol=0, atol=1e-5)
    for name, p in model.named_parameters():  # the tied wte/lm_head gradient included
        torch.testing.assert_close(fused[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    with torch.no_grad():  # evaluation still gets logits with its loss
        logits, loss = model(idx, targets)
    assert logits.shape == (3, 40, 300) and loss is not None


def test_the_fused_loss_is_left_to_autocast_where_it_runs():
    model = tiny().train()
    idx, targets = torch.randint(0, 300, (2, 2, 16)).unbind(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(idx, targets)
    assert logits is not None and loss is not None
