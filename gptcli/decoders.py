"""The engines that add one token per row and step: GPT's fast decoder over a KV cache,
with its weight matrices prepared once in the form the device multiplies fastest, and
the recurrent models' decoder over their state. Both prefill prompts, step, and reorder
rows for beam search. Know nothing of sampling, text or files.
"""

from __future__ import annotations

import warnings
import weakref

import torch
import torch.nn.functional as F

from gptcli.architectures import LanguageModel
from gptcli.device import cpu_caps
from gptcli.kv_cache import KVCache
from gptcli.model import GPT
from gptcli.recurrent import RecurrentLM

WEIGHTS = ("float32", "float16", "int8")  # how generation holds the weight matrices
REDUCED = ("float16", "int8")  # the CPU-only kinds, for GPT models

# model -> {(weights, rows): (parameter versions, prepared Matmuls)}: preparing (packing,
# quantizing) costs as much as tens of decoding steps, so every decoder of a model reuses it
_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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

    def add_to(self, x: torch.Tensor, inp: torch.Tensor) -> None:
        """x += inp @ weight.T + bias, in place: the residual stream's update, with no
        float32 copy of an int8 product made first."""
        if self.form == "int8" and self.bias is not None and not self.bf16_out:
            x.add_(self._int8_product(inp)).add_(self.bias)
        else:
            x.add_(self(inp))

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


