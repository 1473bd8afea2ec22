"""Where and in what precision tensors live: device choice, autocast, seeding, RNG state.

Owns the rules `--device auto` and `--dtype auto` follow, and the capture/restore of every
random number generator a run touches (so resume is exact). Knows nothing of models or
files.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import random
from dataclasses import dataclass

import numpy as np
import torch

from gptcli.errors import UsageError, first_line

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str = "auto") -> torch.device:
    """auto picks cuda, then mps, then cpu; an explicit choice must be available."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name == "cuda" and not cuda:
        raise UsageError("--device cuda was asked for, but no CUDA GPU is available (use --device cpu)")
    if name == "mps" and not mps:
        raise UsageError("--device mps was asked for, but MPS is not available (use --device cpu)")
    if name not in ("cpu", "cuda", "mps"):
        raise UsageError(f"unknown device {name!r}: use auto, cpu, cuda or mps")
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """bf16 matmuls beat fp32 only on CPUs with native bf16 instructions (AVX512-BF16 or
    AMX). Without them oneDNN emulates bf16, slower than fp32 (docs/benchmarks.md,
    "Precision")."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


@dataclass(frozen=True)
class Precision:
    """How the training step computes: parameters stay fp32, matmuls may autocast."""

    device: torch.device
    amp_dtype: torch.dtype | None  # None: plain float32
    name: str  # what config.json records: float32 | bfloat16 | float16

    @property
    def needs_grad_scaler(self) -> bool:
        return self.amp_dtype == torch.float16

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)


def pick_precision(name: str, device: torch.device) -> Precision:
    """auto: bf16 on CUDA when supported (else fp16 with a grad scaler); on CPU bf16 when the
    CPU runs it fast; fp32 otherwise."""
    if name == "auto":
        if device.type == "cuda":
            name = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        elif device.type == "cpu" and cpu_has_fast_bf16():
            name = "bfloat16"
        else:
            name = "float32"
    if name not in _DTYPES:
        raise UsageError(f"unknown dtype {name!r}: use auto, float32, bfloat16 or float16")
    if name == "float16" and device.type == "cpu":
        raise UsageError("--dtype float16 is not supported on CPU: use bfloat16 or float32")
    return Precision(device, None if name == "float32" else _DTYPES[name], name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state() -> dict:
    """Every RNG a run draws from, as JSON-able values (no pickle)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)  # MT19937: key is a uint32 array
    np_state = {**np_state, "state": {"key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"])}}
    state = {
        "python": [version, list(internal), gauss],
        "numpy": np_state,
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    """Restore what rng_state saved; a state that does not fit is a UsageError (a saved
    file someone edited or damaged)."""
    try:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        np_state = state["numpy"]
        np.random.set_state({**np_state, "state": {"key": np.array(np_state["state"]["key"], dtype=np.uint32),
                                                   "pos": np_state["state"]["pos"]}})
        torch.set_rng_state(_unb64(state["torch"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])
    except (TypeError, ValueError, KeyError, OverflowError, RuntimeError, binascii.Error) as e:
        raise UsageError(f"the saved random-number state is unreadable ({first_line(e)})") from None
