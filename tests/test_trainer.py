"""The training loop: schedule, evaluation figures, early stopping and exact resume."""

from __future__ import annotations

import functools
import math
import time

import numpy as np
import pytest
import torch

from gptcli.architectures import build
from gptcli.config import ModelConfig, TrainConfig
from gptcli.data import Split
from gptcli.device import pick_precision, seed_everything
from gptcli.model import GPT
from gptcli.optimizers import Optimizers, lr_at, param_groups
from gptcli.store import checkpoint as ckpt
from gptcli.trainer import Hooks, Trainer


class Recorder(Hooks):
    def __init__(self, stop_at=None):
        self.losses, self.evals, self.checkpoints, self.stop_at = {}, [], [], stop_at

    def on_log(self, trainer, record):
        self.losses[record["step"]] = record["loss"]
        if record["step"] == self.stop_at:
            trainer.request_stop()

    def on_eval(self, trainer, record):
        self.evals.append(record)

    def on_checkpoint(self, trainer, is_best, state):
        self.checkpoints.append((trainer.state.step, is_best))


def _setup(hooks, dropout=0.1, arch="gpt", **train_kw):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 100, size=6000).astype(np.uint16)
    lengths = np.ones(300, dtype=np.int64)
    train, val = Split(tokens[:5000], 5000), Split(tokens[5000:], 1000)
    cfg = TrainConfig(**{**dict(batch_size=4, eval_iters=2, eval_interval=4, log_interval=1, max_steps=16,
                                warmup_steps=3, lr=3e-3), **train_kw}).validate()
    seed_everything(cfg.seed)
    model = build(ModelConfig(arch=arch, vocab_size=300, block_size=16, n_layer=2 if arch != "gpt" else 1,
                              n_head=2 if arch == "gpt" else 1, n_embd=32, dropout=dropout))
    return Trainer(model, cfg, train, val, lengths, pick_precision("float32", torch.device("cpu")), hooks)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(lr=1.0, warmup_steps=10)
    lrs = [lr_at(s, cfg, 100) for s in range(101)]
    assert lrs[0] < lrs[5] < lrs[9] <= 1.0
    assert max(lrs) == pytest.approx(1.0, abs=1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[100] == pytest.approx(0.1)


def test_weight_decay_applies_to_matrices_only():
    model = GPT(ModelConfig(vocab_size=300, block_size=16, n_layer=1, n_head=2, n_embd=32))
    groups = param_groups(model, 0.1)
    assert list(groups) == ["adamw"]
    decay, no_decay = groups["adamw"]
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) > 0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("arch", ["gpt", "lstm"])
def test_muon_takes_the_hidden_matrices_and_adamw_the_rest(arch):
    model = build(ModelConfig(arch=arch, vocab_size=300, block_size=16, n_layer=2, n_head=2 if arch == "gpt" else 1,
                              n_embd=32))
    groups = param_groups(model, 0.1, "muon")
    names = {id(p): n for n, p in model.named_parameters()}
    (hidden,) = groups["muon"]
    decay, no_decay = groups["adamw"]
    to_muon = sorted(names[id(p)] for p in hidden["params"])
    if arch == "gpt":
        assert to_muon == sorted(f"h.{i}.{m}.weight" for i in range(2)
                                 for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
        assert sorted(names[id(p)] for p in decay["params"]) == ["wpe.weight", "wte.weight"]  # lm_head is wte
    else:
        assert to_muon and all(n.startswith("rnn.weight_") for n in to_muon)
        assert [names[id(p)] for p in decay["params"]] == ["wte.weight"]
    assert hidden["weight_decay"] == 0.1 and decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 1 for p in no_decay["params"])
    counted = [id(p) for g in (hidden, decay, no_decay) for p in g["params"]]
    assert sorted(counted) == sorted(id(p) for p in model.parameters())  # each tensor in exactly one group