class FastDecoder:
    """A GPT's generation engine: prefill the prompts into a KVCache it owns, then one new
    token per row and step. `step` does Block.forward's arithmetic in fewer tensor
    operations (no transposes, no split, one query per head) through Matmuls prepared
    once per batch size: on a CPU, module calls and attribute reads cost as much as the
    small matrix products of a small model (docs/benchmarks.md). In float32 the prefill
    runs the model's own forward; float16 and int8 prefill through their own products
    (`_prompt_forward`). The tests pin `step` and that prefill to `model.forward`: within
    1e-5 in float32, and in float16 on weights that float16 holds exactly.

    Built from a model in eval mode; it refuses to run once the model is put in training
    mode or a parameter object is replaced (load_state_dict(assign=True)), since it would
    then compute with weights the model no longer has."""

    def __init__(self, model: GPT, weights: str = "float32"):
        if model.training:
            raise ValueError("the fast decoder needs the model in eval mode: call model.eval()")
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
        if weights in REDUCED and model.wte.weight.device.type != "cpu":
            raise ValueError(f"{weights} weights run on the CPU only")
        if weights == "float16" and not has_fp16_kernel():
            raise ValueError("float16 weights need FBGEMM (an x86 CPU with AVX2), which this torch lacks")
        self.model, self.cfg, self.weights = model, model.config, weights
        self._owners = [(m._parameters, name, p) for m in model.modules() for name, p in m._parameters.items()]
        self.device = model.wte.weight.device
        self._step_matmuls: tuple[list, tuple] | None = None  # the Matmuls for the prefilled batch
        self.cache: KVCache | None = None
        self.next_pos: torch.Tensor | None = None  # (B,) each row's next position

    def _check(self) -> None:
        if self.model.training:
            raise ValueError("the model was put in training mode: the fast decoder runs in eval mode only")
        if not all(params.get(name) is p for params, name, p in self._owners):
            raise ValueError("the model's parameters were replaced after the fast decoder was built: build a new one")

    def _matmuls(self, rows: int) -> tuple[list, tuple]:
        """Per layer (ln_1, qkv, proj, ln_2, fc + GELU, out), and (ln_f, lm_head), for
        `rows` rows; prepared again when a parameter changed in place since."""
        versions = tuple(p._version for p in self.model.parameters())
        prepared = _PREPARED.setdefault(self.model, {})
        form = matmul_form(self.weights, self.device, rows)
        key = (self.weights, rows if form in ("split", "packed") else None)  # the others take any row count
        if key not in prepared or prepared[key][0] != versions:
            def mm(linear: torch.nn.Linear, gelu: bool = False, feeds_product: bool = False) -> Matmul:
                return Matmul(linear.weight, linear.bias, form, rows, gelu, feeds_product)

            layers = [((b.ln_1.weight, b.ln_1.bias), mm(b.attn.c_attn), mm(b.attn.c_proj),
                       (b.ln_2.weight, b.ln_2.bias), mm(b.mlp.c_fc, gelu=True, feeds_product=True), mm(b.mlp.c_proj))
                      for b in self.model.h]
            head = mm(self.model.lm_head)
            prepared[key] = versions, (layers, ((self.model.ln_f.weight, self.model.ln_f.bias), head))
        return prepared[key][1]

    @property
    def full(self) -> bool:
        """Whether the context is full, so the next step needs a new prefill."""
        return self.cache is not None and self.cache.pos >= self.cfg.block_size

    def prefill(self, rows: list[list[int]]) -> torch.Tensor:
        """Run the prompts (each 1..block_size tokens) once, left-padded, into a fresh
        cache; returns the last position's logits (B, V)."""
        self._check()
        T = max(len(r) for r in rows)
        if T > self.cfg.block_size:  # the same error whatever prefills them
            raise ValueError(f"sequence of {T} tokens exceeds block_size {self.cfg.block_size}")
        idx = torch.zeros((len(rows), T), dtype=torch.long, device=self.device)  # padding: any id, it is masked
        valid = torch.zeros(len(rows), T, dtype=torch.bool, device=self.device)
        for i, r in enumerate(rows):
            idx[i, T - len(r):] = torch.tensor(r, dtype=torch.long, device=self.device)
            valid[i, T - len(r):] = True
        self.cache = KVCache(self.cfg, len(rows), device=self.device, dtype=self.model.wte.weight.dtype)
        if not bool(valid.all()):
            self.cache.mark_padding(valid)
        positions = (valid.long().cumsum(dim=1) - 1).clamp(min=0)  # each row counts from its first token
        self._step_matmuls = None  # fetched by the first step, for the batch it sees
        self.next_pos = valid.sum(dim=1)
        if self.weights in REDUCED:  # their products take any number of rows
            return self._prompt_forward(idx, positions)
        logits, _ = self.model(idx, kv_cache=self.cache, positions=positions, last_only=True)
        return logits[:, -1]

    def _prompt_forward(self, idx: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The model's forward over whole prompts (B, T) into the fresh cache, through the
        prepared products (float16, int8: for them the model's own float32 forward, with
        its first-call costs in a new process, took about 7% of a 128-token greedy
        generation); returns the last position's logits (B, V). `step`'s arithmetic, for
        T tokens a row: the tests pin it to the model's forward (float16) and to prefilling
        one token and stepping through the rest (int8, left-padded)."""
        cache, (B, T) = self.cache, idx.shape
        nh, eps, C = self.cfg.n_head, self.cfg.layer_norm_eps, self.cfg.n_embd
        x = self.model.embed(idx, positions).view(B * T, C)
        mask, is_causal = cache.attention_mask(T)
        layers, (ln_f, head) = self._matmuls(B * T)
        for layer, (ln_1, qkv_mm, proj_mm, ln_2, fc_mm, out_mm) in enumerate(layers):
            qkv = qkv_mm(torch.layer_norm(x, (C,), *ln_1, eps)).view(B, T, 3, nh, C // nh).permute(2, 0, 3, 1, 4)
            keys, values = cache.store(layer, qkv[1], qkv[2])
            y = F.scaled_dot_product_attention(qkv[0], keys, values, attn_mask=mask, is_causal=is_causal)
            proj_mm.add_to(x, y.transpose(1, 2).reshape(B * T, C))
            out_mm.add_to(x, fc_mm(torch.layer_norm(x, (C,), *ln_2, eps)))
        cache.advance(T)
        return head(torch.layer_norm(x.view(B, T, C)[:, -1], (C,), *ln_f, eps))

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B,), one per row after the prefilled ones -> logits (B, V)."""
        self._check()
        cache = self.cache
        if cache.pos >= self.cfg.block_size:
            raise ValueError(f"sequence of {cache.pos + 1} tokens exceeds block_size {self.cfg.block_size}")
        x = self.model.embed(tokens, self.next_pos)  # (B, n_embd)
        if cache.slots is not None:  # after a reorder the rows run in the cache's buffer order
            x = x.index_select(0, cache.rows_in_slot)
        mask = cache.step_mask()
        (B, C), nh, eps, shape = x.shape, self.cfg.n_head, self.cfg.layer_norm_eps, (self.cfg.n_embd,)
        if self._step_matmuls is None:
            self._step_matmuls = self._matmuls(B)
        layers, (ln_f, head) = self._step_matmuls
        for (ln_1, qkv_mm, proj_mm, ln_2, fc_mm, out_mm), (slot, keys, values) in zip(layers, cache.step_views()):
            qkv = qkv_mm(torch.layer_norm(x, shape, *ln_1, eps)).view(B, 3, nh, 1, C // nh)
            slot.copy_(qkv[:, 1:])
            y = F.scaled_dot_product_attention(qkv.select(1, 0), keys, values, attn_mask=mask)
            proj_mm.add_to(x, y.view(B, C))  # x is this step's own tensor: updated in place
            out_mm.add_to(x, fc_mm(torch.layer_norm(x, shape, *ln_2, eps)))
        cache.advance(1)
        self.next_pos = self.next_pos + 1
        logits = head(torch.layer_norm(x, shape, *ln_f, eps))
        return logits if cache.slots is None else logits.index_select(0, cache.slots)

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep cache rows `rows` (beam search: each new beam continues an old one)."""
        if rows.numel() != self.next_pos.numel():  # a new batch size: its own Matmuls
            self._step_matmuls = None
        self.cache.reorder(rows)
        self.next_pos = self.next_pos.index_select(0, rows)


class RecurrentDecoder:
    """A recurrent model's generation engine: the state carries the whole history, so
    there is no context to fill and no window to slide (generation past block_size just
    goes on). Same interface as FastDecoder."""

    full = False  # never: a recurrent model has no context limit

    def __init__(self, model: RecurrentLM):
        if model.training:
            raise ValueError("the decoder needs the model in eval mode: call model.eval()")
        self.model, self.state = model, None
        self.device = model.wte.weight.device

    def prefill(self, rows: list[list[int]]) -> torch.Tensor:
        """Run the prompts (right-padded, each to its own length) from a zero state;
        returns each row's last logits (B, V)."""
        lengths = torch.tensor([len(r) for r in rows], device=self.device)
        idx = torch.zeros((len(rows), int(lengths.max())), dtype=torch.long, device=self.device)
        for i, r in enumerate(rows):
            idx[i, :len(r)] = torch.tensor(r, dtype=torch.long, device=self.device)
        x, self.state = self.model.run(idx, lengths=lengths)
        return self.model.lm_head(x[torch.arange(len(rows), device=self.device), lengths - 1])

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        x, self.state = self.model.run(tokens[:, None], self.state)
        return self.model.lm_head(x[:, 0])

    def reorder(self, rows: torch.Tensor) -> None:
        self.state = tuple(s.index_select(1, rows) for s in self.state) if isinstance(self.state, tuple) \
            else self.state.index_select(1, rows)


def prepare(model: LanguageModel, weights: str, rows: int) -> None:
    """Prepare a GPT's matrices for decoding `rows` rows at a time now (packing, float16
    or int8 copies: 5 to 30 ms for the tiny model), and run a 2-token prompt and one step
    through them. A process pays for the first call of each kernel: oneDNN builds a
    shape's kernel (0.4 to 0.6 ms each), OpenMP starts its threads, attention and layer
    norm set up (0.1 to 0.4 ms each): about 1 to 3 ms for the tiny model, which this
    makes part of loading the model, where the start-up figures count it, instead of
    part of the first generation's speed. The decoders reuse what this prepared."""
    if model.config.recurrent:
        return
    decoder = FastDecoder(model, weights)
    decoder._matmuls(rows)
    with torch.inference_mode():
        decoder.prefill([[0] * min(2, model.config.block_size)] * rows)
        if not decoder.full:
            decoder.step(torch.zeros(rows, dtype=torch.long, device=decoder.device))


def make_decoder(model: LanguageModel, weights: str = "float32") -> FastDecoder | RecurrentDecoder:
    """The decoder for this model; `weights` applies to GPTs (a recurrent model keeps float32)."""
    return RecurrentDecoder(model) if model.config.recurrent else FastDecoder(model, weights)
