"""Where and in what precision tensors live: device choice, autocast, seeding, RNG state.

Owns the rules `--device auto` and `--dtype auto` follow, and the capture/restore of every
random number generator a run touches (so resume is exact). Knows nothing of models or
files.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import os
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


# oneDNN's ISA names, lowest first: ONEDNN_MAX_CPU_ISA caps what it may use (and so
# what is native for gptcli's purposes); its bf16 dot products start at avx512_core_bf16
_ONEDNN_ISAS = ("sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2", "avx512_core", "avx512_core_vnni",
                "avx512_core_bf16", "avx10_1_512", "avx512_core_fp16", "avx10_1_512_amx", "avx512_core_amx",
                "avx10_1_512_amx_fp16", "avx512_core_amx_fp16", "all")


@dataclass(frozen=True)
class CpuCaps:
    """What this CPU runs natively, as far as the kernels gptcli calls can use it. An
    emulated path is many times slower than float32 (bf16 matmuls without bf16
    instructions: about 50x, docs/benchmarks.md, "CPU kinds"), so each choice that
    depends on the CPU asks this, never the flags directly."""

    avx2: bool
    avx512: bool  # AVX-512 F/BW, and torch's own kernels may use it
    bf16: bool  # native bf16 dot products (AVX512-BF16, AMX, Arm BF16) that oneDNN may use
    vnni: bool  # int8 dot products (AVX512-VNNI, AVX-VNNI)
    fp16_kernel: bool  # FBGEMM's float16-weight product is in this torch (x86 with AVX2)

    def describe(self) -> str:
        """One line for `gptcli info` and a run's first line: "AVX-512, bf16 native, ..."."""
        parts = ["AVX-512" if self.avx512 else "AVX2" if self.avx2 else "no AVX2",
                 "bf16 native" if self.bf16 else "bf16 emulated, so float32"]
        if self.vnni:
            parts.append("VNNI")
        if self.fp16_kernel:
            parts.append("FBGEMM fp16")
        return ", ".join(parts)


def _cpu_flags() -> set[str]:
    """The CPU's feature flags (x86 "flags", Arm "Features"), from /proc/cpuinfo; empty
    where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _onednn_allows(isa: str) -> bool:
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")).strip().lower()
    if cap not in _ONEDNN_ISAS:
        return True
    return _ONEDNN_ISAS.index(cap) >= _ONEDNN_ISAS.index(isa)


def probe_cpu(flags: set[str] | None = None, aten_capability: str | None = None) -> CpuCaps:
    """The capabilities from the CPU's flags, limited by what the libraries were told to
    use (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY): a CPU forced down to AVX2 is treated
    as one. The arguments are for tests; by default they are read from the machine."""
    flags = _cpu_flags() if flags is None else flags
    capability = (os.environ.get("ATEN_CPU_CAPABILITY", "") if aten_capability is None else aten_capability).lower()
    avx512 = {"avx512f", "avx512bw"} <= flags and capability not in ("avx2", "default") and \
        _onednn_allows("avx512_core")
    bf16 = (bool(flags & {"avx512_bf16", "amx_bf16"}) and avx512 and _onednn_allows("avx512_core_bf16")) or \
        ("bf16" in flags and "asimd" in flags)  # Arm: BF16 with Advanced SIMD
    vnni = (("avx512_vnni" in flags and avx512) or "avx_vnni" in flags) and _onednn_allows("avx2_vnni")
    fp16 = "avx2" in flags and hasattr(torch, "fbgemm_linear_fp16_weight_fp32_activation") and \
        "fbgemm" in torch.backends.quantized.supported_engines
    return CpuCaps(avx2="avx2" in flags, avx512=avx512, bf16=bf16, vnni=vnni, fp16_kernel=fp16)


@functools.cache
def cpu_caps() -> CpuCaps:
    """This machine's CpuCaps, probed once per process."""
    return probe_cpu()


def fast_matmul_dtype(device: torch.device) -> torch.dtype:
    """The narrowest dtype a matrix product runs natively in on `device`: bf16 on a GPU
    that has it and on a CPU with bf16 instructions, float32 elsewhere (Muon's
    orthogonalisation: bf16 where it is native, else float32, which is then ~50x faster)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu":
        return torch.bfloat16 if cpu_caps().bf16 else torch.float32
    return torch.float32


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
        if fast_matmul_dtype(device) == torch.bfloat16:
            name = "bfloat16"
        else:
            name = "float16" if device.type == "cuda" else "float32"
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
