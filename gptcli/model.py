"""The GPT-2 architecture, exactly: learned (or fixed sinusoidal) positions, pre-LayerNorm
blocks, causal self-attention through scaled_dot_product_attention, a tanh-GELU MLP, a
final LayerNorm, and an lm_head tied to the token embedding.

`forward` takes an optional KVCache, an object the caller owns and hands in (generation
prefills it once, then feeds one token per step). Knows nothing of tokenizers or files.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptcli.config import ModelConfig


class KVCache:
    """Preallocated keys and values for every layer, plus which positions hold real tokens.

    Shape (n_layer, B, n_head, max_len, head_dim). `pos` counts the positions already
    stored; the model writes layer by layer, then calls `advance` once per forward.
    Left-padded batches mark their padding in `valid` so attention skips it."""

    def __init__(self, cfg: ModelConfig, batch_size: int, *, max_len: int | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.max_len = max_len or cfg.block_size
        shape = (cfg.n_layer, batch_size, cfg.n_head, self.max_len, cfg.head_dim)
        self._use(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
        self._spare: tuple[torch.Tensor, torch.Tensor] | None = None  # reorder's second buffer
        self.valid = torch.ones(batch_size, self.max_len, dtype=torch.bool, device=device)  # (B, max_len)
        self.padded = False  # whether any stored position is padding
        self.pos = 0

    def mark_padding(self, valid: torch.Tensor) -> None:
        """valid (B, T): False where the next T positions are left padding."""
        self.valid[:, self.pos:self.pos + valid.size(1)] = valid
        self.padded = self.padded or not bool(valid.all())

    def _use(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Make k, v the buffers, with their per-layer views for `append`."""
        self.k, self.v = k, v
        self._layers = list(zip(k.unbind(0), v.unbind(0)))

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's (B, n_head, T, head_dim) keys/values; return all so far."""
        end = self.pos + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} were asked for")
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`store` for one new position: k, v (B, n_head, head_dim). The decode step's path,
        a copy and a narrow per tensor instead of Python slicing."""
        if self.pos >= self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {self.pos + 1} were asked for")
        keys, values = self._layers[layer]
        keys.select(2, self.pos).copy_(k)
        values.select(2, self.pos).copy_(v)
        return keys.narrow(2, 0, self.pos + 1), values.narrow(2, 0, self.pos + 1)

    def step_mask(self) -> torch.Tensor | None:
        """The attention mask for one new query: (B, 1, 1, S) where padding was stored, else None."""
        return self.valid[:, None, None, :self.pos + 1] if self.padded else None

    def advance(self, n: int) -> None:
        self.pos += n

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep cache rows `rows` (beam search: each new beam continues an old one)."""
        if rows.numel() != self.k.size(1):  # the batch changes size: new buffers
            self._use(self.k.index_select(1, rows), self.v.index_select(1, rows))
            self._spare = None
        else:
            order = rows.tolist()
            if order == list(range(len(order))):  # every row kept its own history
                return
            # Copy each kept row's filled positions into a spare buffer, then swap: one pass
            # over the live part of the cache (a gather and a copy back, in place, took three
            # times as long at 4 beams). The spare doubles the cache's memory while beams run.
            if self._spare is None:
                self._spare = torch.empty_like(self.k), torch.empty_like(self.v)
            for old, new in zip((self.k, self.v), self._spare):
                src, dst = old.narrow(3, 0, self.pos), new.narrow(3, 0, self.pos)
                for i, j in enumerate(order):
                    dst.select(1, i).copy_(src.select(1, j))
            spare = self._spare
            self._spare = self.k, self.v
            self._use(*spare)
        self.valid = self.valid.index_select(0, rows)

    def attention_mask(self, T: int) -> tuple[torch.Tensor | None, bool]:
        """(mask, is_causal) for T new queries after the stored positions."""
        past, device = self.pos, self.valid.device
        if not self.padded:
            if T == 1:
                return None, False  # one new query may see every stored position
            if past == 0:
                return None, True
            # query i sits at absolute position past + i and sees keys 0..past + i
            return torch.ones(T, past + T, dtype=torch.bool, device=device).tril(diagonal=past), False
        allowed = torch.ones(T, past + T, dtype=torch.bool, device=device).tril(diagonal=past)
        mask = allowed[None] & self.valid[:, None, :past + T]  # (B, T, S): no attending to padding
        # A padding query would see no key at all (NaN); let every query see itself.
        mask |= _diagonal(T, past, device)
        return mask[:, None], False  # (B, 1, T, S)


