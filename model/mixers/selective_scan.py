"""Selective scan of Mamba (Gu & Dao 2023, arXiv:2312.00752, Algorithm 2) in plain PyTorch, chunked.

The diagonal recurrence, per channel d and state n, with input-dependent step dt_t, B_t and C_t:

    h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t,     y_t = C_t . h_t          (h_{-1} = h0)

Shapes: x, dt (B, T, D); A (D, N); B, C (B, T, N); h0 (B, D, N) -> y (B, T, D), h_last (B, D, N).

Chunked form (the SSD "chunked" algorithm of Mamba-2, with Mamba-1's per-(channel, state) decay): split T
into T/L chunks of L steps and work on all chunks at once.
  (1) intra-chunk states from a zero start: a loop over the L positions, h_j = exp(dt_j A) h_{j-1} + b_j,
      each step one fused multiply-add over (B, T/L, D, N);
  (2) chunk start states: a loop over the T/L chunks on (B, D, N) tensors;
  (3) h_t += exp(G_t A) h_start, where G_t = sum of dt from the chunk start to t (cumulative log decay).
Every exponent is dt * A <= 0, so nothing overflows (the exp(-G_s A) of a factored segsum would, for long
chunks and large dt); fp32 throughout. A log-depth parallel prefix inside the chunks (Hillis-Steele) needs
fewer sequential steps but log2(L) times the work; measured ~3x slower on CPU, and the scan is bandwidth
bound on GPU at training sizes, so the work-efficient form wins there too.

Cost per call: O(B T D N) work (~10 passes over a (B, T, D, N) fp32 tensor forward, ~25 backward) and
L + T/L sequential steps. Memory kept for backward: the inputs only, O(B T (D + N)), because `backward`
recomputes the states (as the CUDA kernel does); transient: up to ~4 (B, T, D, N) fp32 tensors. The reverse
scan for the gradient is the same scan on flipped time: g_t = dL/dh_t + exp(dt_{t+1} A) g_{t+1}.
The mamba_ssm kernel does the same work in one fused pass in SRAM; this is the portable reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def scan_states_(dt: Tensor, A: Tensor, b: Tensor, h0: Tensor, chunk: int) -> Tensor:
    """h_t = exp(dt_t A) h_{t-1} + b_t, h_{-1} = h0; overwrites b (callers pass a temporary).

    dt (B, T, D), A (D, N), b (B, T, D, N), h0 (B, D, N) -> h (B, T, D, N)."""
    Bsz, T, D, N = b.shape
    L = max(1, min(chunk, T))
    nc = -(-T // L)
    if nc * L != T:  # padded steps: dt = 0 (no decay), b = 0, so they leave the state unchanged
        dt = F.pad(dt, (0, 0, 0, nc * L - T))  # (B, c*L, D)
        b = F.pad(b, (0, 0, 0, 0, 0, nc * L - T))  # (B, c*L, D, N)
    dt = dt.reshape(Bsz, nc, L, D)  # (B, c, L, D)
    h = b.reshape(Bsz, nc, L, D, N)  # (B, c, L, D, N), a view when b is contiguous
    decay = torch.exp(dt.unsqueeze(-1) * A)  # (B, c, L, D, N): one-step decays
    for j in range(1, L):  # (1) every chunk at once, from a zero start
        h[:, :, j].addcmul_(decay[:, :, j], h[:, :, j - 1])
    del decay
    into = torch.exp(dt.cumsum(2).unsqueeze(-1) * A)  # (B, c, L, D, N): decay from the chunk start to t
    starts = [h0]
    for c in range(nc - 1):  # (2)
        starts.append(h[:, c, -1] + into[:, c, -1] * starts[-1])
    h.addcmul_(into, torch.stack(starts, dim=1).unsqueeze(2))  # (3): (B, c, L, D, N) * (B, c, 1, D, N)
    return h.view(Bsz, nc * L, D, N)[:, :T]  # (B, T, D, N)


def _states(x: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, h0: Tensor, chunk: int) -> Tensor:
    return scan_states_(dt, A, _inputs(x, dt, Bm), h0, chunk)


def _inputs(x: Tensor, dt: Tensor, Bm: Tensor) -> Tensor:
    return (dt * x).unsqueeze(-1) * Bm.unsqueeze(2)  # (B, T, D, 1) * (B, T, 1, N) -> (B, T, D, N): dt B x


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
            gh = gh.flip(1)  # (B, T, D, N), time reversed
            dt_next = F.pad(dt[:, 1:], (0, 0, 0, 1)).flip(1)  # (B, T, D): dt_{t+1} reversed, 0 after the end
            g = scan_states_(dt_next, A, gh, torch.zeros_like(h0), ctx.chunk).flip(1)  # (B, T, D, N): dL/dh_t
            del gh
            g_log = h.sub_(_inputs(x, dt, Bm)).mul_(g)  # (B, T, D, N): g_t * exp(dt_t A) h_{t-1} = dL/d(dt_t A)
            gh0 = torch.exp(dt[:, 0].unsqueeze(-1) * A) * g[:, 0]  # (B, D, N)
            g_bx = torch.einsum("btdn,btn->btd", g, Bm)  # (B, T, D): dL/d(dt_t x_t)
            gB = torch.einsum("btdn,btd->btn", g, dt * x)  # (B, T, N)
            gdt = g_bx * x + torch.einsum("btdn,dn->btd", g_log, A)  # (B, T, D)
            gA = torch.einsum("btdn,btd->dn", g_log, dt)  # (D, N)
            gx = g_bx * dt  # (B, T, D)
        return gx, gdt, gA, gB, gC, gh0, None


def selective_scan(x: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor, h0: Tensor, chunk: int):
    """x, dt (B, T, D); A (D, N); Bm, Cm (B, T, N); h0 (B, D, N) -> y (B, T, D), h_last (B, D, N); all fp32."""
    return SelectiveScan.apply(x, dt, A, Bm, Cm, h0, chunk)
