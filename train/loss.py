"""Chunked linear cross-entropy: the output head and the next-token loss together, a few rows at a time, so the
(N, V) logits (N = B T rows) never exist at once, neither in the compute dtype nor in fp32.

    loss = sum_{n : t_n != ignore} CE(h_n W^T, t_n),   h (N, D) final hidden states, W (V, D) the head, t (N,)

Plain form: `F.cross_entropy((h W^T).float(), t, ignore_index, reduction="sum")` keeps B T V fp32 log-probs for
backward (4 V bytes per token, 128 KiB at V = 32000) plus the logits and their fp32 copy while the loss runs.
Here, per chunk of `chunk` rows, the logits z = h_c W^T are made in the compute dtype (bf16 under autocast, as the
plain head), upcast to fp32, and turned at once into the loss and its gradient, since the loss is a sum:

    dL/dz = softmax(z) - onehot(t)  (0 for ignored rows),   dL/dh_c = dz W,   dL/dW += dz^T h_c

The forward keeps dL/dh (N, D) and dL/dW (V, D, fp32) and the backward scales them by the incoming gradient (a
scalar), so the head costs what the plain form costs (one matmul forward, two backward) and nothing is
recomputed; memory holds one chunk's (chunk, V) fp32 logits instead of all of them. Values and gradients equal
the plain form's (to rounding: the sum over chunks runs in another order). Liger Kernel's fused linear
cross-entropy (Hsu et al. 2024, arXiv:2410.10989) does the same in Triton; this is plain PyTorch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = -100


def compute_dtype(t: Tensor) -> torch.dtype:
    """The dtype a Linear on `t` computes in: autocast's, when autocast is on for its device."""
    device = t.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else t.dtype


def chunk_losses(h: Tensor, w: Tensor, targets: Tensor, dtype: torch.dtype, ignore_index: int,
                 want_grad_h: bool, want_grad_w: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """One chunk: h (n, D), the head w (V, D) in dtype, targets (n,) -> (summed CE fp32, dL/dh (n, D) in dtype or
    None, dL/dW (V, D) fp32 or None)."""
    hc = h.to(dtype)
    logits = F.linear(hc, w).float()  # (n, V) fp32
    valid = targets != ignore_index  # (n,)
    safe = targets.masked_fill(~valid, 0)  # (n,) a valid index everywhere (ignored rows are masked out)
    lse = torch.logsumexp(logits, dim=-1)  # (n,)
    picked = logits.gather(1, safe[:, None]).squeeze(1)  # (n,)
    loss = ((lse - picked) * valid).sum()
    if not (want_grad_h or want_grad_w):
        return loss, None, None
    grad = logits.sub_(lse[:, None]).exp_()  # (n, V) softmax, in place of the logits
    grad.scatter_add_(1, safe[:, None], -valid[:, None].to(grad.dtype))  # - onehot(t) on scored rows
    grad.mul_(valid[:, None])  # ignored rows: no gradient
    grad = grad.to(dtype)
    grad_h = grad @ w if want_grad_h else None  # (n, D)
    grad_w = (grad.t() @ hc).float() if want_grad_w else None  # (V, D)
    return loss, grad_h, grad_w


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, targets: Tensor, chunk: int, ignore_index: int, dtype: torch.dtype):
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(h) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        ctx.weight_dtype = weight.dtype
        with torch.autocast(h.device.type, enabled=False):  # the dtypes are explicit here
            w = weight.to(dtype)  # (V, D), cast once (autocast's weight copy)
            for start in range(0, h.shape[0], chunk):
                rows = slice(start, start + chunk)
                loss, gh, gw = chunk_losses(h[rows], w, targets[rows], dtype, ignore_index, want_h, want_w)
                total += loss
                if want_h:
                    grad_h[rows] = gh.to(h.dtype)
                if want_w:
                    grad_w += gw
        ctx.save_for_backward(grad_h, grad_w)
        return total

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grad_h, grad_w = ctx.saved_tensors
        dh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        dw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return dh, dw, None, None, None, None


def chunked_cross_entropy(h: Tensor, weight: Tensor, targets: Tensor, chunk: int,
                          ignore_index: int = IGNORE) -> Tensor:
    """Summed next-token cross-entropy of the head `weight` (V, D) on h (N, D) against targets (N,) (rows whose
    target is ignore_index are not scored), `chunk` rows at a time; fp32 scalar. Gradients reach h and weight."""
    chunk = max(1, min(int(chunk), h.shape[0]))
    dtype = compute_dtype(h)
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return ChunkedLinearCrossEntropy.apply(h, weight, targets, chunk, ignore_index, dtype)
    with torch.autocast(h.device.type, enabled=False):
        w = weight.to(dtype)
        return sum(chunk_losses(h[s:s + chunk], w, targets[s:s + chunk], dtype, ignore_index, False, False)[0]
                   for s in range(0, h.shape[0], chunk))


def plain_cross_entropy(h: Tensor, weight: Tensor, targets: Tensor, ignore_index: int = IGNORE) -> Tensor:
    """The reference: the whole (N, V) logits, upcast to fp32, summed cross-entropy."""
    return F.cross_entropy(F.linear(h, weight).float(), targets, ignore_index=ignore_index, reduction="sum")
