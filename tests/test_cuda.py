"""The CUDA path, on a machine with a GPU (skipped without one). benchmarks/gpu_check.sh
runs these with the rest of the suite and the GPU benchmarks, in one call."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from gptcli.architectures import build
from gptcli.config import ModelConfig, SampleConfig, TrainConfig
from gptcli.data import Split
from gptcli.device import pick_precision, seed_everything
from gptcli.generation.search import decode_steps
from gptcli.trainer import Hooks, Trainer

from helpers import REPO, TINY_FLAGS, run_gptcli

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")
SHAPE = ModelConfig(vocab_size=300, block_size=32, n_layer=2, n_head=2, n_embd=64, dropout=0.0)


@pytest.mark.parametrize("arch", ["gpt", "lstm"])
def test_forward_on_cuda_matches_the_cpu(arch):
    torch.manual_seed(0)
    cfg = dataclasses.replace(SHAPE, arch=arch, n_head=2 if arch == "gpt" else 1)
    model = build(cfg).eval()
    x = torch.randint(0, 300, (3, 32))
    with torch.no_grad():
        cpu = model(x)[0]
        gpu = model.to(CUDA)(x.to(CUDA))[0].cpu()
    assert torch.allclose(cpu, gpu, atol=1e-3, rtol=1e-3)


def test_kv_cache_decoding_on_cuda_equals_full_forwards():
    torch.manual_seed(0)
    model = build(SHAPE).to(CUDA).eval()
    prompt = [5, 17, 42, 9]
    steps = list(decode_steps(model, [prompt], SampleConfig(strategy="greedy", max_new_tokens=12), -1))
    fast = [s[0][0] for s in steps]
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(12):
            logits = model(torch.tensor([ids], device=CUDA))[0]
            ids.append(int(logits[0, -1].argmax()))
    assert fast == ids[len(prompt):]


class _Losses(Hooks):
    def __init__(self, stop_at=None):
        self.losses, self.stop_at = {}, stop_at

    def on_log(self, trainer, record):
        self.losses[record["step"]] = record["loss"]
        if record["step"] == self.stop_at:
            trainer.request_stop()


def _trainer(hooks, dtype):
    tokens = np.random.default_rng(0).integers(0, 300, size=6000).astype(np.uint16)
    cfg = TrainConfig(batch_size=4, eval_iters=2, eval_interval=4, log_interval=1, max_steps=12, warmup_steps=2,
                      lr=3e-3, dtype=dtype).validate()
    seed_everything(cfg.seed)
    model = build(dataclasses.replace(SHAPE, dropout=0.1)).to(CUDA)
    return Trainer(model, cfg, Split(tokens[:5000], 5000), Split(tokens[5000:], 1000), np.ones(300, dtype=np.int64),
                   pick_precision(dtype, CUDA), hooks)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_resume_on_cuda_continues_the_same_losses(tmp_path, dtype):
    from gptcli.store import checkpoint as ckpt

    straight = _Losses()
    _trainer(straight, dtype).run()
    first = _trainer(_Losses(stop_at=5), dtype)
    assert first.run() == "interrupted"
    ckpt.save_resume(tmp_path, first.model, first.optimizer, first.checkpoint_state())
    torch.manual_seed(123)
    torch.cuda.manual_seed_all(123)  # resume must restore the CUDA generator (dropout) too
    second = _Losses()
    resumed = _trainer(second, dtype)
    resumed.load_state_dict(ckpt.load_resume(tmp_path, resumed.model, resumed.optimizer))
    resumed.run()
    assert sorted(second.losses) == list(range(6, 13))
    for step, loss in second.losses.items():
        assert loss == pytest.approx(straight.losses[step], abs=1e-4), step
    assert straight.losses[12] < straight.losses[1]


def _cli(tmp_path, *args):
    result = run_gptcli(*args, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("compile_flag", ["--no-compile", "--compile"])
def test_cli_trains_generates_and_evaluates_on_cuda(tmp_path, shakespeare_text, compile_flag):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(shakespeare_text[:50000], encoding="utf-8")
    train = _cli(tmp_path, "train", str(corpus), *TINY_FLAGS, "--device", "cuda", "--max-steps", "30",
                 "--eval-interval", "10", compile_flag, "--out", "run")
    assert "--compile failed" not in train.stderr
    training = json.loads((tmp_path / "run" / "config.json").read_text())["training"]
    assert training["device"] == "cuda" and training["dtype"] in ("bfloat16", "float16")
    on_gpu = json.loads(_cli(tmp_path, "eval", str(corpus), "-c", "run", "--device", "cuda", "--json").stdout)
    on_cpu = json.loads(_cli(tmp_path, "eval", str(corpus), "-c", "run", "--device", "cpu", "--json").stdout)
    assert on_gpu["loss"] == pytest.approx(on_cpu["loss"], abs=1e-3)
    text = _cli(tmp_path, "generate", "-c", "run", "--device", "cuda", "-p", "ROMEO:", "-n", "20", "--seed", "1").stdout
    assert text.startswith("ROMEO:") and len(text) > len("ROMEO:")


def test_torchrun_with_one_process_trains_through_nccl(tmp_path, shakespeare_text):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(shakespeare_text[:50000], encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                             "-m", "gptcli", "train", str(corpus), *TINY_FLAGS, "--device", "cuda", "--max-steps",
                             "20", "--out", "run"], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    training = json.loads((tmp_path / "run" / "config.json").read_text())["training"]
    assert training["world_size"] == 1 and training["steps"] == 20
