"""The weight matrices of generation in the form the device multiplies fastest: one
`Matmul` per linear layer (split across cores for one row, pre-packed for several,
float16 or int8 weight-only), which form a device and row count get, and `Prepared`, a
model's Matmuls per row count, which a generation engine owns. Know nothing of caches,
sampling or text.
"""

from __future__ import annotations

import threading
import warnings

import torch
import torch.nn.functional as F

from gptcli.device import cpu_caps

WEIGHTS = ("float32", "float16", "int8")  # how generation holds the weight matrices
REDUCED = ("float16", "int8")  # the CPU-only kinds, for GPT models


def has_fp16_kernel() -> bool:
    """Whether this torch has FBGEMM's float16-weight product and the CPU runs it (x86
    with AVX2): the CPU probe's answer."""
    return cpu_caps().fp16_kernel


def packs_for_cpu() -> bool:
    """Whether this torch can pre-pack float32 weights for oneDNN (x86 and Arm CPU builds)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


class Matmul:
    """y = x @ weight.T + bias, optionally followed by GPT-2's tanh GELU, with the weight
    held in the form that multiplies fastest (docs/benchmarks.md, "Generation kernels"):

    - "linear": the model's own tensor and F.linear; the reference, used off the CPU.
    - "split": one row at a time on the CPU. The output features are cut into one slice
      per thread and multiplied as a batch (baddbmm): the BLAS call F.linear makes for a
      single row runs on one core, and these products are bound by how fast the
      weights are read, so the batch reads them on every core.
    - "packed": several rows at a time (beams, batches) on the CPU: float32 pre-packed
      once in oneDNN's blocked layout for that many rows, with the GELU fused.
    - "fp16": weight-only float16, multiplied by float32 activations with float32 sums
      (FBGEMM's kernel, one core, any number of rows): half of float32's bytes, with
      weights rounded to 11 significant bits. Opt-in (`--dtype float16`).
    - "int8": weight-only int8, one scale per output row (symmetric, absmax), multiplied
      by bfloat16 activations through torch's int8-weight kernel: a quarter of float32's
      bytes per token. Opt-in (`--dtype int8`); its cost in quality is measured.

    The float32 forms equal "linear" within float32 rounding (tests: 1e-5 on logits).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, form: str, rows: int, gelu: bool = False,
                 feeds_product: bool = False):
        self.form, self.gelu, self.bias = form, gelu, bias
        weight = weight.detach()
        self.in_features = weight.size(1)
        if form == "packed":  # oneDNN picks the blocking for this many rows
            self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
        elif form == "split":  # (parts, in, out / parts): slices of the output features, transposed
            out_features, in_features = weight.shape
            parts = next(p for p in range(torch.get_num_threads(), 0, -1) if out_features % p == 0)
            self.weight = weight.t().reshape(in_features, parts, out_features // parts).permute(1, 0, 2).contiguous()
            if bias is not None:
                self.bias = bias.detach().view(parts, 1, out_features // parts)
        elif form == "fp16":  # an opaque handle to FBGEMM's packed copy, which it owns
            self.bias = bias.detach().float() if bias is not None else weight.new_zeros(weight.size(0))
            # torch marks both FBGEMM calls deprecated and warns on the first of each in a
            # process: make both here, silenced, so a user never sees it
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"fbgemm_\w+ is deprecated")
                self.weight = torch.fbgemm_pack_gemm_matrix_fp16(weight.float())
                torch.fbgemm_linear_fp16_weight_fp32_activation(weight.new_zeros(1, weight.size(1)), self.weight,
                                                                self.bias)
        elif form == "int8":
            # bf16 scales, since the kernel takes them in bf16: round them first, then
            # quantize against the rounded value, so the scale itself adds no error
            scale = (weight.abs().amax(dim=1).clamp(min=1e-12) / 127).bfloat16()
            self.weight = (weight / scale.float()[:, None]).round().clamp(-127, 127).to(torch.int8).contiguous()
            self.scale = scale
            # the MLP's hidden layer only feeds the next product: it stays in bf16 (one
            # conversion fewer per step); attention and the residual stream get float32
            # (CPU attention runs slower in bf16: docs/benchmarks.md)
            self.bf16_out = feeds_product and bias is not None
            if self.bf16_out:
                self.bias = bias.detach().bfloat16()
        else:
            self.weight = weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in) -> (B, out): float32, or bfloat16 for int8 weights feeding a product."""
        if self.form == "packed":
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "gelu" if self.gelu else "none",
                                                      [], "tanh" if self.gelu else "")
        if self.form == "split":  # one row: (parts, 1, out / parts) is (1, out) in memory
            rows = x.expand(self.weight.size(0), 1, x.size(1))
            y = torch.bmm(rows, self.weight) if self.bias is None else torch.baddbmm(self.bias, rows, self.weight)
            y = y.view(1, -1)
        elif self.form == "fp16":
            y = torch.fbgemm_linear_fp16_weight_fp32_activation(x, self.weight, self.bias)
        elif self.form == "int8":
            y = self._int8_product(x)
            if self.bf16_out:
                y = y.add_(self.bias)
            else:  # float32 either way
                y = y.float() if self.bias is None else torch.add(self.bias, y)
        else:
            y = F.linear(x, self.weight, self.bias)
        return F.gelu(y, approximate="tanh") if self.gelu else y

    def add_to(self, x: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        """x += inp @ weight.T + bias, in place (generation only: nothing keeps x for a
        backward pass), with no float32 copy of an int8 product made first; returns x."""
        if self.form == "int8" and self.bias is not None and not self.bf16_out:
            return x.add_(self._int8_product(inp)).add_(self.bias)
        return x.add_(self(inp))

    def _int8_product(self, x: torch.Tensor) -> torch.Tensor:
        """x @ weight.T without the bias, in bf16, x taken in bf16."""
        return torch._weight_int8pack_mm(x if x.dtype == torch.bfloat16 else x.bfloat16(), self.weight, self.scale)


def matmul_form(weights: str, device: torch.device, rows: int) -> str:
    """The form each weight matrix takes for `rows` rows per product (Matmul)."""
    if weights == "int8":
        return "int8"
    if weights == "float16":
        return "fp16"
    if device.type != "cpu":
        return "linear"
    if rows == 1:
        return "split"
    return "packed" if packs_for_cpu() else "linear"


class Prepared:
    """A GPT's layers (model.Layer) with every Linear made a Matmul of one weight kind,
    per row count: what the decoders of one engine compute with. Preparing (packing,
    float16 or int8 copies) costs as much as tens of decoding steps, so it happens once
    per row count, and again only when a parameter changed in place since. Safe to use
    from several threads: the first to ask for a row count prepares it, under a lock."""

    def __init__(self, model, weights: str = "float32"):
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
        self.device = model.lm_head.weight.device
        if weights in REDUCED and self.device.type != "cpu":
            raise ValueError(f"{weights} weights run on the CPU only")
        if weights == "float16" and not has_fp16_kernel():
            raise ValueError("float16 weights need FBGEMM (an x86 CPU with AVX2), which this torch lacks")
        self.model, self.weights = model, weights
        self._lock = threading.Lock()
        self._by_rows: dict[int | None, tuple[tuple, tuple[list, Matmul]]] = {}

    def layers(self, rows: int) -> tuple[list[tuple], Matmul]:
        """(the layers, lm_head) for products of `rows` rows."""
        form = matmul_form(self.weights, self.device, rows)
        key = rows if form in ("split", "packed") else None  # the other forms take any row count
        versions = tuple(p._version for p in self.model.parameters())
        with self._lock:
            hit = self._by_rows.get(key)
            if hit is None or hit[0] != versions:
                def mm(part):
                    if not isinstance(part, torch.nn.Linear):
                        return part  # a norm's (weight, bias)
                    gelu = getattr(part, "gelu", False)  # only a GELU layer feeds another product
                    return Matmul(part.weight, part.bias, form, rows, gelu, feeds_product=gelu)

                layers = [tuple(mm(part) for part in layer) for layer in self.model.layers()]
                hit = versions, (layers, mm(self.model.lm_head))
                self._by_rows[key] = hit
            return hit[1]
