"""Mamba-2 mixer (`model.mixer=mamba2`).

Dao & Gu 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured State Space
Duality" (arXiv:2405.21060): the Mamba-2 block (§7, Figure 6) around the SSD layer (§6), one group (B and C
shared by all heads):

    z, xBC, dt = in_proj(u)                    u (B, T, D) -> z (B, T, E), xBC (B, T, E + 2N), dt (B, T, H)
    x, B, C = split(SiLU(conv(xBC)))           causal depthwise conv of width d_conv -> x (B, T, H, P), B, C (B, T, N)
    dt      = softplus(dt + dt_bias)           (B, T, H): one step per head and token
    a_t     = exp(dt_t A_h), A_h = -exp(A_log_h)   (B, T, H): a scalar decay per head (SSD's A = a I)
    h_t     = a_t h_{t-1} + dt_t x_t B_t^T     (B, H, P, N)
    y_t     = h_t C_t + D_h x_t                (B, H, P)
    out     = out_proj(RMSNorm(y ⊙ SiLU(z)))   (B, T, D), the gated norm over all E channels

E = expand * D (or heads * headdim), H = E / P heads of P = headdim channels, N = d_state.

Training and prefill run SSD's chunked form (§6, the block decomposition of the semiseparable matrix): split T
into n chunks of C tokens and, with b_t = sum_{r <= t} dt_r A the log-decay from the chunk start (fp32), per
head and chunk

    Y   = M X + e^b ⊙ (C h_in^T),     M_ts = e^{b_t - b_s} (C_t . B_s) dt_s for s <= t (0 above), + D on the diagonal
    S   = X^T (dt e^{b_C - b} ⊙ B)    the chunk's own state, (P, N)
    h_in(i) = sum_{j < i} e^{c_i - c_{j+1}} S_j (+ e^{c_i} h_0),   c_i the log-decay from the start to chunk i

The decay matrices (C x C inside a chunk, n x n between chunks) are exponentials of differences masked to -inf
above the diagonal, so no exponent is positive and nothing overflows. Everything is batched matmuls over heads
and chunks, no loop over chunks; the n x n state passing costs 2 n P N per head and token, which grows with T
(at C = N = 32 it equals the intra-chunk work at T = 1024). The last chunk is padded with dt = 0 (a = 1, no
input), so the final state is exact. One new token with a cache takes the recurrence directly; more take the
chunked form from the cached state. Defaults are sized for CPU training (N = 32, C = 32; the paper uses N = 64 to
128 and the kernels chunks of 256): raise chunk_size for T well beyond 2k tokens (the state passing scales as
T / C^2 per token).
Cache: (conv_state (B, d_conv - 1, E + 2N), the last conv inputs; ssm_state (B, H, P, N) fp32). The SSM core
runs in fp32 with autocast off (fp64 when the module is fp64).

Backends for training (no cache): `fla` runs the core as fla's `chunk_simple_gla` (q = C, k = B, v = dt x,
log-gate dt A: the same recurrence), `mamba_ssm` as `mamba_chunk_scan_combined`; both CUDA (Triton) only.
Initialisation as the reference `mamba2_simple.py`: A uniform in [1, 16], D = 1, dt_bias = softplus^-1(dt) with
dt log-uniform in [1e-3, 1e-1], norm weight 1, conv as nn.Conv1d's default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.component import Mixer
from model.mixers import kernels
from model.options import Options, option, section_name


@dataclass
class Mamba2Config(Options):
    d_state: int = option(32, min=1)  # N: state size, shared by the heads (one group)
    headdim: int = option(64, min=1)  # P: channels per head; must divide the inner width
    expand: int = option(2, min=1)  # inner width E = expand * d_model (unless heads > 0)
    heads: int = option(0, min=0)  # SSM heads when > 0: E = heads * headdim; `match: params` resizes it (a head is
    # ~3 headdim * d_model parameters: coarse next to d_ff, the knob whenever the block has an FFN)
    d_conv: int = option(4, min=1)  # causal depthwise conv width over x, B, C
    chunk_size: int = option(32, min=1)  # SSD chunk length: quadratic inside a chunk, state passing across
    # torch | fla | mamba_ssm (CUDA, training)
    backend: str = option("torch", choices=("torch", "fla", "mamba_ssm"), runtime=True)


KERNELS = {"fla": ("fla.ops.simple_gla", "chunk_simple_gla"),  # backend -> (module, function), training only
           "mamba_ssm": ("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined")}


def ssd_chunked(x: Tensor, dt: Tensor, A: Tensor, D: Tensor, Bm: Tensor, Cm: Tensor, state: Tensor | None,
                chunk_size: int) -> tuple[Tensor, Tensor | None]:
    """y_t = h_t C_t + D x_t with h_t = e^{dt_t A} h_{t-1} + dt_t x_t B_t^T from h_0 = state, chunk by chunk.

    x (B, T, H, P), dt (B, T, H), A, D (H,), Bm, Cm (B, T, N), state (B, H, P, N) or None (zeros, and no final
    state wanted: training) -> y (B, T, H, P) and h_T (None without a state)."""
    Bsz, T, H, P = x.shape
    N = Bm.shape[-1]
    C = min(chunk_size, T)
    n = -(-T // C)
    pad = n * C - T  # dt = 0 after the end: no decay, no input; padded outputs are dropped

    def chunks(t: Tensor) -> Tensor:  # (B, T, ...) -> (B, n, C, ...)
        return (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) if pad else t).unflatten(1, (n, C))

    xh = chunks(x).permute(0, 3, 1, 2, 4).contiguous()  # (B, H, n, C, P): heads and chunks as matmul batches
    Bm, Cm = chunks(Bm)[:, None], chunks(Cm)[:, None]  # (B, 1, n, C, N): shared by the heads
    dt = chunks(dt).permute(0, 3, 1, 2)  # (B, H, n, C)
    b = (dt * A[:, None, None]).cumsum(-1)  # (B, H, n, C): log-decay from the chunk start
    i = torch.arange(C, device=x.device)
    L = (b[..., :, None] - b[..., None, :]).masked_fill(i[:, None] < i, -math.inf).exp()  # (B, H, n, C, C)
    M = L * ((Cm @ Bm.transpose(-1, -2)) * dt[..., None, :])  # L ⊙ C B^T dt_s
    M.diagonal(dim1=-2, dim2=-1).add_(D[:, None, None])  # (B, H, n, C, C); the skip D x rides on the diagonal
    S = xh.transpose(-1, -2) @ (Bm * (dt * (b[..., -1:] - b).exp())[..., None])  # (B, H, n, P, N): chunk states
    a = F.pad(b[..., -1], (1, 0))  # (B, H, n + 1): 0, then each chunk's log-decay
    j = torch.arange(n + 1, device=x.device)
    # seg[i, s] = sum_{s < m <= i} a_m, the log-decay from chunk s's start to chunk i's (m counts chunks from 1), as
    # a cumulative sum down masked columns: over long sequences differences of two large sums would lose digits
    seg = a[..., :, None].expand(*a.shape, n + 1).masked_fill(j[:, None] <= j, 0).cumsum(-2)  # (B, H, n+1, n+1)
    rows = n + (state is not None)  # the states entering the chunks, and the final one if wanted
    Lc = seg[..., :rows, 1:].masked_fill(j[:rows, None] <= j[:n], -math.inf).exp()  # (B, H, rows, n): S_s -> h_i
    h = Lc @ S.flatten(-2)  # (B, H, rows, P N)
    if state is not None:
        h = (h + seg[..., :rows, :1].exp() * state.flatten(-2)[:, :, None]).unflatten(-1, (P, N))  # + e^{c_i} h_0
        h, final = h[:, :, :n], h[:, :, n]
    else:
        h, final = h.unflatten(-1, (P, N)), None
    Ce = Cm * b.exp()[..., None]  # (B, H, n, C, N): e^{b_t} C_t
    y = torch.baddbmm((M @ xh).flatten(0, 2), Ce.flatten(0, 2), h.transpose(-1, -2).flatten(0, 2))  # (BHn, C, P)
    return y.view(Bsz, H, n, C, P).permute(0, 2, 3, 1, 4).reshape(Bsz, n * C, H, P)[:, :T], final


def ssd_step(x: Tensor, dt: Tensor, A: Tensor, D: Tensor, Bm: Tensor, Cm: Tensor,
             h: Tensor) -> tuple[Tensor, Tensor]:
    """One token of the recurrence: x (B, 1, H, P), dt (B, 1, H), Bm, Cm (B, 1, N), h (B, H, P, N)."""
    x, dt, Bm, Cm = x[:, 0], dt[:, 0], Bm[:, 0], Cm[:, 0]
    h = (dt * A).exp()[..., None, None] * h + (x * dt[..., None])[..., None] * Bm[:, None, None]  # (B, H, P, N)
    return ((h @ Cm[:, None, :, None])[..., 0] + D[:, None] * x)[:, None], h  # y (B, 1, H, P)


class CausalConv(torch.autograd.Function):
    """Depthwise causal conv in the (B, T, channels) layout: y_t = b + sum_k w_k ⊙ x_{t + k - K + 1}, where the
    first `past` rows of x precede the T outputs and rows before x are zeros. As K shifted in-place products it
    needs no transposed copies (conv1d wants (B, channels, T)), which cost more than the conv itself on CPU, as
    does conv1d's weight gradient at batch 1; with past = 0 it reads in_proj's output in place.

    x (B, past + T, Ch), w (Ch, K), b (Ch,) -> y (B, T, Ch)."""

    @staticmethod
    def taps(K: int, T: int, past: int):
        """(k, output rows, input rows) of every tap that reaches an input, the unshifted one (k = K - 1) first."""
        for k in reversed(range(K)):
            start = max(0, K - 1 - k - past)  # the first output whose input row for tap k exists
            if start < T:
                yield k, slice(start, T), slice(past + start + k - K + 1, past + T + k - K + 1)

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor, past: int) -> Tensor:
        (k, _, rows), *taps = CausalConv.taps(w.shape[1], x.shape[1] - past, past)
        y = torch.addcmul(b, x[:, rows], w[:, k])
        for k, out, rows in taps:
            y[:, out].addcmul_(x[:, rows], w[:, k])
        ctx.past = past
        ctx.save_for_backward(x, w)
        return y

    @staticmethod
    def backward(ctx, g: Tensor):
        x, w = ctx.saved_tensors
        dx, dw = torch.zeros_like(x), torch.zeros_like(w)
        for k, out, rows in CausalConv.taps(w.shape[1], g.shape[1], ctx.past):
            dx[:, rows].addcmul_(g[:, out], w[:, k])
            dw[:, k] = (g[:, out] * x[:, rows]).sum((0, 1))
        return dx, dw, g.sum((0, 1)), None


class Mamba2(Mixer):
    section = Mamba2Config
    width_knob = "heads"  # an integer that keeps E a multiple of headdim at every width
    lora_targets = ("in_proj", "out_proj")
    position_hooks = ()  # applies none: its recurrence and causal conv order the tokens

    def __init__(self, cfg, position: nn.Module | None = None):
        super().__init__()  # `position` is unused: the recurrence and the causal conv carry order
        m = self.options(cfg)
        self.d_inner = self.inner(cfg)
        self.headdim, self.d_state, self.d_conv, self.chunk_size = m.headdim, m.d_state, m.d_conv, m.chunk_size
        self.n_heads, self.eps, self.backend = self.d_inner // m.headdim, cfg.norm_eps, m.backend
        self.kernel = None if m.backend == "torch" else kernels.load("mamba2", m.backend, *KERNELS[m.backend])
        E, N, H = self.d_inner, self.d_state, self.n_heads
        self.in_proj = nn.Linear(cfg.d_model, 2 * E + 2 * N + H, bias=False)  # z, x, B, C, dt in one matmul
        self.conv_weight = nn.Parameter(torch.empty(E + 2 * N, m.d_conv))  # depthwise, over x, B and C
        self.conv_bias = nn.Parameter(torch.empty(E + 2 * N))
        self.dt_bias = nn.Parameter(torch.empty(H))
        self.A_log = nn.Parameter(torch.empty(H))
        self.D = nn.Parameter(torch.empty(H))
        self.norm_weight = nn.Parameter(torch.empty(E))
        self.out_proj = nn.Linear(E, cfg.d_model, bias=False)
        self.reset_special_parameters()

    @torch.no_grad()
    def reset_special_parameters(self) -> None:
        H, bound = self.n_heads, self.d_conv ** -0.5  # nn.Conv1d's default for a depthwise conv: U(+-1/sqrt(K))
        self.conv_weight.uniform_(-bound, bound)
        self.conv_bias.uniform_(-bound, bound)
        self.A_log.copy_(torch.empty(H).uniform_(1, 16).log())
        self.D.fill_(1.0)
        self.norm_weight.fill_(1.0)
        dt_min, dt_max = 1e-3, 1e-1
        dt = torch.exp(torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=1e-4)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)

    @staticmethod
    def check_config(cfg) -> None:
        Mamba2.inner(cfg)

    @staticmethod
    def inner(cfg) -> int:
        m = Mamba2.options(cfg)
        if m.heads:
            return m.heads * m.headdim
        E = m.expand * cfg.d_model
        if E % m.headdim:
            key = section_name(cfg, Mamba2Config)
            raise ValueError(f"{key}.headdim={m.headdim} must divide the inner width expand * d_model = "
                             f"{m.expand} * {cfg.d_model} = {E}; pick a divisor of {E} or set model.{key}.heads")
        return E

    def residual_projections(self) -> list[nn.Linear]:
        return [self.out_proj]

    def no_decay_parameters(self) -> list[nn.Parameter]:
        return [self.A_log, self.D, self.dt_bias, self.norm_weight]  # as the reference: no decay towards 0

    @staticmethod
    def flops_per_token(cfg, seq_len: int) -> float:
        """Forward, per token: C B^T once for all heads (2 C N), (L ⊙ C B^T dt) X (2 C P per head), the chunk
        states X^T (dt e^{b_C - b} B) and e^b C h_in (2 P N each per head), and the state passing, a lower
        triangular (n, n) decay matrix times the n chunk states (2 n P N per head and chunk, n = T / C chunks);
        x3 with backward. Elementwise work (decays, the gate, the norm) is left out; the projections and the
        conv are parameters (6 N covers them)."""
        E, N = Mamba2.inner(cfg), Mamba2.options(cfg).d_state
        C = min(Mamba2.options(cfg).chunk_size, seq_len)
        return 3 * (2 * C * N + 2 * C * E + 4 * E * N + 2 * E * N * math.ceil(seq_len / C) / C)

    @staticmethod
    def activation_bytes(cfg, seq_len: int, s: int) -> float:
        """Kept for backward, per token (matches tests' `saved_activation_bytes` to < 0.1% in fp32, bf16-mixed and
        bf16-true). In s bytes: the input, in_proj's output (SiLU(z) and the conv keep their views z and xBC), the
        conv output (kept by its SiLU) and out_proj's input. In the fp32 core: B and C; SiLU(z), x in chunk layout,
        y, y ⊙ SiLU(z) and its normalised copy (5 E); L, C B^T dt and L ⊙ C B^T dt (3 H C) with C B^T (C); the
        decayed B and C (2 H N); the chunk states and the states entering the chunks (2 E N / C); the chunk decay
        matrix (H n / C, n = T / C chunks); per-head scalars (dt, its pre-activation, decays: ~5 H). T not a
        multiple of C pads the last chunk: up to C - 1 tokens' worth more, left out."""
        D, m = cfg.d_model, Mamba2.options(cfg)
        E = Mamba2.inner(cfg)
        H, N = E // m.headdim, m.d_state
        C, conv = min(m.chunk_size, seq_len), E + 2 * N
        n = math.ceil(seq_len / C)
        kept = D + (2 * E + 2 * N + H) + conv + E
        core = 5 * E + 2 * N + 3 * H * C + C + 2 * H * N + 2 * E * N / C + H * n / C + 5 * H
        return s * kept + 4 * core

    @staticmethod
    def cache_bytes(cfg, seq_len: int, s: int) -> float:
        """Fixed: the last d_conv - 1 conv inputs (E + 2N each, s bytes) and h (H, P, N) fp32 (H P = E)."""
        m, E = Mamba2.options(cfg), Mamba2.inner(cfg)
        return s * (m.d_conv - 1) * (E + 2 * m.d_state) + 4 * E * m.d_state

    def init_cache(self, batch_size: int, device, dtype) -> tuple[Tensor, Tensor]:
        conv_state = torch.zeros(batch_size, self.d_conv - 1, self.d_inner + 2 * self.d_state, device=device,
                                 dtype=dtype)
        f32 = torch.promote_types(dtype, torch.float32)
        ssm_state = torch.zeros(batch_size, self.n_heads, self.headdim, self.d_state, device=device, dtype=f32)
        return conv_state, ssm_state

    def forward(self, u: Tensor, cache: tuple[Tensor, Tensor] | None = None, offset: int = 0):
        Bsz, T, _ = u.shape
        E, N, H, P, K = self.d_inner, self.d_state, self.n_heads, self.headdim, self.d_conv
        z, xBC, dt = self.in_proj(u).split([E, E + 2 * N, H], dim=-1)  # (B, T, E), (B, T, E + 2N), (B, T, H)
        if cache is None:
            conv_in, past = xBC, 0  # zeros before the first token: the conv reads in_proj's output in place
        else:
            conv_in, past = torch.cat([cache[0].to(xBC.dtype), xBC], dim=1), K - 1  # (B, K - 1 + T, E + 2N)
        xBC = F.silu(CausalConv.apply(conv_in, self.conv_weight.to(xBC.dtype), self.conv_bias.to(xBC.dtype), past))
        f32 = torch.promote_types(u.dtype, torch.float32)  # the core runs in fp32 (fp64 in fp64 tests)
        with torch.autocast(u.device.type, enabled=False):
            x, Bm, Cm = xBC.split([E, N, N], dim=-1)  # (B, T, E + 2N) -> (B, T, E), (B, T, N), (B, T, N)
            x = x.to(f32).unflatten(-1, (H, P))  # (B, T, H, P)
            Bm, Cm = Bm.to(f32).contiguous(), Cm.to(f32).contiguous()  # copies: the conv output is not kept
            dt = F.softplus(dt.to(f32) + self.dt_bias.to(f32))  # (B, T, H)
            A, D = -torch.exp(self.A_log.to(f32)), self.D.to(f32)  # (H,)
            if cache is None and self.kernel is not None:
                y, h = self.kernel_ssd(x, dt, A, Bm, Cm) + D[:, None] * x, None
            elif cache is not None and T == 1:
                y, h = ssd_step(x, dt, A, D, Bm, Cm, cache[1].to(f32))
            else:
                h0 = None if cache is None else cache[1].to(f32)
                y, h = ssd_chunked(x, dt, A, D, Bm, Cm, h0, self.chunk_size)
            y = F.rms_norm(y.reshape(Bsz, T, E) * F.silu(z).to(f32), (E,), self.norm_weight.to(f32), self.eps)
        out = self.out_proj(y.to(u.dtype))  # (B, T, D)
        return out, (None if cache is None else (conv_in[:, T:], h))  # the last K - 1 conv inputs, the state

    def kernel_ssd(self, x: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor) -> Tensor:
        """The SSD core through the CUDA kernel of `backend` (no initial state): y (B, T, H, P), without D x."""
        kernels.require_cuda(x, "mamba2", self.backend)
        if self.backend == "mamba_ssm":  # groups of B and C: (B, T, 1, N)
            return self.kernel(x, dt, A, Bm[:, :, None], Cm[:, :, None], self.chunk_size)
        shape = (*dt.shape, self.d_state)  # (B, T, H, N): fla wants per-head q and k
        y, _ = self.kernel(Cm[:, :, None].expand(shape).contiguous(), Bm[:, :, None].expand(shape).contiguous(),
                           x * dt[..., None], g=dt * A, scale=1.0)
        return y