def test_muon_trains_with_adamw_beside_it_at_one_learning_rate():
    trainer = _setup(Recorder(), optimizer="muon", lr=2e-3, weight_decay=0.05)
    opt = trainer.optimizer
    assert isinstance(opt, Optimizers)
    assert [type(o).__name__ for o in opt.parts] == ["AdamW", "Muon"]
    assert opt.parts[1].defaults["adjust_lr_fn"] == "match_rms_adamw"
    before = [p.detach().clone() for p in opt.parts[1].param_groups[0]["params"]]
    trainer.train_step()
    assert all(not torch.equal(b, p) for b, p in zip(before, opt.parts[1].param_groups[0]["params"]))
    assert len({g["lr"] for g in opt.param_groups}) == 1


def _regularization(trainer):  # the dropout rates and weight decays the model and optimizer hold
    model = trainer.model
    rates = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] + [model.attn_dropout]
    return rates, [g["weight_decay"] for g in trainer.optimizer.param_groups]


# 16 steps of 64 tokens over 5,000 training tokens: the run makes 0.2048 passes
@pytest.mark.parametrize("beyond, share", [(0, 1.0), (0.3, 0.0), (0.2048, 0.0), (0.16384, 0.25), (0.1024, 1.0),
                                           (0.05, 1.0)])
def test_dropout_and_weight_decay_grow_with_the_passes_a_run_makes(beyond, share):
    trainer = _setup(Hooks(), optimizer="muon", weight_decay=0.05, dropout=0.1, regularize_beyond=beyond)
    assert trainer.regularization() == pytest.approx(share)
    trainer.train_step()  # sets both for its own step
    rates, decays = _regularization(trainer)
    assert rates == pytest.approx([0.1 * share] * len(rates)) and len(rates) == 4  # 3 nn.Dropout, 1 attention
    assert decays == pytest.approx([0.05 * share, 0.0, 0.05 * share])  # AdamW's matrices, its gains, Muon's


def test_a_time_budget_regularizes_by_the_passes_its_warmup_pace_allows_and_holds_it():
    def share_at(step, elapsed):  # timed from (1, 0.5): the first step took half a second (start-up)
        trainer = _setup(Hooks(), max_steps=None, max_time=10.0, warmup_steps=20, regularize_beyond=0.64, dropout=0.1)
        trainer._pace_from = (1, 0.5)
        trainer.state.step, trainer.state.elapsed = step, elapsed
        return trainer, trainer.regularization()

    assert _setup(Hooks(), max_steps=None, max_time=10.0, regularize_beyond=0.64).regularization() == 0.0  # no pace
    assert share_at(11, 0.9)[1] == 0.0  # still warming up (20 steps or a tenth of the budget)
    assert share_at(5, 2.0)[1] == 0.0  # too few steps timed
    assert share_at(11, 1.2)[1] == 1.0  # 14 steps a second: 137 steps in the budget, 1.7536 passes
    assert share_at(11, 1.5)[1] == pytest.approx(0.92)  # 10 a second: 96 steps, 1.2288 passes
    assert share_at(21, 5.0)[1] == 0.0  # 4.4 a second: 44 steps, 0.5632 passes
    trainer, share = share_at(11, 2.0)  # 6.7 a second: 65 steps, 0.832 passes
    assert share == pytest.approx(0.3)
    trainer.state.step, trainer.state.elapsed = 50, 3.0  # a faster pace later does not move it
    assert trainer.regularization() == pytest.approx(0.3)


def test_cpu_training_uses_fused_adamw_with_the_configured_hyperparameters():
    trainer = _setup(Recorder(), lr=2e-3, beta1=0.8, beta2=0.9, weight_decay=0.05)
    opt = trainer.optimizer
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"] is True
    assert opt.defaults["betas"] == (0.8, 0.9)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]


def test_bits_per_byte_is_nats_over_ln2_over_bytes():
    trainer = _setup(Hooks())
    m = trainer.evaluate()
    # every token stands for one byte here, so bits per byte is the loss in bits
    assert m["val_bpb"] == pytest.approx(m["val_loss"] / math.log(2), rel=1e-9)
    trainer.byte_lengths = trainer.byte_lengths * 2
    assert trainer.evaluate()["val_bpb"] == pytest.approx(m["val_loss"] / math.log(2) / 2, rel=1e-9)