def _diagonal(T: int, past: int, device) -> torch.Tensor:
    """(1, T, past + T) True where query i meets its own key past + i."""
    d = torch.zeros(T, past + T, dtype=torch.bool, device=device)
    d[torch.arange(T), past + torch.arange(T)] = True
    return d[None]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_embd, self.dropout = cfg.n_head, cfg.n_embd, cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v at once
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None, layer: int, attn: tuple) -> torch.Tensor:
        B, T, C = x.shape  # (B, T, n_embd)
        q, k, v = _linear(self.c_attn, x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hd)
        mask, causal = attn
        if kv_cache is not None:
            k, v = kv_cache.store(layer, k, v)  # (B, nh, past + T, hd)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, nh, T, hd)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return _dropout(_linear(self.c_proj, y), self.dropout, self.training)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(_linear(self.c_fc, x), approximate="tanh")  # GPT-2's gelu_new; (B, T, 4 * n_embd)
        return _dropout(_linear(self.c_proj, h), self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None, layer: int, attn: tuple) -> torch.Tensor:
        x = x + self.attn.forward(_layer_norm(self.ln_1, x), kv_cache, layer, attn)
        return x + self.mlp.forward(_layer_norm(self.ln_2, x))


# Decoding a small model on a CPU spends as long in nn.Module call machinery as in the
# matrix products, so the blocks call the functional forms on their modules' parameters.
# (GPT.decode_step goes further and reads the parameters from a flat list.)
def _linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, layer.weight, layer.bias)


def _layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    return F.dropout(x, p, training) if training and p > 0 else x


# -- the loss --------------------------------------------------------------------------
LOSS_CHUNK_BYTES = 8 << 20  # logits per chunk of linear_cross_entropy: a few MB, so they stay in cache
LOSS_CHUNK_MIN_ROWS = 256  # but no fewer rows: at GPT-2's 50257 tokens, 41-row chunks took 1.6x as long


