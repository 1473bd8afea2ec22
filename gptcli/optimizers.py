"""What updates the weights, and how fast: the parameter groups (which tensors decay,
which go to Muon), AdamW and Muon behind one optimizer object, and the learning-rate
schedule (warmup, then cosine decay to the floor at the end of the run, by steps or by
the time budget). Knows nothing of data or files; device.py says which dtype Muon's
orthogonalisation runs in.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from gptcli.config import TrainConfig
from gptcli.device import fast_matmul_dtype

WSD_DECAY = 0.2  # the share of the run --schedule wsd spends decaying


def param_groups(model: nn.Module, weight_decay: float, optimizer: str = "adamw") -> dict[str, list[dict]]:
    """The parameter groups of each optimizer used, by name.

    adamw: AdamW for everything; matrices (linear and embedding weights) decay, biases
    and LayerNorm gains never do.
    muon: Muon for the hidden matrices (every 2-D weight that is not an embedding: the
    attention and MLP projections, or a recurrent model's cell weights), with decay;
    AdamW, as above, for the token and position embeddings (the lm_head is tied to the
    token embedding), the biases and the gains, as the Muon papers do.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    if optimizer == "muon":
        hidden = [p for p in params if p.dim() == 2 and id(p) not in embedding_ids]
        hidden_ids = {id(p) for p in hidden}
        params = [p for p in params if id(p) not in hidden_ids]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = {"adamw": [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]}
    if optimizer == "muon":
        groups["muon"] = [{"params": hidden, "weight_decay": weight_decay}]
    return groups


class Optimizers:
    """Several torch optimizers stepped as one. The trainer sets every group's lr,
    steps and zeroes them together; the state dict numbers the parameters across all
    of them in order, the form one torch optimizer gives, so checkpoints store it the
    same way (safetensors "<index>.<slot>" plus JSON groups)."""

    def __init__(self, parts: list[torch.optim.Optimizer]):
        self.parts = parts

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.parts for g in o.param_groups]

    def step(self) -> None:
        for o in self.parts:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.parts:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        state, groups, offset = {}, [], 0
        for o in self.parts:
            d = o.state_dict()
            state.update({i + offset: slots for i, slots in d["state"].items()})
            groups += [{**g, "params": [i + offset for i in g["params"]]} for g in d["param_groups"]]
            offset += sum(len(g["params"]) for g in d["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, d: dict) -> None:
        groups, offset = list(d["param_groups"]), 0
        if len(groups) != len(self.param_groups):
            raise ValueError(f"the state has {len(groups)} parameter groups, these optimizers {len(self.param_groups)}")
        for o in self.parts:
            mine, groups = groups[:len(o.param_groups)], groups[len(o.param_groups):]
            count = sum(len(g["params"]) for g in mine)
            o.load_state_dict({
                "state": {i - offset: slots for i, slots in d["state"].items() if offset <= i < offset + count},
                "param_groups": [{**g, "params": [i - offset for i in g["params"]]} for g in mine]})
            offset += count


class Muon(torch.optim.Muon):
    """torch's Muon, with the Newton-Schulz orthogonalisation in a dtype of the caller's
    choosing. torch's runs it in bf16, which a CPU without bf16 instructions emulates
    about 50x slower than float32: there Muon trained at an eighth of AdamW's speed
    (docs/benchmarks.md, "CPU kinds"). In bf16 this step is torch's, bit for bit (a test
    holds it to that); in float32 it is the same iteration, rounded less. The state is
    torch's ("momentum_buffer"), so checkpoints are the same either way."""

    def __init__(self, params, ns_dtype: torch.dtype = torch.bfloat16, **kwargs):
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("gptcli's Muon takes no closure")
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad)
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                update = orthogonalise(update, group["ns_coefficients"], group["ns_steps"], group["eps"],
                                       self.ns_dtype)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-_muon_lr(group["lr"], group["adjust_lr_fn"], p.shape))
        return None


