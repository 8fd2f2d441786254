"""RWKV-7 time mixing: the generalised delta rule with a vector decay (`model.mixer=rwkv7`).

Peng et al. 2025, "RWKV-7 "Goose" with Expressive Dynamic State Evolution" (arXiv:2503.14456), §4. Per head, with
x'_t = x_t + (x_{t-1} - x_t) ⊙ mu_* (token shift, a learned lerp per channel for each of r, w, k, v, a, g):

    r, k, v    = x'_r W_r, x'_k W_k, x'_v W_v                                  receptance, key, value (d each)
    w_t        = exp(-e^{-0.5} sigmoid(w_0 + tanh(x'_w A_w) B_w))  in (0.545, 1)^d    decay, per channel
    a_t        = sigmoid(a_0 + x'_a A_a B_a)                        in (0, 1)^d        in-context learning rate
    kappa_hat  = L2norm(k ⊙ xi)                                      the removal key (xi: `k_k`)
    k~         = k ⊙ (1 + (a - 1) ⊙ alpha)                          the replacement key (alpha: `k_a`)
    S_t        = S_{t-1} (diag(w_t) - kappa_hat_t^T (a_t ⊙ kappa_hat_t)) + v_t^T k~_t      S (d_v, d_k)
    p_t        = GroupNorm_h(S_t r_t^T) + ((r_t ⊙ rho ⊙ k~_t) . 1) v_t     per-head norm, plus the bonus (rho: `r_k`)
    y_t        = W_o (p_t ⊙ g_t),   g_t = sigmoid(x'_g A_g) B_g

with A, B low-rank (LoRA-style, ranks `decay_rank`, `iclr_rank`, `gate_rank`) as in the paper. Kept: token shift,
the vector decay, the in-context learning rate, the removal / replacement keys, the bonus, the per-head GroupNorm
and the low-rank gate. Left out: channel-mix (the block's FFN plays that role) and the value residual (v lerped
towards the first layer's v: the block contract passes nothing between layers). Initialisation as the paper's
first layer (mu_* = 1 - (i / D)^p, w_0 from -5.5 to 0.5 over the channels, xi = 0.85, alpha = 1, rho = -0.04).

The state is stored transposed, M = S^T (d_k, d_v), with z = -kappa_hat and b = a ⊙ kappa_hat (the paper's
S (diag(w) + z^T b) form): M_t = diag(w_t) M_{t-1} + b_t^T (z_t M_{t-1}) + k~_t^T v_t, o_t = r_t M_t. Chunked form
(the WY form of diagonal-plus-low-rank recurrences): for a chunk of C tokens, with the cumulative log-decay
c_t = sum_{s<=t} log w_s (d_k,) from the chunk start and c_0 = 0, and rows as tokens,

    Z = z ⊙ e^{c_{t-1}},  R = r ⊙ e^{c_t},  B = b ⊙ e^{-c_t},  K = k~ ⊙ e^{-c_t}          (C, d_k)
    U  = (I - strictly-lower(Z B^T))^-1 (Z M + strictly-lower(Z K^T) V)     the reads u_t = z_t M_{t-1}, (C, d_v)
    O  = R M + lower(R B^T) U + lower(R K^T) V,    M <- e^{c_C} ⊙ M + (B ⊙ e^{c_C})^T U + (K ⊙ e^{c_C})^T V

(unrolling M_{t-1} to the chunk start). log w >= -e^{-0.5} per token, so e^{-c} <= e^{0.61 C} stays well inside
fp32 for C <= 128 (`chunk_size`'s bound) and the factored form needs no floor. The last chunk is zero-padded (zero
k, v, z, b and log-decay leave the state as it is). Decoding runs the same code with the cache as M_0.

Positions: none (as the paper): `position` is not applied; token shift and the recurrence carry order.
Backend `fla` (training only, cache None): fla's `chunk_rwkv7` Triton kernel (its diagonal-plus-low-rank delta rule
S_t = diag(e^w_t) S_{t-1} + b_t^T (a_t S_{t-1}) + k_t^T v_t, o_t = r_t S_t with S (d_k, d_v): our M with its a, b
our z, b and w our log w) on the same fp32 r, log w, k~, v, z, b in (B, T, H, d) layout, scale 1; token shift,
the low-rank gates, the GroupNorm and the bonus stay the torch code.
Shapes: x (B, T, D) -> r, w, k, v, a, g (B, T, H d), d = D / H -> per head (B, H, T, d) -> o (B, T, H, d) -> y.
Cache: (the previous token's input (B, D), for token shift; M (B, H, d, d) fp32). The core runs in fp32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.component import Mixer
from model.mixers import kernels
from model.options import Options, option

SHIFT_POWERS = (0.2, 0.9, 0.7, 0.7, 0.9, 0.2)  # mu_* = 1 - (i / D)^p for r, w, k, v, a, g (the paper's layer 0)


def chunked_dplr(r: Tensor, logw: Tensor, k: Tensor, v: Tensor, z: Tensor, b: Tensor, state: Tensor,
                 chunk_size: int) -> tuple[Tensor, Tensor]:
    """o_t = r_t M_t, M_t = diag(e^{logw_t}) M_{t-1} + b_t^T (z_t M_{t-1}) + k_t^T v_t, M_0 = state, chunk by chunk.

    r, logw, k, z, b (B, H, T, dk), v (B, H, T, dv), state (B, H, dk, dv) -> o (B, H, T, dv) and M_T."""
    B, H, T, dk = r.shape
    dv = v.shape[-1]
    C = min(chunk_size, T)
    N = -(-T // C)
    pad = N * C - T  # zero k, v, z, b and log-decay leave the state as it is; padded outputs are dropped
    r, logw, k, z, b = (F.pad(t, (0, 0, 0, pad)).view(B, H, N, C, dk) for t in (r, logw, k, z, b))  # (B, H, N, C, dk)
    v = F.pad(v, (0, 0, 0, pad)).view(B, H, N, C, dv)  # (B, H, N, C, dv)
    c = logw.cumsum(dim=3)  # (B, H, N, C, dk): c_t, from the chunk start
    last = c[:, :, :, -1:]  # (B, H, N, 1, dk): the chunk's total log-decay
    zc, rc = z * (c - logw).exp(), r * c.exp()  # decayed to the chunk start: Z, R
    bc, kc = b * (-c).exp(), k * (-c).exp()  # B, K
    strict = torch.ones(C, C, dtype=torch.bool, device=r.device).tril(-1)
    upto = torch.ones(C, C, dtype=torch.bool, device=r.device).tril()
    zk = (zc @ kc.transpose(-1, -2)).masked_fill(~strict, 0.0)  # (B, H, N, C, C)
    rb = (rc @ bc.transpose(-1, -2)).masked_fill(~upto, 0.0)  # (B, H, N, C, C)
    rk = (rc @ kc.transpose(-1, -2)).masked_fill(~upto, 0.0)  # (B, H, N, C, C)
    lhs = -(zc @ bc.transpose(-1, -2))  # (B, H, N, C, C): the solve reads its strictly lower part only
    wu = torch.linalg.solve_triangular(lhs, torch.cat([zc, zk @ v], dim=-1), upper=False, unitriangular=True)
    w, u = wu.split([dk, dv], dim=-1)  # U = W M + u: (B, H, N, C, dk), (B, H, N, C, dv)
    carry = (last - c).exp()  # (B, H, N, C, dk): e^{c_C - c_t}
    base = rk @ v  # (B, H, N, C, dv)
    kv = (k * carry).transpose(-1, -2) @ v  # (B, H, N, dk, dv): the chunk's own addition to M
    bl = b * carry  # (B, H, N, C, dk)
    decay = last.exp().transpose(-1, -2)  # (B, H, N, dk, 1)
    out = []
    for n in range(N):  # the state entering chunk n, the chunk's reads U, then M <- decay M + B^T U + K^T V
        reads = w[:, :, n] @ state + u[:, :, n]  # (B, H, C, dv)
        out.append(rc[:, :, n] @ state + rb[:, :, n] @ reads + base[:, :, n])  # (B, H, C, dv)
        state = decay[:, :, n] * state + bl[:, :, n].transpose(-1, -2) @ reads + kv[:, :, n]
    return torch.stack(out, dim=2).view(B, H, N * C, dv)[:, :, :T], state


@dataclass
class RWKV7Config(Options):
    chunk_size: int = option(32, min=1, max=128)  # quadratic inside a chunk; <= 128 keeps e^{-c} in fp32
    decay_rank: int = option(32, min=1)  # rank of the decay's A_w B_w (the paper: 64 at D = 768)
    iclr_rank: int = option(32, min=1)  # rank of the in-context learning rate's A_a B_a (the paper: 64)
    gate_rank: int = option(64, min=1)  # rank of the output gate's A_g B_g (the paper: 128)
    # torch (reference) | fla (Triton kernel, GPU only)
    backend: str = option("torch", choices=("torch", "fla"), runtime=True)


class RWKV7(Mixer):
    section = RWKV7Config
    lora_targets = ("r_proj", "k_proj", "v_proj", "o_proj")
    position_hooks = ()  # applies none: token shift and the recurrence order the tokens

    def __init__(self, cfg, position: nn.Module | None = None):
        super().__init__()  # `position` is unused (see the module docstring)
        rw = self.options(cfg)
        self.kernel = kernels.load("rwkv7", "fla", "fla.ops.rwkv7", "chunk_rwkv7") if rw.backend == "fla" else None
        D, H, d = cfg.d_model, cfg.n_heads, cfg.head_dim
        E = H * d
        self.n_heads, self.head_dim, self.chunk_size = H, d, rw.chunk_size
        self.mix = nn.Parameter(torch.empty(6, D))  # mu_r, mu_w, mu_k, mu_v, mu_a, mu_g
        self.r_proj = nn.Linear(D, E, bias=False)
        self.k_proj = nn.Linear(D, E, bias=False)
        self.v_proj = nn.Linear(D, E, bias=False)
        self.w_down = nn.Linear(D, rw.decay_rank, bias=False)  # A_w
        self.w_up = nn.Linear(rw.decay_rank, E, bias=True)  # B_w, w_0
        self.a_down = nn.Linear(D, rw.iclr_rank, bias=False)  # A_a
        self.a_up = nn.Linear(rw.iclr_rank, E, bias=True)  # B_a, a_0
        self.g_down = nn.Linear(D, rw.gate_rank, bias=False)  # A_g
        self.g_up = nn.Linear(rw.gate_rank, E, bias=False)  # B_g
        self.k_k = nn.Parameter(torch.empty(E))  # xi: the removal key's scale
        self.k_a = nn.Parameter(torch.empty(E))  # alpha: how much a shrinks the replacement key
        self.r_k = nn.Parameter(torch.empty(H, d))  # rho: the bonus's weights
        self.norm = nn.GroupNorm(H, E, eps=1e-5 * d)  # per head, as the paper's reference
        self.o_proj = nn.Linear(E, D, bias=False)
        self.reset_special_parameters()

    @torch.no_grad()
    def reset_special_parameters(self) -> None:
        D, E = self.mix.shape[1], self.k_k.numel()
        ramp = torch.arange(D) / D  # (D,)
        self.mix.copy_(torch.stack([1 - ramp ** p for p in SHIFT_POWERS]))  # (6, D)
        self.w_up.bias.copy_(-6 + 6 * torch.arange(E) / max(E - 1, 1) + 0.5)  # w_0: slow to fast decays
        self.a_up.bias.zero_()  # a_0: a = 1/2
        self.k_k.fill_(0.85)
        self.k_a.fill_(1.0)
        self.r_k.fill_(-0.04)
        self.norm.reset_parameters()

    def residual_projections(self) -> list[nn.Linear]:
        return [self.o_proj]

    def no_decay_parameters(self) -> list[nn.Parameter]:
        return [self.mix, self.w_up.bias, self.a_up.bias, self.k_k, self.k_a, self.r_k]  # as the reference

    @staticmethod
    def flops_per_token(cfg, seq_len: int) -> float:
        """Forward, per head and token: Z B^T, Z K^T, R B^T, R K^T (8 C d), (Z K^T) V, the triangular solve for
        [W | u] (C^2 (dk + dv) / 2 multiply-adds per chunk), (R B^T) U and (R K^T) V (8 C d); W M, R M, B^T U and
        K^T V, 2 d^2 each (8 d^2); x3 with backward. Token shift, the decays, norms and the bonus are O(D) and left
        out; the low-rank projections are parameters (6 N counts them)."""
        C = min(RWKV7.options(cfg).chunk_size, seq_len)
        return 6 * cfg.n_heads * cfg.head_dim * (8 * C + 4 * cfg.head_dim)

    @staticmethod
    def activation_bytes(cfg, seq_len: int, s: int) -> float:
        """Fitted to tests' `saved_activation_bytes` (CPU, fp32 and bf16-mixed, T = 32, D 64 to 128, H 2 to 6,
        C 4 to T, ranks 8 to 64: within 6%). In s bytes: the six token-shifted inputs and their difference x_{t-1}
        - x_t (7 D), the low-rank hiddens (r_w + r_a + r_g). In fp32 ~38 E: r, k, v, k~, log w, a, kappa_hat and
        their gates' inputs, their per-head layouts and padded chunk copies, R, Z, B, K and their decays, the
        solve's right-hand side and solution, U, the norm's input and output, the bonus, g and o_proj's input;
        ~8 H C: Z K^T, R B^T, R K^T, Z B^T and the solve's copies; ~1.5 H d^2 / C: the states entering each chunk."""
        rw, D, H, d = RWKV7.options(cfg), cfg.d_model, cfg.n_heads, cfg.head_dim
        E, C = H * d, min(rw.chunk_size, seq_len)
        hidden = rw.decay_rank + rw.iclr_rank + rw.gate_rank
        return s * (7 * D + hidden) + 4 * (38 * E + 8 * H * C + 1.5 * H * d * d / C)

    @staticmethod
    def cache_bytes(cfg, seq_len: int, s: int) -> float:
        """Fixed: the previous token's input (D, s bytes) for token shift and M (H, d, d) fp32."""
        return s * cfg.d_model + 4 * cfg.n_heads * cfg.head_dim ** 2

    def init_cache(self, batch_size: int, device, dtype) -> tuple[Tensor, Tensor]:
        previous = torch.zeros(batch_size, self.mix.shape[1], device=device, dtype=dtype)  # x_{-1} = 0
        # the state stays fp32 whatever the model dtype (see the module docstring)
        M = torch.zeros(batch_size, self.n_heads, self.head_dim, self.head_dim, device=device, dtype=torch.float32)
        return previous, M

    def forward(self, x: Tensor, cache: tuple[Tensor, Tensor] | None = None, offset: int = 0):
        B, T, D = x.shape
        H, d = self.n_heads, self.head_dim
        previous, M0 = self.init_cache(B, x.device, x.dtype) if cache is None else cache
        shifted = torch.cat([previous[:, None].to(x.dtype), x[:, :-1]], dim=1)  # (B, T, D): x_{t-1}
        xr, xw, xk, xv, xa, xg = (x + (shifted - x) * self.mix[:, None, None].to(x.dtype)).unbind(0)  # (B, T, D)
        r, k, v = self.r_proj(xr), self.k_proj(xk), self.v_proj(xv)  # (B, T, E)
        dw = self.w_up(torch.tanh(self.w_down(xw)))  # (B, T, E)
        da = self.a_up(self.a_down(xa))  # (B, T, E)
        g = self.g_up(torch.sigmoid(self.g_down(xg)))  # (B, T, E)
        with torch.autocast(x.device.type, enabled=False):
            f32 = torch.promote_types(x.dtype, torch.float32)  # fp32 (fp64 in fp64 tests)
            r, k, v = r.to(f32), k.to(f32), v.to(f32)
            logw = -math.exp(-0.5) * torch.sigmoid(dw.to(f32))  # (B, T, E): log w
            a = torch.sigmoid(da.to(f32))  # (B, T, E)
            kappa = F.normalize((k * self.k_k.to(f32)).view(B, T, H, d), dim=-1).view(B, T, H * d)  # (B, T, E)
            k = k * (1 + (a - 1) * self.k_a.to(f32))  # the replacement key k~

            def heads(t: Tensor) -> Tensor:
                return t.view(B, T, H, d).transpose(1, 2)  # (B, T, E) -> (B, H, T, d)

            if cache is None and self.kernel is not None:
                o, M = self.fla(r, logw, k, v, -kappa, a * kappa), None  # (B, H, T, d)
            else:
                o, M = chunked_dplr(heads(r), heads(logw), heads(k), heads(v), heads(-kappa), heads(a * kappa),
                                    M0.to(f32), self.chunk_size)  # (B, H, T, d)
            n = self.norm  # its fp32 weights (bf16 in bf16-true runs) on the fp32 output
            o = F.group_norm(o.transpose(1, 2).reshape(B * T, H * d), H, n.weight.to(f32), n.bias.to(f32), n.eps)
            o = o.view(B, T, H, d)  # (B * T, E) -> (B, T, H, d)
            bonus = (r * k).view(B, T, H, d).mul(self.r_k.to(f32)).sum(-1, keepdim=True) * v.view(B, T, H, d)
            o = (o + bonus).view(B, T, H * d) * g.to(f32)  # (B, T, E)
        y = self.o_proj(o.to(x.dtype))  # (B, T, D)
        return y, (None if cache is None else (x[:, -1], M))

    def fla(self, r: Tensor, logw: Tensor, k: Tensor, v: Tensor, z: Tensor, b: Tensor) -> Tensor:
        """fla's chunk kernel on r, log w, k~, v, z, b (B, T, E), which it takes per head, (B, T, H, d)
        (fla >= 0.2) -> o (B, H, T, d) fp32."""
        kernels.require_cuda(r, "rwkv7", "fla")
        B, T, _ = r.shape
        heads = (t.view(B, T, self.n_heads, self.head_dim) for t in (r, logw, k, v, z, b))  # (B, T, H, d) each
        o, _ = self.kernel(*heads, scale=1.0)  # (B, T, H, d)
        return o.transpose(1, 2).float()
