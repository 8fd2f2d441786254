"""DeltaNet: linear attention with the delta rule (`model.mixer=deltanet`).

Yang et al. 2024, "Parallelizing Linear Transformers with the Delta Rule over Sequence Length" (arXiv:2406.06484),
after Schlag et al. 2021 (fast weight programmers). Per head, the state is a fast-weight memory that each token
corrects towards v_t for key k_t instead of only adding to (the paper's eq. 1, S (d_v, d_k)):

    S_t = S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T,        o_t = S_t q_t

with beta_t = sigmoid(x_t W_beta) in (0, 1) per head and q, k L2-normalised per head (||k|| = 1 keeps every
I - beta k k^T a contraction). Features as the paper and fla's `DeltaNet` layer: a short causal depthwise conv
(width `conv_size`) on q, k and v, SiLU on q and k (`feature_map=silu`, or identity) and on v, q scaled by d^-0.5,
then y = W_o (RMSNorm_h(o)), or W_o (swish(x W_g) ⊙ RMSNorm_h(o)) with `gate=true` (RMSNorm per head, weight shared).

Here the state is stored transposed, M = S^T (d_k, d_v), the layout of fla's kernels, and rows are tokens:
M_t = M_{t-1} + k_t delta_t^T with the pseudo-value delta_t = beta_t (v_t - M_{t-1}^T k_t), o_t = q_t M_t.
Chunked parallel form (§3, the WY representation computed with the UT transform): for a chunk of C tokens
Q, K, V (C, d), beta (C,) entering with state M,

    A        = strictly-lower(diag(beta) K K^T)                   (C, C)
    [W | U]  = (I + A)^-1 diag(beta) [K | V]                       a unit lower-triangular solve, (C, d_k + d_v)
    Delta    = U - W M                                             the chunk's pseudo-values, (C, d_v)
    O        = Q M + (Q K^T ⊙ M_causal) Delta,        M <- M + K^T Delta

(row t of (I + A) Delta = diag(beta)(V - K M) is delta_t = beta_t (v_t - M^T k_t - sum_{s<t} (k_t . k_s) delta_s)).
A, the solve and Q K^T run for all chunks at once; the state passes through the N = T / C chunks in a python loop
of (C, d) x (d, d) products, as retnet.py and gla.py do. The last chunk is zero-padded: zero keys, values and beta
add nothing, so the returned state is exact. Decoding runs the same code with the cache as M_0 (a prompt, a chunk
or one token; for one token it is the recurrence above).

Positions: none (as the paper): `position` is not applied; the recurrence and the conv carry order.
Backend `fla` (training only, cache None): fla's `chunk_delta_rule` Triton kernel on the same q, k, v, beta, in
bf16 (the kernel refuses fp32); the conv, beta and the output norm stay the torch code.

Shapes: x (B, T, D) -> q, k, v (B, T, H, d), d = D / H, beta (B, T, H) -> o (B, T, H, d) -> y (B, T, D).
Cache: (conv_state (B, 3 H d, conv_size - 1), the last conv inputs; M (B, H, d, d) fp32).
The core (L2 norms, beta, delta rule, output norm) runs in fp32 with autocast off.
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

FEATURE_MAPS = {"silu": F.silu, "identity": lambda x: x}


def chunked_delta_rule(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, state: Tensor,
                       chunk_size: int) -> tuple[Tensor, Tensor]:
    """o_t = q_t M_t, M_t = (I - beta_t k_t k_t^T) M_{t-1} + beta_t k_t v_t^T, M_0 = state, chunk by chunk.

    q, k (B, H, T, dk), v (B, H, T, dv), beta (B, H, T), state (B, H, dk, dv) -> o (B, H, T, dv) and M_T."""
    B, H, T, dk = q.shape
    dv = v.shape[-1]
    C = min(chunk_size, T)
    N = -(-T // C)
    pad = N * C - T  # zero keys, values and beta leave the state as it is; padded queries are dropped
    q = F.pad(q, (0, 0, 0, pad)).view(B, H, N, C, dk).contiguous()  # (B, H, N, C, dk)
    k = F.pad(k, (0, 0, 0, pad)).view(B, H, N, C, dk).contiguous()  # (B, H, N, C, dk)
    v = F.pad(v, (0, 0, 0, pad)).view(B, H, N, C, dv).contiguous()  # (B, H, N, C, dv)
    beta = F.pad(beta, (0, pad)).view(B, H, N, C, 1).contiguous()  # (B, H, N, C, 1)
    kk = (beta * k) @ k.transpose(-1, -2)  # (B, H, N, C, C): the solve reads only its strictly lower part, A
    wu = torch.linalg.solve_triangular(kk, beta * torch.cat([k, v], dim=-1), upper=False, unitriangular=True)
    w, u = wu.split([dk, dv], dim=-1)  # (B, H, N, C, dk), (B, H, N, C, dv)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    scores = (q @ k.transpose(-1, -2)).masked_fill(~causal, 0.0)  # (B, H, N, C, C)
    out = []
    for n in range(N):  # the state entering chunk n, its pseudo-values, then M <- M + K^T Delta
        delta = u[:, :, n] - w[:, :, n] @ state  # (B, H, C, dv)
        out.append(q[:, :, n] @ state + scores[:, :, n] @ delta)  # (B, H, C, dv)
        state = state + k[:, :, n].transpose(-1, -2) @ delta
    return torch.stack(out, dim=2).view(B, H, N * C, dv)[:, :, :T], state


@dataclass
class DeltaNetConfig(Options):
    chunk_size: int = option(64, min=1)  # quadratic (and a C x C triangular solve) inside a chunk, state across
    conv_size: int = option(4, min=1)  # short causal depthwise conv on q, k, v; 1 = none (a per-channel scale)
    feature_map: str = option("silu", choices=tuple(FEATURE_MAPS))  # on q and k before their L2 norm
    gate: bool = False  # swish output gate W_g (fla's use_gate); False = plain per-head RMSNorm
    # torch (reference) | fla (Triton kernel, GPU only)
    backend: str = option("torch", choices=("torch", "fla"), runtime=True)


class DeltaNet(Mixer):
    section = DeltaNetConfig
    lora_targets = ("q_proj", "k_proj", "v_proj", "g_proj", "o_proj")
    position_hooks = ()  # applies none: its recurrence and causal conv order the tokens

    def __init__(self, cfg, position: nn.Module | None = None):
        super().__init__()  # `position` is unused (see the module docstring)
        dn = self.options(cfg)
        self.kernel = (kernels.load("deltanet", "fla", "fla.ops.delta_rule", "chunk_delta_rule")
                       if dn.backend == "fla" else None)
        self.n_heads, self.head_dim, self.conv_size = cfg.n_heads, cfg.head_dim, dn.conv_size
        self.chunk_size, self.phi = dn.chunk_size, FEATURE_MAPS[dn.feature_map]
        D, E = cfg.d_model, cfg.n_heads * cfg.head_dim
        self.q_proj = nn.Linear(D, E, bias=False)
        self.k_proj = nn.Linear(D, E, bias=False)
        self.v_proj = nn.Linear(D, E, bias=False)
        self.b_proj = nn.Linear(D, cfg.n_heads, bias=False)  # beta = sigmoid(x W_beta), one per head
        self.g_proj = nn.Linear(D, E, bias=False) if dn.gate else None
        self.conv = nn.Conv1d(3 * E, 3 * E, dn.conv_size, groups=3 * E, bias=False)  # left padding by hand
        self.norm = RMSNorm(cfg.head_dim, cfg.norm_eps)  # per head
        self.o_proj = nn.Linear(E, D, bias=False)

    def reset_special_parameters(self) -> None:
        self.conv.reset_parameters()  # PyTorch's default (Transformer's init covers only Linear and Embedding)

    def residual_projections(self) -> list[nn.Linear]:
        return [self.o_proj]

    @staticmethod
    def flops_per_token(cfg, seq_len: int) -> float:
        """Forward, per head and token: diag(beta) K K^T, the triangular solve for [W | U] (C^2 (dk + dv) / 2
        multiply-adds per chunk), Q K^T and the scores times Delta, 2 C d FLOPs each (8 C d); W M, Q M and K^T Delta,
        2 d^2 each (6 d^2); x3 with backward. beta, the L2 norms and the output norm are O(d) and left out; the
        conv's weights are parameters (6 N counts them)."""
        C = min(DeltaNet.options(cfg).chunk_size, seq_len)
        return 6 * cfg.n_heads * cfg.head_dim * (4 * C + 3 * cfg.head_dim)

    @staticmethod
    def activation_bytes(cfg, seq_len: int, s: int) -> float:
        """s-byte tensors: the input, the conv's zero-padded input (T + K - 1 per sequence) and o_proj's input
        (s (D + 3 E (T + K - 1) / T + E), E = H d). fp32 in the core: the conv outputs (SiLU / L2-norm inputs,
        3 E), phi(q), phi(k) (2 E, silu only), the chunk copies of q, k, the solve's right-hand side [K | V],
        its solution [W | U], beta K, Delta (8 E together), the output before and after its norm (2 E); the
        norms' and beta's per-head scalars (7 H); diag(beta) K K^T and the chunk scores (2 H C); the states
        entering each chunk (H d^2 / C); with the gate its input, swish and the normed output (3 E). Counted with
        saved-tensor hooks on CPU (torch 2.13), checked in tests; with T not a multiple of C the padded chunk adds
        up to C - 1 tokens' worth, left out."""
        dn, D, H, d = DeltaNet.options(cfg), cfg.d_model, cfg.n_heads, cfg.head_dim
        E, C, K = H * d, min(dn.chunk_size, seq_len), dn.conv_size
        fp32 = (15 if dn.feature_map == "silu" else 13) * E + 3 * E * dn.gate + 7 * H + 2 * H * C + H * d * d / C
        return s * (D + 3 * E * (seq_len + K - 1) / seq_len + E) + 4 * fp32

    @staticmethod
    def cache_bytes(cfg, seq_len: int, s: int) -> float:
        """Fixed: the last conv_size - 1 inputs of q, k, v (3 H d each, s bytes) and M (H, d, d) fp32."""
        E = cfg.n_heads * cfg.head_dim
        return s * 3 * E * (DeltaNet.options(cfg).conv_size - 1) + 4 * E * cfg.head_dim

    def init_cache(self, batch_size: int, device, dtype) -> tuple[Tensor, Tensor]:
        E = self.n_heads * self.head_dim
        conv_state = torch.zeros(batch_size, 3 * E, self.conv_size - 1, device=device, dtype=dtype)
        # the state stays fp32 whatever the model dtype (see the module docstring)
        M = torch.zeros(batch_size, self.n_heads, self.head_dim, self.head_dim, device=device, dtype=torch.float32)
        return conv_state, M

    def forward(self, x: Tensor, cache: tuple[Tensor, Tensor] | None = None, offset: int = 0):
        B, T, _ = x.shape
        H, d, K = self.n_heads, self.head_dim, self.conv_size
        conv_state, M0 = self.init_cache(B, x.device, x.dtype) if cache is None else cache
        u = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1).transpose(1, 2)  # (B, 3E, T)
        u = torch.cat([conv_state.to(u.dtype), u], dim=-1)  # (B, 3E, K-1+T): zeros or the cached inputs
        conv_state = u[..., u.shape[-1] - (K - 1):]  # (B, 3E, K-1)
        q, k, v = self.conv(u).transpose(1, 2).view(B, T, 3, H, d).unbind(2)  # (B, T, H, d) each
        beta = self.b_proj(x)  # (B, T, H)
        g = None if self.g_proj is None else self.g_proj(x).view(B, T, H, d)  # (B, T, H, d)
        with torch.autocast(x.device.type, enabled=False):
            f32 = torch.promote_types(x.dtype, torch.float32)  # fp32 (fp64 in fp64 tests)
            q = F.normalize(self.phi(q.to(f32)), dim=-1) * d ** -0.5  # (B, T, H, d)
            k = F.normalize(self.phi(k.to(f32)), dim=-1)  # (B, T, H, d), unit keys
            v, beta = F.silu(v.to(f32)), torch.sigmoid(beta.to(f32))  # (B, T, H, d), (B, T, H)
            if cache is None and self.kernel is not None:
                o, M = self.fla(q, k, v, beta), None  # (B, T, H, d)
            else:
                o, M = chunked_delta_rule(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          beta.transpose(1, 2), M0.to(f32), self.chunk_size)  # (B, H, T, d)
                o = o.transpose(1, 2)  # (B, T, H, d)
            o = self.norm(o)
            if g is not None:
                o = F.silu(g.to(f32)) * o
        y = self.o_proj(o.reshape(B, T, H * d).to(x.dtype))  # (B, T, D)
        return y, (None if cache is None else (conv_state, M))

    def fla(self, q: Tensor, k: Tensor, v: Tensor, beta: Tensor) -> Tensor:
        """fla's chunk kernel, (B, T, H, d) layout (fla >= 0.2); bf16 inputs (it rejects fp32), fp32 output."""
        kernels.require_cuda(q, "deltanet", "fla")
        half = torch.bfloat16
        o, _ = self.kernel(q.to(half), k.to(half), v.to(half), beta.to(half), scale=1.0)  # (B, T, H, d)
        return o.to(q.dtype)