def orthogonalise(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration towards the nearest semi-orthogonal matrix,
    computed in `dtype`: X <- aX + (bA + cA^2)X with A = XX^T, on the wide side of g.

    In bf16 it is torch.optim.Muon's loop. In float32, a matrix at least 1.5x as wide as
    it is tall iterates on its small Gram matrix instead: every X_k is Q_k X_0 for a
    polynomial Q_k in A_0, so the loop carries Q and A (m x m) and multiplies by the wide
    X once at the end. Same polynomial, a third fewer flops for GPT's 3:1 and 4:1
    matrices, as accurate as the direct loop in float32 (tests; docs/benchmarks.md,
    "CPU kinds"). bf16 keeps torch's loop, so that the step stays torch's bit for bit."""
    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.size(0) > g.size(1)
    if tall:  # iterate on the wide side: the Gram matrix is the smaller one
        x = x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm at most 1
    if dtype == torch.bfloat16 or 2 * x.size(1) < 3 * x.size(0):
        for _ in range(steps):
            gram = x @ x.T
            x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
        return x.T if tall else x
    gram, q = x @ x.T, None
    for k in range(steps):
        p = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # aI + bA + cA^2, the step's polynomial
        p.diagonal().add_(a)
        q = p if q is None else p @ q
        if k < steps - 1:
            gram = p @ gram @ p  # X_{k+1} X_{k+1}^T
    x = q @ x
    return x.T if tall else x


def _muon_lr(lr: float, adjust: str | None, shape: torch.Size) -> float:
    """torch's per-matrix scaling of Muon's rate: "match_rms_adamw" sizes its updates
    like AdamW's (Moonshot's Muon paper), "original" is Keller Jordan's."""
    rows, cols = shape[:2]
    if adjust == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    if adjust in (None, "original"):
        return lr * math.sqrt(max(1, rows / cols))
    return lr


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer | Optimizers:
    """AdamW as one fused kernel per step on CUDA and CPU (several times faster than the
    default multi-tensor form on CPU: docs/benchmarks.md), the multi-tensor form elsewhere;
    with --optimizer muon, Muon beside it for the hidden matrices, orthogonalising in the
    narrowest dtype the device multiplies natively (device.fast_matmul_dtype). Muon's updates
    are scaled to AdamW's size (adjust_lr_fn="match_rms_adamw", as Moonshot's Muon
    paper does), so one --lr and --weight-decay serve both."""
    groups = param_groups(model, cfg.weight_decay, cfg.optimizer)
    adamw = torch.optim.AdamW(groups["adamw"], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                              fused=True if device.type in ("cuda", "cpu") else None)
    if cfg.optimizer == "adamw":
        return adamw
    muon = Muon(groups["muon"], ns_dtype=fast_matmul_dtype(device), lr=cfg.lr, weight_decay=cfg.weight_decay,
                adjust_lr_fn="match_rms_adamw")
    return Optimizers([adamw, muon])


def lr_at(step: int, cfg: TrainConfig, total_steps: int | None, elapsed: float = 0.0) -> float:
    """Linear warmup to cfg.lr over cfg.warmup_steps, then cosine decay to the floor when
    the run ends (or, --schedule wsd, the peak rate until the last fifth of the run and
    a linear decay to the floor in it). The end is total_steps, or with --max-time the end of the budget,
    followed through the elapsed time itself: a run that slows down or speeds up still
    reaches the floor as its time runs out, never before (with both, whichever comes
    first). Warmup takes at most a tenth of the steps, or of the time."""
    warmup = cfg.warmup_steps if total_steps is None else min(cfg.warmup_steps, total_steps // 10)
    ramp = (step + 1) / (warmup + 1) if step < warmup else 1.0
    progress = None  # of the decay: 0 at its start, 1 at the end of the run
    if total_steps is not None:
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
    if cfg.max_time is not None:
        spent = min(elapsed / cfg.max_time, 1.0)
        ramp = max(ramp, min(10 * spent, 1.0))
        progress = spent if progress is None else max(progress, spent)
    if ramp < 1.0:
        return cfg.lr * ramp
    if progress is None:
        return cfg.lr
    progress = max(progress, 0.0)
    if cfg.schedule == "wsd":  # warmup-stable-decay: the peak rate, then down to the floor in the last fifth
        remaining = min((1.0 - progress) / WSD_DECAY, 1.0)
    else:
        remaining = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_value + remaining * (cfg.lr - cfg.min_lr_value)