def test_run_stops_at_max_steps_and_checkpoints_at_evals():
    rec = Recorder()
    reason = _setup(rec).run()
    assert reason == "max_steps"
    assert [s for s, _ in rec.checkpoints] == [4, 8, 12, 16]
    assert sorted(rec.losses) == list(range(1, 17))
    assert rec.losses[16] < rec.losses[1]


def test_patience_stops_early():
    rec = Recorder()
    trainer = _setup(rec, max_steps=400, lr=1e-9, warmup_steps=0, patience=2, dropout=0.0)
    assert trainer.run() == "early_stop"
    assert trainer.state.evals_since_best == 2 and trainer.state.step < 400


def test_nan_loss_stops_with_a_clear_error():
    from gptcli.errors import RunError

    rec = Recorder()
    trainer = _setup(rec)
    with torch.no_grad():
        trainer.model.ln_f.weight.fill_(float("nan"))
    with pytest.raises(RunError, match="loss became nan at step 1"):
        trainer.run()
    assert rec.checkpoints == []


@functools.cache
def _straight_run(arch: str, optimizer: str, after: float) -> Recorder:
    """The uninterrupted run the resumed ones are held to: _setup seeds everything, so the
    cases that share a model and optimizer (and stop at different steps) share it."""
    straight = Recorder()
    _setup(straight, arch=arch, optimizer=optimizer, regularize_beyond=after).run()
    return straight


@pytest.mark.parametrize("stop_at, arch, optimizer, after", [
    (3, "gpt", "adamw", 0), (4, "gpt", "adamw", 0), (9, "gpt", "adamw", 0), (5, "lstm", "adamw", 0),
    (5, "gru", "adamw", 0), (5, "rnn", "adamw", 0), (3, "gpt", "muon", 0), (9, "gpt", "muon", 0),
    (5, "lstm", "muon", 0),
    (5, "gpt", "muon", 0.16384), (5, "lstm", "adamw", 0.16384)])  # a quarter of the dropout and weight decay
def test_resumed_losses_equal_an_uninterrupted_run(tmp_path, stop_at, arch, optimizer, after):
    straight = _straight_run(arch, optimizer, after)

    first = Recorder(stop_at=stop_at)
    trainer = _setup(first, arch=arch, optimizer=optimizer, regularize_beyond=after)
    assert trainer.run() == "interrupted"
    ckpt.save_resume(tmp_path, trainer.model, trainer.optimizer, trainer.checkpoint_state())

    torch.manual_seed(12345)  # scramble everything resume must restore
    np.random.seed(5)
    second = Recorder()
    resumed = _setup(second, arch=arch, optimizer=optimizer, regularize_beyond=after)
    state = ckpt.load_resume(tmp_path, resumed.model, resumed.optimizer)
    resumed.load_state_dict(state)  # the sampler and the random-number generators too
    assert resumed.run() == "max_steps"

    assert sorted(second.losses) == list(range(stop_at + 1, 17))
    for step, loss in second.losses.items():
        assert loss == pytest.approx(straight.losses[step], abs=1e-6), step


def test_grad_accumulation_matches_a_bigger_batch():
    a = _setup(Hooks(), batch_size=8, grad_accum=1, dropout=0.0)
    b = _setup(Hooks(), batch_size=4, grad_accum=2, dropout=0.0)
    batch = torch.from_numpy(a.sampler.next())
    halves = iter([batch[:4].numpy(), batch[4:].numpy()])
    a.sampler.next = lambda: batch.numpy()
    b.sampler.next = lambda: next(halves)
    la, lb = a.train_step().item(), b.train_step().item()
    assert la == pytest.approx(lb, abs=1e-5)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-6)


