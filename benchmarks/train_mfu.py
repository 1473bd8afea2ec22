"""Model FLOPs utilisation of gptcli's training step for the `gpt2` (124M) preset on a
CUDA GPU: bf16 autocast, fused AdamW, flash attention through SDPA, torch.compile.

MFU = achieved model FLOPs/s / the GPU's dense bf16 peak (--peak-tflops; 989 for an
H100 SXM, the default). Needs a CUDA GPU; exits with a message otherwise.

    python benchmarks/train_mfu.py --batch-size 16 --steps 30
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from gptcli.config import PRESETS, ModelConfig, TrainConfig
from gptcli.device import pick_precision
from gptcli.model import GPT
from gptcli.optimizers import make_optimizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU")
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("train_mfu.py needs a CUDA GPU; none is available here")
    torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.device("cuda")
    cfg = ModelConfig(vocab_size=50304, **PRESETS["gpt2"]["model"])
    model = GPT(cfg).to(device)
    opt = make_optimizer(model, TrainConfig(lr=6e-4), device)  # fused AdamW, as `gptcli train` builds it
    step_model = model if args.no_compile else torch.compile(model)
    precision = pick_precision("auto", device)
    B, T = args.batch_size, cfg.block_size
    x = torch.randint(0, cfg.vocab_size, (B, T + 1), device=device)

    def step():
        with precision.autocast():
            _, loss = step_model(x[:, :-1], x[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / args.steps
    n_params = model.num_params()
    flops_per_token = 6 * n_params + 12 * cfg.n_layer * T * cfg.n_embd
    tokens_per_s = B * T / dt
    mfu = tokens_per_s * flops_per_token / (args.peak_tflops * 1e12)
    print(f"{torch.cuda.get_device_name()} | {precision.name} | compile {not args.no_compile} | "
          f"{n_params / 1e6:.0f}M params | {dt * 1e3:.0f} ms/step | {tokens_per_s:,.0f} tokens/s | MFU {mfu:.1%}")


if __name__ == "__main__":
    main()
