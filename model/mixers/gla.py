"""Gated linear attention (`model.mixer=gla`).

Yang et al. 2023, "Gated Linear Attention Transformers with Hardware-Efficient Training" (arXiv:2312.06635), §3-4.
Per head, linear attention with a data-dependent diagonal decay of the state:

    alpha_t = sigmoid(x_t W_1 W_2 + b)^(1/tau)   in (0, 1)^{d_k}     (W_1 W_2 of rank `gate_rank`, tau `gate_tau`)
    S_t = diag(alpha_t) S_{t-1} + k_t^T v_t        (d_k, d_v)
    o_t = q_t S_t                                   q scaled by d^-0.5 (as fla's GLA)
    y_t = W_o (swish(x_t W_r) ⊙ RMSNorm(o_t))       RMSNorm per head (weight shared by the heads)

Chunked parallel form (§4.2, one level of chunking): split T into chunks of C tokens; inside a chunk, with the
cumulative log-decay b_t = sum_{r<=t} log alpha_r counted from the chunk start (fp32),

    O = ((Q ⊙ e^b)(K ⊙ e^-b)^T ⊙ M) V + (Q ⊙ e^b) S,    S <- diag(e^{b_C}) S + (K ⊙ e^{b_C - b})^T V

with M the causal mask (s <= t) and S the state entering the chunk (one python step per chunk for the state,
everything else for all chunks at once). e^-b grows inside a chunk, so log alpha is floored at GATE_FLOOR per
token (alpha >= e^-2.5 = 0.08; with tau = 16 this only bites when the gate pre-activation is below -40): then
|b| <= 2.5 C, which stays inside fp32 (e^88) for C <= 32, the default. Larger chunks are correct unless a chunk's
total decay passes e^-88. The floor is part of the model, so the recurrent and chunked forms agree exactly.

Positions: GLA uses none in the paper (the decay orders the tokens), but q and k go through
`position.rotate(q, k, offset)` like every mixer: identity for `model.position=none`, RoPE if configured.

Backend `fla` (training only, cache None): fla's `chunk_gla` Triton kernel on the same q, k, v and log alpha,
(B, T, H, d) layout, scale 1 (q is already scaled); decoding and the norm stay the torch code.

Shapes: x (B, T, D) -> q, k, v, log alpha (B, H, T, d), d = D / H -> o (B, H, T, d) -> y (B, T, D).
Cache: the state S (B, H, d, d) in fp32; the model passes the absolute position of the first new token.
The core runs in fp32 with autocast off (the decays are products over many tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.component import Mixer
from model.mixers import kernels
from model.norm import RMSNorm
from model.options import Options, option

GATE_FLOOR = -2.5  # least log alpha per token: keeps e^-b of a 32-token chunk inside fp32 (see the docstring)


def chunked_gla(q: Tensor, k: Tensor, v: Tensor, g: Tensor, state: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
    """o_t = q_t S_t with S_t = diag(e^{g_t}) S_{t-1} + k_t^T v_t, S_0 = state, chunk by chunk.

    q, k, g (B, H, T, dk), v (B, H, T, dv), state (B, H, dk, dv), all fp32 -> o (B, H, T, dv) and S_T."""
    B, H, T, dk = q.shape
    dv = v.shape[-1]
    C = min(chunk_size, T)
    N = -(-T // C)
    pad = N * C - T  # zero keys add nothing; zero log-decay keeps the state; padded queries are dropped
    q = F.pad(q, (0, 0, 0, pad)).view(B, H, N, C, dk)  # (B, H, N, C, dk)
    k = F.pad(k, (0, 0, 0, pad)).view(B, H, N, C, dk)  # (B, H, N, C, dk)
    v = F.pad(v, (0, 0, 0, pad)).view(B, H, N, C, dv)  # (B, H, N, C, dv)
    b = F.pad(g, (0, 0, 0, pad)).view(B, H, N, C, dk).cumsum(dim=3)  # (B, H, N, C, dk): from the chunk start
    last = b[:, :, :, -1:]  # (B, H, N, 1, dk): the chunk's total log-decay
    qb = q * b.exp()  # (B, H, N, C, dk)
    mask = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    scores = (qb @ (k * (-b).exp()).transpose(-1, -2)).masked_fill(~mask, 0.0)  # (B, H, N, C, C)
    kv = (k * (last - b).exp()).transpose(-1, -2) @ v  # (B, H, N, dk, dv): the chunk's own addition to S
    decay = last.exp().transpose(-1, -2)  # (B, H, N, dk, 1)
    entering = []
    for n in range(N):  # the state entering chunk n, then S <- diag(decay) S + kv
        entering.append(state)
        state = decay[:, :, n] * state + kv[:, :, n]
    o = scores @ v + qb @ torch.stack(entering, dim=2)  # (B, H, N, C, dv)
    return o.view(B, H, N * C, dv)[:, :, :T], state


@dataclass
class GLAConfig(Options):
    chunk_size: int = option(32, min=1)  # quadratic inside a chunk; <= 32 keeps e^-b in fp32 (see GATE_FLOOR)
    gate_rank: int = option(16, min=1)  # rank of W_alpha = W_1 W_2 (the paper's 16): few parameters for the decay
    gate_tau: float = option(16.0, above=0.0)  # alpha = sigmoid(.)^(1/tau): large tau keeps alpha near 1 (long memory)
    # torch (reference) | fla (Triton kernel, GPU only)
    backend: str = option("torch", choices=("torch", "fla"), runtime=True)


class GatedLinearAttention(Mixer):
    section = GLAConfig
    lora_targets = ("q_proj", "k_proj", "v_proj", "r_proj", "o_proj")

    def __init__(self, cfg, position: nn.Module):
        super().__init__()
        gla = self.options(cfg)
        self.kernel = kernels.load("gla", "fla", "fla.ops.gla", "chunk_gla") if gla.backend == "fla" else None
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.chunk_size, self.tau = gla.chunk_size, gla.gate_tau
        self.position = position
        inner = cfg.n_heads * cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, inner, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, inner, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, inner, bias=False)
        self.r_proj = nn.Linear(cfg.d_model, inner, bias=False)  # the swish output gate
        self.gate_down = nn.Linear(cfg.d_model, gla.gate_rank, bias=False)  # W_1
        self.gate_up = nn.Linear(gla.gate_rank, inner, bias=True)  # W_2, b
        self.norm = RMSNorm(cfg.head_dim, cfg.norm_eps)  # per head
        self.o_proj = nn.Linear(inner, cfg.d_model, bias=False)

    def residual_projections(self) -> list[nn.Linear]:
        return [self.o_proj]

    @staticmethod
    def flops_per_token(cfg, seq_len: int) -> float:
        # forward, per head: the chunk scores and scores @ V (2 * 2 C d), Q S and the chunk's K^T V (2 * 2 d^2),
        # plus the elementwise decay work (~ 8 d, counted as 0 here, like the softmax mask); x3 with backward
        C = min(GatedLinearAttention.options(cfg).chunk_size, seq_len)
        return 12 * cfg.n_heads * cfg.head_dim * (C + cfg.head_dim)

    @staticmethod
    def activation_bytes(cfg, seq_len: int, s: int) -> float:
        """Measured with tests' `saved_activation_bytes` (fp32, T = 32, C = 8 and 32): the gate's low-rank hidden
        and o_proj's input (s (D + r); the input x is the block norm's output, counted by `train.estimate`);
        ~20 D fp32 copies for the rest: q, k, v and the gate pre-activation cast to fp32, RoPE's products,
        log alpha, b, e^b, e^-b, Q e^b, K e^-b, e^{b_C - b}, K e^{b_C - b} (and the layout copies batched matmuls
        make of them), the norm's input and output, the swish gate and its input; the chunk scores (H C), the
        states entering the chunks and their decays (2 H d^2 / C) and the norm's rsqrt (H)."""
        D, H, d = cfg.d_model, cfg.n_heads, cfg.head_dim
        gla = GatedLinearAttention.options(cfg)
        C = min(gla.chunk_size, seq_len)
        return s * (D + gla.gate_rank) + 4 * (20 * D + H * C + 2 * H * d * d / C + H)

    @staticmethod
    def cache_bytes(cfg, seq_len: int, s: int) -> float:
        """Fixed: S (H, d, d) fp32, whatever the length."""
        return 4 * cfg.n_heads * cfg.head_dim ** 2

    def init_cache(self, batch_size: int, device, dtype) -> Tensor:
        # the state stays fp32 whatever the model dtype (see the module docstring)
        return torch.zeros(batch_size, self.n_heads, self.head_dim, self.head_dim, device=device,
                           dtype=torch.float32)

    def forward(self, x: Tensor, cache: Tensor | None = None, offset: int = 0):
        B, T, _ = x.shape
        H, d = self.n_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, d).transpose(1, 2)  # (B, H, T, d)
        k = self.k_proj(x).view(B, T, H, d).transpose(1, 2)  # (B, H, T, d)
        v = self.v_proj(x).view(B, T, H, d).transpose(1, 2)  # (B, H, T, d)
        z = self.gate_up(self.gate_down(x)).view(B, T, H, d).transpose(1, 2)  # (B, H, T, d)
        r = self.r_proj(x)  # (B, T, H*d)
        S0 = self.init_cache(B, x.device, x.dtype) if cache is None else cache
        with torch.autocast(x.device.type, enabled=False):
            q, k = self.position.rotate(q.float() * d ** -0.5, k.float(), offset)
            g = (F.logsigmoid(z.float()) / self.tau).clamp(min=GATE_FLOOR)  # (B, H, T, d): log alpha
            if cache is None and self.kernel is not None:
                o, S = self.fla(q, k, v.float(), g), None  # (B, H, T, d)
            else:
                o, S = chunked_gla(q, k, v.float(), g, S0, self.chunk_size)  # (B, H, T, d)
            o = self.norm(o).transpose(1, 2).reshape(B, T, H * d)  # (B, T, H*d)
            y = (F.silu(r.float()) * o).to(x.dtype)  # (B, T, H*d)
        return self.o_proj(y), (None if cache is None else S)

    def fla(self, q: Tensor, k: Tensor, v: Tensor, g: Tensor) -> Tensor:
        """fla's chunk kernel on q, k, v, log alpha (B, H, T, d), which it wants as (B, T, H, d) (fla >= 0.2)
        -> o (B, H, T, d) fp32."""
        kernels.require_cuda(q, "gla", "fla")
        o, _ = self.kernel(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), g.transpose(1, 2), scale=1.0)
        return o.transpose(1, 2).float()