def _fuse_loss(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a training loss goes through linear_cross_entropy: on CPU in float32 with
    gradients wanted. Elsewhere (CUDA, autocast, torch.compile) F.cross_entropy is used."""
    return (x.device.type == "cpu" and torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()
            and x.dtype == weight.dtype == torch.float32)


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """F.cross_entropy(x @ weight.T, targets), the mean over rows, without the (N, vocab)
    logits: x (N, C), weight (vocab, C), targets (N,)."""
    return _LinearCrossEntropy.apply(x, weight, targets)


class _LinearCrossEntropy(torch.autograd.Function):
    """The lm_head and the loss in one pass over row chunks. Each chunk's gradient,
    softmax minus one-hot, is computed in place of its log-probabilities and taken through
    the two gradient products at once, so backward only scales the stored gradients.
    This never holds the full logits, log-probabilities or their gradients (four (N, vocab)
    buffers, 64 MB each at `tiny`): a step's peak memory fell from 1,000 to 730 MB at `tiny`
    and from 13.9 to 8.2 GB at GPT-2's shape. Its speed on CPU is the plain path's."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        n = x.size(0)
        rows = max(LOSS_CHUNK_MIN_ROWS, LOSS_CHUNK_BYTES // (4 * weight.size(0)))
        grad_x, grad_w = torch.empty_like(x), torch.zeros_like(weight)
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        for s in range(0, n, rows):
            xs, ts = x[s:s + rows], targets[s:s + rows, None]
            logp = torch.log_softmax(xs @ weight.t(), dim=-1)  # (rows, vocab)
            picked = logp.gather(1, ts)
            total -= picked.sum()
            grad = logp.exp_().scatter_add_(1, ts, torch.full_like(picked, -1.0))  # softmax - one-hot
            torch.mm(grad, weight, out=grad_x[s:s + rows])
            grad_w.addmm_(grad.t(), xs)
        ctx.save_for_backward(grad_x, grad_w)
        ctx.n = n
        return total / n

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        grad_x, grad_w = ctx.saved_tensors
        scale = grad_out / ctx.n
        return grad_x * scale, grad_w * scale, None


def sinusoidal_table(n_pos: int, dim: int) -> torch.Tensor:
    """The fixed table of Vaswani et al.: sin on even channels, cos on odd ones."""
    pos = torch.arange(n_pos, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(n_pos, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table  # (n_pos, dim)


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        if cfg.pos_encoding == "learned":
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        else:  # computed, never stored in a checkpoint
            self.register_buffer("pos_table", sinusoidal_table(cfg.block_size, cfg.n_embd), persistent=False)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as GPT-2
        self.apply(self._init_weights)
        # GPT-2 scales the init of each residual projection by 1/sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # the tied matrix counts once

    def _embed(self, idx: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Token plus position embeddings, for ids and positions of any matching shape."""
        pos_emb = F.embedding(positions, self.wpe.weight) if self.config.pos_encoding == "learned" else self.pos_table[positions]
        return F.embedding(idx, self.wte.weight) + pos_emb

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                positions: torch.Tensor | None = None, last_only: bool = False,
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """idx (B, T) token ids -> logits (B, T, vocab), and the mean cross-entropy if
        targets (B, T) are given. With a cache, idx holds only the new tokens.
        positions (B, T) overrides 0, 1, 2, ... (left-padded rows start later);
        last_only computes logits for the last position alone (generation).
        With targets and gradients on a float32 CPU model, no logits are returned (None):
        the loss comes from linear_cross_entropy."""
        B, T = idx.shape
        start = kv_cache.pos if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        if positions is None:
            positions = torch.arange(start, start + T, device=idx.device)
        x = _dropout(self._embed(idx, positions), self.config.dropout, self.training)  # (B, T, n_embd)
        attn = kv_cache.attention_mask(T) if kv_cache is not None else (None, True)
        for layer, block in enumerate(self.h):
            x = block.forward(x, kv_cache, layer, attn)
        if kv_cache is not None:
            kv_cache.advance(T)
        if last_only:
            x = x[:, -1:]  # (B, 1, n_embd)
        x = _layer_norm(self.ln_f, x)
        if targets is not None and _fuse_loss(x, self.lm_head.weight):
            return None, linear_cross_entropy(x.view(B * T, -1), self.lm_head.weight, targets.reshape(B * T))
        logits = F.linear(x, self.lm_head.weight)  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(B * T, -1).float(), targets.reshape(B * T))
        return logits, loss

    def decode_step(self, idx: torch.Tensor, kv_cache: KVCache, positions: torch.Tensor) -> torch.Tensor:
        """The hot loop of generation: one new token per row after a prefilled cache.
        idx, positions (B,) -> logits (B, vocab); equal to forward() on the same input
        (generation runs in eval mode, so there is no dropout here). The same arithmetic
        as Block.forward in fewer tensor operations: no transposes, no split, one query
        per head, and the parameters read from a flat list rather than through modules
        (on a 2-core CPU, an nn.Module attribute costs 1.5 us, a quarter of a LayerNorm)."""
        if kv_cache.pos >= self.config.block_size:
            raise ValueError(f"sequence of {kv_cache.pos + 1} tokens exceeds block_size {self.config.block_size}")
        x = self._embed(idx, positions)  # (B, n_embd)
        mask = kv_cache.step_mask()
        (B, C), nh, eps, shape = x.shape, self.config.n_head, self.config.layer_norm_eps, (self.config.n_embd,)
        for layer, (ln1_w, ln1_b, attn_w, attn_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b, out_w, out_b) in \
                enumerate(self._decode_params):
            qkv = F.linear(F.layer_norm(x, shape, ln1_w, ln1_b, eps), attn_w, attn_b).view(B, 3, nh, C // nh)
            keys, values = kv_cache.append(layer, qkv.select(1, 1), qkv.select(1, 2))  # (B, nh, S, hd)
            y = F.scaled_dot_product_attention(qkv.select(1, 0).unsqueeze(2), keys, values, attn_mask=mask)
            x = x + F.linear(y.view(B, C), proj_w, proj_b)
            h = F.gelu(F.linear(F.layer_norm(x, shape, ln2_w, ln2_b, eps), fc_w, fc_b), approximate="tanh")
            x = x + F.linear(h, out_w, out_b)
        kv_cache.advance(1)
        return F.linear(F.layer_norm(x, shape, self.ln_f.weight, self.ln_f.bias, eps), self.lm_head.weight)

    @functools.cached_property
    def _decode_params(self) -> list[tuple]:
        """Each block's parameters in decode_step's order. These are the Parameter objects
        themselves, so in-place changes show through: load_state_dict, .to(), training.
        Replacing a Parameter object (load_state_dict(assign=True)) would not."""
        return [(b.ln_1.weight, b.ln_1.bias, b.attn.c_attn.weight, b.attn.c_attn.bias, b.attn.c_proj.weight,
                 b.attn.c_proj.bias, b.ln_2.weight, b.ln_2.bias, b.mlp.c_fc.weight, b.mlp.c_fc.bias,
                 b.mlp.c_proj.weight, b.mlp.c_proj.bias) for b in self.h]
