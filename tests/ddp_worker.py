"""Run by tests/test_distributed.py under torchrun (one process per rank), never by pytest.

    ddp_worker.py step OUT ACCUM       one DDP optimizer step of a tiny model; rank 0 saves
                                       the parameters to OUT (safetensors)
    ddp_worker.py fail STEP ARGS...    `gptcli ARGS...`, where rank 1 raises at step STEP
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

from gptcli import distributed
from gptcli.architectures import build
from gptcli.config import ModelConfig, TrainConfig
from gptcli.data import Split
from gptcli.device import pick_precision, seed_everything
from gptcli.trainer import Trainer

MODEL = ModelConfig(vocab_size=300, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)


def tiny_trainer(dist: distributed.Dist, grad_accum: int) -> Trainer:
    """The same tiny model and data on every rank and in the test's single process."""
    tokens = np.random.default_rng(0).integers(0, 300, size=6000).astype(np.uint16)
    cfg = TrainConfig(batch_size=4, grad_accum=grad_accum, warmup_steps=0, lr=3e-3, max_steps=1,
                      eval_iters=1).validate()
    seed_everything(cfg.seed)
    model = build(MODEL)
    return Trainer(model, cfg, Split(tokens[:5000], 5000), Split(tokens[5000:], 1000), np.ones(300, dtype=np.int64),
                   pick_precision("float32", torch.device("cpu")), None, dist)


def one_step(out: str, grad_accum: int) -> None:
    dist = distributed.from_env()
    distributed.start(dist)
    trainer = tiny_trainer(dist, grad_accum)
    trainer.start_data_parallel()
    trainer.train_step()
    if dist.main:
        save_file({k: v.detach().clone() for k, v in trainer.model.named_parameters()}, out)
    distributed.stop(finished=True)


def fail_at(step: int, args: list[str]) -> None:
    real = Trainer.train_step

    def train_step(self):
        if self.dist.rank == 1 and self.state.step + 1 == step:
            raise RuntimeError(f"injected failure on rank 1 at step {step}")
        return real(self)

    Trainer.train_step = train_step
    sys.argv = ["gptcli", *args]
    from gptcli.cli.app import main

    main()


if __name__ == "__main__":
    os.environ.setdefault("GPTCLI_DIST_TIMEOUT", "120")
    if sys.argv[1] == "step":
        one_step(sys.argv[2], int(sys.argv[3]))
    else:
        fail_at(int(sys.argv[2]), sys.argv[3:])