def test_wsd_holds_the_peak_then_decays_linearly_over_the_last_fifth():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, schedule="wsd")
    lrs = [lr_at(s, cfg, 110) for s in range(111)]
    assert lrs[9] < 0.99 and all(lr == pytest.approx(1.0) for lr in lrs[10:91])  # decay starts at 80% of the decay
    assert lrs[91] < lrs[90]
    assert lrs[100] == pytest.approx(0.1 + 0.9 * 0.5) and lrs[110] == pytest.approx(0.1)
    timed = TrainConfig(lr=1.0, warmup_steps=0, schedule="wsd", max_time=10.0)
    assert lr_at(50, timed, None, 7.9) == pytest.approx(1.0) and lr_at(60, timed, None, 10.0) == pytest.approx(0.1)


def test_time_schedule_follows_the_elapsed_fraction_of_the_budget():
    cfg = TrainConfig(lr=1.0, warmup_steps=1000, max_time=100.0)  # more warmup steps than the run will take
    assert lr_at(0, cfg, None, 0.0) == pytest.approx(1 / 1001)
    assert lr_at(5, cfg, None, 5.0) == pytest.approx(0.5)  # warmup ends by a tenth of the time
    assert lr_at(50, cfg, None, 50.0) == pytest.approx(0.1 + 0.9 * 0.5)  # half the budget: half way down
    assert lr_at(99, cfg, None, 100.0) == pytest.approx(0.1)  # the floor as the time runs out
    both = TrainConfig(lr=1.0, warmup_steps=0, max_time=100.0)
    assert lr_at(50, both, 100, 10.0) == lr_at(50, both, 100, 0.0) > lr_at(50, both, 100, 80.0)  # the further one


def test_max_time_ends_within_the_budget_with_the_schedule_at_its_floor_even_when_the_pace_changes():
    rec = Recorder()
    seen = []
    trainer = _setup(rec, max_steps=None, max_time=3.0, eval_interval=40, log_interval=1, dropout=0.0,
                     warmup_steps=5)
    real_step = trainer.train_step

    def step():  # after step 15 another process takes the CPU: each step takes 30 ms longer
        loss = real_step()
        if trainer.state.step > 15:
            time.sleep(0.03)
        seen.append((trainer.state.elapsed, trainer.optimizer.param_groups[0]["lr"]))
        return loss

    trainer.train_step = step
    # one thread: the pace this test sets is its own sleep, not OpenMP's threads spinning
    # for a sibling that a busy machine descheduled (steps of this size gain nothing from two)
    threads, t0 = torch.get_num_threads(), time.perf_counter()
    torch.set_num_threads(1)
    try:
        assert trainer.run() == "max_time"
    finally:
        torch.set_num_threads(threads)
    wall = time.perf_counter() - t0
    assert 3.0 * 0.97 <= trainer.state.elapsed <= 3.0 * 1.03, trainer.state.elapsed
    assert wall <= 3.0 * 1.03 + 0.2, wall  # evaluations and checkpoints included
    lrs = [lr for _, lr in seen]
    floor, peak = trainer.cfg.min_lr_value, trainer.cfg.lr
    assert max(lrs) == pytest.approx(peak, rel=0.02)
    assert lrs[-1] - floor <= 0.02 * (peak - floor), (lrs[-1], floor)  # decayed to the floor at the end...
    half = next(lr for elapsed, lr in seen if elapsed >= 1.5)
    assert half == pytest.approx(floor + 0.5 * (peak - floor), rel=0.1)  # ...and not before


def test_epochs_set_the_step_count():
    trainer = _setup(Hooks(), max_steps=None, epochs=0.5, eval_interval=1000, dropout=0.0)
    # 5000 training tokens, 4 x 16 tokens a step: half an epoch is 40 steps
    assert trainer.planned_steps() == 40
    assert trainer.run() == "epochs" and trainer.state.step == 40


def test_compile_failure_falls_back_to_eager(monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    warnings = []
    trainer = _setup(Hooks())
    trainer.try_compile(warnings.append)
    assert trainer._step_model is trainer.model
    assert warnings and "no compiler here" in warnings[0]
    assert trainer.run() == "max_steps"
