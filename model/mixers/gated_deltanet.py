"""Gated DeltaNet: the delta rule with a data-dependent decay (`model.mixer=gated_deltanet`).

Yang, Kautz, Hatamizadeh 2024, "Gated Delta Networks: Improving Mamba2 with Delta Rule" (arXiv:2412.06464), eq. 10.
Per head, the fast-weight memory S (d_v, d_k) first decays by alpha_t (Mamba2's gate) and is then corrected
towards v_t for key k_t (DeltaNet's delta rule, model/mixers/deltanet.py):

    S_t = S_{t-1} (alpha_t (I - beta_t k_t k_t^T)) + beta_t v_t k_t^T,        o_t = S_t q_t
    alpha_t = exp(-e^{A_log} softplus(x_t W_alpha + dt_bias)) in (0, 1),     beta_t = sigmoid(x_t W_beta)

one alpha and one beta per head and token. Features as the paper and fla's `GatedDeltaNet` layer: a short causal
depthwise conv (width `conv_size`, mamba2.py's `CausalConv`) then SiLU on q, k and v; q and k L2-normalised per
head (||k|| = 1 keeps every I - beta k k^T a contraction), q scaled by d^-0.5; y = W_o (RMSNorm_h(o) ⊙ swish(x W_g))
(RMSNorm per head, weight shared). A_log and dt_bias are initialised as Mamba2's (A uniform in [1, 16],
dt log-uniform in [1e-3, 1e-1]) and not decayed.

The state is stored transposed, M = S^T (d_k, d_v), as in deltanet.py: M_t = alpha_t M_{t-1} + k_t delta_t^T with
delta_t = beta_t (v_t - alpha_t M_{t-1}^T k_t). Chunked form (§3.3, the decay-aware WY / UT transform): for a chunk
of C tokens Q, K, V (C, d), beta (C,), with b_t = sum_{r<=t} log alpha_r counted from the chunk start, entering
with state M,

    Gamma    = e^{b_t - b_s} for s <= t, else 0                         (C, C), every entry in [0, 1]
    A        = strictly-lower(diag(beta) (K K^T ⊙ Gamma))               (C, C)
    [W | U]  = (I + A)^-1 diag(beta) [e^b ⊙ K | V]                       a unit lower-triangular solve
    Delta    = U - W M                                                   the chunk's pseudo-values, (C, d_v)
    O        = (e^b ⊙ Q) M + (Q K^T ⊙ Gamma) Delta,      M <- e^{b_C} M + (e^{b_C - b} ⊙ K)^T Delta

(row t of (I + A) Delta = diag(beta)(V - e^b K M) is the delta_t above, unrolled to the chunk start). Only
differences b_t - b_s with s <= t are exponentiated, so any decay is exact in fp32: no floor as in gla.py. With
alpha = 1 this is deltanet.py's `chunked_delta_rule` (tested). The last chunk is zero-padded: zero keys, values,
beta and log-decay leave the state as it is. Decoding runs the same code with the cache as M_0.

Positions: none (as the paper): `position` is not applied; the decay, the recurrence and the conv carry order.
Backend `fla` (training only, cache None): fla's `chunk_gated_delta_rule` Triton kernel on the same q (normalised
and scaled, so scale 1), unit k, v, beta and log-decay g (natural log, as here), in (B, T, H, d) layout with bf16
q, k, v and beta (g stays fp32, as fla's own layer passes it); the conv, the gates and the output norm stay the
torch code.
Shapes: x (B, T, D) -> q, k, v (B, T, H, d), d = D / H, alpha, beta (B, T, H) -> o (B, T, H, d) -> y (B, T, D).
Cache: (conv_state (B, conv_size - 1, 3 H d), the last conv inputs; M (B, H, d, d) fp32).
The core (L2 norms, decay, delta rule, output norm) runs in fp32 with autocast off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.component import Mixer
from model.mixers import kernels
from model.mixers.mamba2 import CausalConv
from model.norm import RMSNorm
from model.options import Options, option


def chunked_gated_delta_rule(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor, state: Tensor,
                             chunk_size: int) -> tuple[Tensor, Tensor]:
    """o_t = q_t M_t, M_t = e^{g_t} (I - beta_t k_t k_t^T) M_{t-1} + beta_t k_t v_t^T, M_0 = state, chunk by chunk.

    q, k (B, H, T, dk), v (B, H, T, dv), beta and the log-decay g (B, H, T), state (B, H, dk, dv)
    -> o (B, H, T, dv) and M_T."""
    B, H, T, dk = q.shape
    dv = v.shape[-1]
    C = min(chunk_size, T)
    N = -(-T // C)
    pad = N * C - T  # zero keys, values, beta and log-decay leave the state as it is; padded queries are dropped
    q = F.pad(q, (0, 0, 0, pad)).view(B, H, N, C, dk)  # (B, H, N, C, dk)
    k = F.pad(k, (0, 0, 0, pad)).view(B, H, N, C, dk)  # (B, H, N, C, dk)
    v = F.pad(v, (0, 0, 0, pad)).view(B, H, N, C, dv)  # (B, H, N, C, dv)
    beta = F.pad(beta, (0, pad)).view(B, H, N, C, 1)  # (B, H, N, C, 1)
    b = F.pad(g, (0, pad)).view(B, H, N, C, 1).cumsum(dim=3)  # (B, H, N, C, 1): from the chunk start
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    gamma = (b - b.transpose(-1, -2)).masked_fill(~causal, -math.inf).exp()  # (B, H, N, C, C): e^{b_t - b_s}
    kk = ((beta * k) @ k.transpose(-1, -2)) * gamma  # (B, H, N, C, C): the solve reads its strictly lower part, A
    rhs = beta * torch.cat([b.exp() * k, v], dim=-1)  # (B, H, N, C, dk + dv)
    w, u = torch.linalg.solve_triangular(kk, rhs, upper=False, unitriangular=True).split([dk, dv], dim=-1)
    scores = (q @ k.transpose(-1, -2)) * gamma  # (B, H, N, C, C), causal through gamma
    qb = q * b.exp()  # (B, H, N, C, dk)
    last = b[:, :, :, -1:]  # (B, H, N, 1, 1): the chunk's total log-decay
    kb = k * (last - b).exp()  # (B, H, N, C, dk)
    out = []
    for n in range(N):  # the state entering chunk n, its pseudo-values, then M <- e^{b_C} M + K_b^T Delta
        delta = u[:, :, n] - w[:, :, n] @ state  # (B, H, C, dv)
        out.append(qb[:, :, n] @ state + scores[:, :, n] @ delta)  # (B, H, C, dv)
        state = last[:, :, n].exp() * state + kb[:, :, n].transpose(-1, -2) @ delta
    return torch.stack(out, dim=2).view(B, H, N * C, dv)[:, :, :T], state


@dataclass
class GatedDeltaNetConfig(Options):
    chunk_size: int = option(64, min=1)  # quadratic (and a C x C triangular solve) inside a chunk, state across
    conv_size: int = option(4, min=1)  # short causal depthwise conv on q, k, v; 1 = none (a per-channel scale)
    # torch (reference) | fla (Triton kernel, GPU only)
    backend: str = option("torch", choices=("torch", "fla"), runtime=True)


class GatedDeltaNet(Mixer):
    section = GatedDeltaNetConfig
    lora_targets = ("q_proj", "k_proj", "v_proj", "g_proj", "o_proj")
    position_hooks = ()  # applies none: its decay, recurrence and causal conv order the tokens

    def __init__(self, cfg, position: nn.Module | None = None):
        super().__init__()  # `position` is unused (see the module docstring)
        gd = self.options(cfg)
        self.kernel = (kernels.load("gated_deltanet", "fla", "fla.ops.gated_delta_rule", "chunk_gated_delta_rule")
                       if gd.backend == "fla" else None)
        self.n_heads, self.head_dim, self.conv_size, self.chunk_size = cfg.n_heads, cfg.head_dim, gd.conv_size, \
            gd.chunk_size
        D, E, H = cfg.d_model, cfg.n_heads * cfg.head_dim, cfg.n_heads
        self.q_proj = nn.Linear(D, E, bias=False)
        self.k_proj = nn.Linear(D, E, bias=False)
        self.v_proj = nn.Linear(D, E, bias=False)
        self.a_proj = nn.Linear(D, H, bias=False)  # alpha's input, one per head
        self.b_proj = nn.Linear(D, H, bias=False)  # beta = sigmoid(x W_beta), one per head
        self.g_proj = nn.Linear(D, E, bias=False)  # the swish output gate
        # depthwise over q, k and v, nn.Conv1d's (channels, 1, K) layout: a filter per channel, not a matrix (Muon)
        self.conv_weight = nn.Parameter(torch.empty(3 * E, 1, gd.conv_size))
        self.conv_bias = nn.Parameter(torch.empty(3 * E))
        self.A_log = nn.Parameter(torch.empty(H))
        self.dt_bias = nn.Parameter(torch.empty(H))
        self.norm = RMSNorm(cfg.head_dim, cfg.norm_eps)  # per head
        self.o_proj = nn.Linear(E, D, bias=False)
        self.reset_special_parameters()

    @torch.no_grad()
    def reset_special_parameters(self) -> None:
        bound = self.conv_size ** -0.5  # nn.Conv1d's default for a depthwise conv: U(+-1/sqrt(K))
        self.conv_weight.uniform_(-bound, bound)
        self.conv_bias.uniform_(-bound, bound)
        H = self.n_heads
        self.A_log.copy_(torch.empty(H).uniform_(1, 16).log())
        dt = torch.exp(torch.rand(H) * (math.log(1e-1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)

    def residual_projections(self) -> list[nn.Linear]:
        return [self.o_proj]

    def no_decay_parameters(self) -> list[nn.Parameter]:
        return [self.A_log, self.dt_bias]  # the decay rates, as Mamba2's

    @staticmethod
    def flops_per_token(cfg, seq_len: int) -> float:
        """Forward, per head and token: diag(beta) K K^T, the triangular solve for [W | U] (C^2 (dk + dv) / 2
        multiply-adds per chunk), Q K^T and the scores times Delta, 2 C d FLOPs each (8 C d); W M, Q M and K^T Delta,
        2 d^2 each (6 d^2); x3 with backward. The decays (C^2 per chunk), beta, the L2 norms and the output norm
        are O(C + d) and left out; the conv's weights are parameters (6 N counts them)."""
        C = min(GatedDeltaNet.options(cfg).chunk_size, seq_len)
        return 6 * cfg.n_heads * cfg.head_dim * (4 * C + 3 * cfg.head_dim)

    @staticmethod
    def activation_bytes(cfg, seq_len: int, s: int) -> float:
        """Fitted to tests' `saved_activation_bytes` (CPU, fp32 and bf16-mixed, T = 32, D 64 to 128, H 2 to 6,
        C 4 to T: within 4%). In s bytes the input, the conv's input [q | k | v] (3 E) and o_proj's input (E). In
        fp32 ~22 E: the conv output, SiLU's outputs, q, k, v and beta in chunk layout, e^b Q, e^{b_C - b} K, the
        solve's right-hand side and solution (2 E each), the layout copies batched matmuls make, Delta, the output
        before and after its norm, the gate and its swish; ~7 H C: the decay matrix, diag(beta) K K^T and the
        scores, each before and after their masks and copies; ~1.5 H d^2 / C: the states entering each chunk."""
        D, H, d = cfg.d_model, cfg.n_heads, cfg.head_dim
        E, C = H * d, min(GatedDeltaNet.options(cfg).chunk_size, seq_len)
        return s * (D + 4 * E) + 4 * (22 * E + 7 * H * C + 1.5 * H * d * d / C)

    @staticmethod
    def cache_bytes(cfg, seq_len: int, s: int) -> float:
        """Fixed: the last conv_size - 1 inputs of q, k, v (3 H d each, s bytes) and M (H, d, d) fp32."""
        E = cfg.n_heads * cfg.head_dim
        return s * 3 * E * (GatedDeltaNet.options(cfg).conv_size - 1) + 4 * E * cfg.head_dim

    def init_cache(self, batch_size: int, device, dtype) -> tuple[Tensor, Tensor]:
        E = self.n_heads * self.head_dim
        conv_state = torch.zeros(batch_size, self.conv_size - 1, 3 * E, device=device, dtype=dtype)
        # the state stays fp32 whatever the model dtype (see the module docstring)
        M = torch.zeros(batch_size, self.n_heads, self.head_dim, self.head_dim, device=device, dtype=torch.float32)
        return conv_state, M

    def forward(self, x: Tensor, cache: tuple[Tensor, Tensor] | None = None, offset: int = 0):
        B, T, _ = x.shape
        H, d, K = self.n_heads, self.head_dim, self.conv_size
        qkv = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)  # (B, T, 3E)
        if cache is None:
            conv_in, past = qkv, 0  # zeros before the first token
        else:
            conv_in, past = torch.cat([cache[0].to(qkv.dtype), qkv], dim=1), K - 1  # (B, K - 1 + T, 3E)
        qkv = CausalConv.apply(conv_in, self.conv_weight[:, 0].to(qkv.dtype), self.conv_bias.to(qkv.dtype), past)
        a, beta, gate = self.a_proj(x), self.b_proj(x), self.g_proj(x)  # (B, T, H), (B, T, H), (B, T, E)
        with torch.autocast(x.device.type, enabled=False):
            f32 = torch.promote_types(x.dtype, torch.float32)  # fp32 (fp64 in fp64 tests)
            q, k, v = F.silu(qkv.to(f32)).view(B, T, 3, H, d).transpose(1, 3).unbind(2)  # (B, H, T, d) each
            q = F.normalize(q, dim=-1) * d ** -0.5
            k = F.normalize(k, dim=-1)  # unit keys
            g = -self.A_log.to(f32).exp() * F.softplus(a.to(f32) + self.dt_bias.to(f32))  # (B, T, H): log alpha
            beta = torch.sigmoid(beta.to(f32))  # (B, T, H)
            if cache is None and self.kernel is not None:
                o, M = self.fla(q, k, v, beta, g), None  # (B, H, T, d)
            else:
                M0 = self.init_cache(B, x.device, x.dtype)[1] if cache is None else cache[1]
                o, M = chunked_gated_delta_rule(q, k, v, beta.transpose(1, 2), g.transpose(1, 2), M0.to(f32),
                                                self.chunk_size)  # (B, H, T, d)
            o = self.norm(o.transpose(1, 2)) * F.silu(gate.to(f32)).view(B, T, H, d)  # (B, T, H, d)
        y = self.o_proj(o.reshape(B, T, H * d).to(x.dtype))  # (B, T, D)
        return y, (None if cache is None else (conv_in[:, conv_in.shape[1] - (K - 1):], M))

    def fla(self, q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor) -> Tensor:
        """fla's chunk kernel on q, k, v (B, H, T, d), which it wants as (B, T, H, d) (fla >= 0.2), beta and the
        log-decay g (B, T, H) -> o (B, H, T, d) fp32."""
        kernels.require_cuda(q, "gated_deltanet", "fla")
        half = torch.bfloat16
        q, k, v = (t.transpose(1, 2).to(half) for t in (q, k, v))  # (B, T, H, d) each
        o, _ = self.kernel(q, k, v, g, beta.to(half), scale=1.0)  # (B, T, H, d)
        return o.transpose(1, 2).float()
