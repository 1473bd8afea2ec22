"""The lm_head and the cross-entropy in one pass, for training on a CPU.

`linear_cross_entropy(x, weight, targets)` equals F.cross_entropy(x @ weight.T, targets)
and its gradients, but never holds the (tokens, vocab) logits: it works through row
chunks small enough to stay in cache. It saves memory at the same speed (figures in
docs/benchmarks.md). `fuses(x, weight)` says when the model uses it. Knows nothing of
the model around it.
"""

from __future__ import annotations

import torch

CHUNK_BYTES = 8 << 20  # logits per chunk: a few MB, so they stay in cache
CHUNK_MIN_ROWS = 256  # but no fewer rows: thin chunks are slow at GPT-2's vocabulary (docs/benchmarks.md)


def fuses(x: torch.Tensor, weight: torch.Tensor) -> bool:
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
    """Each chunk's gradient, softmax minus one-hot, is computed in place of its
    log-probabilities and taken through the two gradient products at once, so backward
    only scales the stored gradients. This never holds the full logits, log-probabilities
    or their gradients: four (N, vocab) buffers the plain path keeps."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        n = x.size(0)
        rows = max(CHUNK_MIN_ROWS, CHUNK_BYTES // (4 * weight.size(0)))
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
