"""Selective scan of Mamba (Gu & Dao 2023, arXiv:2312.00752, Algorithm 2) in plain PyTorch, chunked.

The diagonal recurrence, per channel d and state n, with input-dependent step dt_t, B_t and C_t:

    h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t,     y_t = C_t . h_t          (h_{-1} = h0)

Shapes: x, dt (B, T, D); A (D, N); B, C (B, T, N); h0 (B, D, N) -> y (B, T, D), h_last (B, D, N).

Chunked parallel form (the segsum idea of Mamba-2's SSD, with Mamba-1's per-(channel, state) decay):
split T into chunks of L steps; inside a chunk let G_t = sum_{j<=t} dt_j (cumulative log step from the
chunk start), so the decay from step s to step t is exp((G_t - G_s) A) <= 1, never an overflowing
exp(-G_s). (1) Intra-chunk states from a zero start by a Hillis-Steele scan: ceil(log2 L) passes of
h_t += exp((G_t - G_{t-k}) A) h_{t-k}, k = 1, 2, 4, ...; all chunks at once. (2) Chunk start states by a
loop over the T/L chunks on (B, D, N) tensors. (3) h_t += exp(G_t A) h_start. Everything is fp32.

Cost. Memory: autograd keeps only the inputs, O(B T (D + N)) per layer, because `backward` recomputes
the states (as the CUDA kernel does); transient memory is a few (B, T, D, N) fp32 tensors. Compute:
forward ~ (log2 L + 2) elementwise passes over (B, T, D, N); backward recomputes them and runs the same
scan reversed (g_t = dL/dh_t + exp(dt_{t+1} A) g_{t+1}), about 3x the forward. The mamba_ssm kernel does
the same work in one fused pass in SRAM; this is the portable reference (CPU and GPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def scan_states(dt: Tensor, A: Tensor, b: Tensor, h0: Tensor, chunk: int) -> Tensor:
    """h_t = exp(dt_t A) h_{t-1} + b_t. dt (B, T, D), A (D, N), b (B, T, D, N), h0 (B, D, N) -> h (B, T, D, N)."""
    Bsz, T, D, N = b.shape
    L = max(1, min(chunk, T))
    nc = -(-T // L)
    pad = nc * L - T  # padded steps have dt = 0 (no decay) and b = 0, so they leave the state unchanged
    G = F.pad(dt, (0, 0, 0, pad)).view(Bsz, nc, L, D).cumsum(2)  # (B, c, L, D)
    h = F.pad(b, (0, 0, 0, 0, 0, pad)).view(Bsz, nc, L, D, N)  # (B, c, L, D, N)
    k = 1
    while k < L:  # after this pass h_t sums the inputs of steps (t - 2k, t] of its chunk
        decay = torch.exp((G[:, :, k:] - G[:, :, :-k]).unsqueeze(-1) * A)  # (B, c, L-k, D, N)
        h = torch.cat([h[:, :, :k], h[:, :, k:] + decay * h[:, :, :-k]], dim=2)  # (B, c, L, D, N)
        k *= 2
    into = torch.exp(G.unsqueeze(-1) * A)  # (B, c, L, D, N): decay from the chunk start to step t
    starts = [h0]
    for c in range(nc - 1):
        starts.append(h[:, c, -1] + into[:, c, -1] * starts[-1])
    h = h + into * torch.stack(starts, dim=1).unsqueeze(2)  # (B, c, L, D, N) + (B, c, 1, D, N)
    return h.view(Bsz, nc * L, D, N)[:, :T]  # (B, T, D, N)


def _states(x: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, h0: Tensor, chunk: int) -> Tensor:
    b = (dt * x).unsqueeze(-1) * Bm.unsqueeze(2)  # (B, T, D, 1) * (B, T, 1, N) -> (B, T, D, N)
    return scan_states(dt, A, b, h0, chunk)


class SelectiveScan(torch.autograd.Function):
    """y, h_last = scan(x, dt, A, B, C, h0); gradients by a reverse scan over recomputed states."""

    @staticmethod
    def forward(ctx, x, dt, A, Bm, Cm, h0, chunk):
        with torch.autocast(x.device.type, enabled=False):
            h = _states(x, dt, A, Bm, h0, chunk)  # (B, T, D, N)
            y = torch.einsum("btdn,btn->btd", h, Cm)  # (B, T, D)
            h_last = h[:, -1].clone()  # (B, D, N)
        ctx.save_for_backward(x, dt, A, Bm, Cm, h0)
        ctx.chunk = chunk
        return y, h_last

    @staticmethod
    def backward(ctx, gy, g_last):
        x, dt, A, Bm, Cm, h0 = ctx.saved_tensors
        with torch.autocast(x.device.type, enabled=False):
            h = _states(x, dt, A, Bm, h0, ctx.chunk)  # (B, T, D, N), recomputed
            gC = torch.einsum("btdn,btd->btn", h, gy)  # (B, T, N)
            gh = gy.unsqueeze(-1) * Cm.unsqueeze(2)  # (B, T, D, N): dL/dh_t through y_t only
            gh[:, -1] += g_last
            dt_next = F.pad(dt[:, 1:], (0, 0, 0, 1))  # (B, T, D): dt_{t+1}, 0 after the last step
            g = scan_states(dt_next.flip(1), A, gh.flip(1), torch.zeros_like(h0), ctx.chunk).flip(1)  # (B, T, D, N)
            del gh
            h_prev = torch.cat([h0.unsqueeze(1), h[:, :-1]], dim=1)  # (B, T, D, N): h_{t-1}
            del h
            decay = torch.exp(dt.unsqueeze(-1) * A)  # (B, T, D, N)
            g_log = g * decay * h_prev  # (B, T, D, N): dL/d(dt_t A)
            gh0 = decay[:, 0] * g[:, 0]  # (B, D, N)
            del h_prev, decay
            g_bx = torch.einsum("btdn,btn->btd", g, Bm)  # (B, T, D): dL/d(dt_t x_t)
            gB = torch.einsum("btdn,btd->btn", g, dt * x)  # (B, T, N)
            gdt = g_bx * x + torch.einsum("btdn,dn->btd", g_log, A)  # (B, T, D)
            gA = torch.einsum("btdn,btd->dn", g_log, dt)  # (D, N)
            gx = g_bx * dt  # (B, T, D)
        return gx, gdt, gA, gB, gC, gh0, None


def selective_scan(x: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor, h0: Tensor, chunk: int):
    """x, dt (B, T, D); A (D, N); Bm, Cm (B, T, N); h0 (B, D, N) -> y (B, T, D), h_last (B, D, N); all fp32."""
    return SelectiveScan.apply(x, dt, A, Bm, Cm, h0, chunk)
