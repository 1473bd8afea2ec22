"""The training loop: schedule, evaluation figures, early stopping and exact resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gptcli import checkpoint as ckpt
from gptcli.architectures import build
from gptcli.config import ModelConfig, TrainConfig
from gptcli.data import Split
from gptcli.device import pick_precision, seed_everything
from gptcli.model import GPT
from gptcli.trainer import Hooks, Trainer, lr_at, param_groups


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
    decay, no_decay = param_groups(model, 0.1)
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) > 0


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


@pytest.mark.parametrize("stop_at, arch", [(3, "gpt"), (4, "gpt"), (9, "gpt"), (5, "lstm"), (5, "gru"), (5, "rnn")])
def test_resumed_losses_equal_an_uninterrupted_run(tmp_path, stop_at, arch):
    straight = Recorder()
    _setup(straight, arch=arch).run()

    first = Recorder(stop_at=stop_at)
    trainer = _setup(first, arch=arch)
    assert trainer.run() == "interrupted"
    ckpt.save_resume(tmp_path, trainer.model, trainer.optimizer, trainer.checkpoint_state())

    torch.manual_seed(12345)  # scramble everything resume must restore
    np.random.seed(5)
    second = Recorder()
    resumed = _setup(second, arch=arch)
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


def test_max_time_fits_the_schedule_then_stops_on_time():
    trainer = _setup(Hooks(), max_steps=None, max_time=1.5, eval_interval=1000, dropout=0.0)
    assert trainer.run() == "max_time"
    assert trainer.state.elapsed >= 1.5
    assert trainer.state.total_steps is not None and trainer.state.total_steps > 11


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
