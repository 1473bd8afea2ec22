"""gptcli's training step against HF transformers' GPT2LMHeadModel, same shape, batch,
optimizer and data, on CPU, in one process.

1. Throughput: alternating timed bursts of --steps-per-burst steps, medians over
   --bursts; tokens/s, the ratio, and achieved GFLOP/s against a measured fp32 matmul peak.
2. Quality: both models, from the same initial weights, train for --quality-steps on the
   same batches of tinyshakespeare; validation loss of each on the same held-out windows.

    pip install -e ".[dev]" && python benchmarks/train_throughput.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from gptcli.config import ModelConfig, TrainConfig
from gptcli.data import BatchSampler, spread_windows
from gptcli.device import pick_precision
from gptcli.model import GPT
from gptcli.optimizers import make_optimizer, param_groups
from gptcli.store.hf_weights import to_hf_state_dict
from gptcli.tokenizer import BPETokenizer

REPO = Path(__file__).resolve().parents[1]


def matmul_peak(n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    return 2 * n**3 * 10 / (time.perf_counter() - t) / 1e9


def flops_per_token(cfg: ModelConfig, n_params: int) -> float:
    """6 N (forward and backward through the weights) + the attention products."""
    return 6 * n_params + 12 * cfg.n_layer * cfg.block_size * cfg.n_embd


def build(cfg: ModelConfig, dtype: str, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    ours = GPT(cfg)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
                                    n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                                    attn_pdrop=0.0, activation_function="gelu_new"))
    hf.load_state_dict(to_hf_state_dict(ours.state_dict()), strict=False)
    # gptcli's optimizer exactly as `gptcli train` builds it; HF's as a user of it would (torch's default form)
    opt_ours = make_optimizer(ours, TrainConfig(lr=1e-3, beta1=0.9, beta2=0.95, weight_decay=0.1), torch.device("cpu"))
    opt_hf = torch.optim.AdamW(param_groups(hf, 0.1)["adamw"], lr=1e-3, betas=(0.9, 0.95))
    precision = pick_precision(dtype, torch.device("cpu"))

    def step_ours(x, y):
        with precision.autocast():
            _, loss = ours(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), 1.0)
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)
        return loss

    def step_hf(x, y):
        loss = hf(input_ids=x, labels=None).logits
        loss = torch.nn.functional.cross_entropy(loss.view(-1, loss.size(-1)), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt_hf.step()
        opt_hf.zero_grad(set_to_none=True)
        return loss

    return ours, hf, step_ours, step_hf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bursts", type=int, default=5)
    ap.add_argument("--steps-per-burst", type=int, default=5)
    ap.add_argument("--quality-steps", type=int, default=200)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--seed", type=int, default=0, help="quality run: initial weights; batches use seed + 1")
    args = ap.parse_args()
    import transformers

    text = (REPO / "gptcli" / "assets" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    tok = BPETokenizer.train([text[:1_000_000]], 4096)
    ids = np.array(tok.encode(text), dtype=np.uint16)
    split = int(len(ids) * 0.9)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=4, n_head=4, n_embd=256)
    ours, hf, step_ours, step_hf = build(cfg, args.dtype)
    sampler = BatchSampler(ids[:split], cfg.block_size, 16, seed=0)
    batches = [torch.from_numpy(sampler.next()) for _ in range(args.steps_per_burst)]
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}, "
          f"gptcli dtype {pick_precision(args.dtype, torch.device('cpu')).name}")
    peak = matmul_peak()
    times = {"gptcli": [], "HF": []}
    for xy in batches[:2]:  # warm up both
        step_ours(xy[:, :-1], xy[:, 1:]), step_hf(xy[:, :-1], xy[:, 1:])
    for _ in range(args.bursts):
        for name, step in (("gptcli", step_ours), ("HF", step_hf)):
            t = time.perf_counter()
            for xy in batches:
                step(xy[:, :-1], xy[:, 1:])
            times[name].append(time.perf_counter() - t)
    tokens = args.steps_per_burst * 16 * cfg.block_size
    fpt = flops_per_token(cfg, ours.num_params())
    print(f"fp32 matmul peak (2048^3): {peak:.0f} GFLOP/s")
    print(f"{'':<8} {'tokens/s':>10} {'GFLOP/s':>9} {'of peak':>8}")
    rates = {}
    for name, ts in times.items():
        rates[name] = tokens / statistics.median(ts)
        print(f"{name:<8} {rates[name]:>10,.0f} {rates[name] * fpt / 1e9:>9.1f} {rates[name] * fpt / 1e9 / peak:>7.0%}")
    print(f"ratio gptcli / HF: {rates['gptcli'] / rates['HF']:.2f}x")

    # quality: same start, same batches, same number of tokens
    if args.quality_steps == 0:
        return
    ours, hf, step_ours, step_hf = build(cfg, args.dtype, args.seed)
    sampler = BatchSampler(ids[:split], cfg.block_size, 16, seed=args.seed + 1)
    for _ in range(args.quality_steps):
        xy = torch.from_numpy(sampler.next())
        step_ours(xy[:, :-1], xy[:, 1:])
        step_hf(xy[:, :-1], xy[:, 1:])
    val = torch.from_numpy(spread_windows(ids[split:], cfg.block_size, 64))
    with torch.no_grad():
        ours.eval(), hf.eval()
        l_ours = float(ours(val[:, :-1], val[:, 1:])[1])
        logits = hf(input_ids=val[:, :-1]).logits
        l_hf = float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), val[:, 1:].reshape(-1)))
    print(f"validation loss after {args.quality_steps} steps ({args.quality_steps * 16 * cfg.block_size:,} tokens): "
          f"gptcli {l_ours:.4f}, HF {l_hf:.4f}")


if __name__ == "__main__":
    main()
