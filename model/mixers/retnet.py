"""Multi-scale retention (`model.mixer=retnet`).

Sun et al. 2023, "Retentive Network: A Successor to Transformer for Large Language Models" (arXiv:2307.08621).
Per head h a fixed decay gamma_h (§2.2, "Multi-Scale Retention": gamma = 1 - 2^(-5 - arange(0, h)) for h heads,
so gamma_0 = 1 - 1/32, gamma_1 = 1 - 1/64, ...; torchscale's `RetNetRelPos` uses the same), and with q, k rotated
by the model's position (the paper's xPos, eq. 3-5; here `position.rotate(q, k, offset)`, RoPE by default):

    recurrent (eq. 6):  S_t = gamma S_{t-1} + k_t^T v_t   (d, d),      o_t = q_t S_t
    parallel  (eq. 5):  O = (Q K^T ⊙ D) V,                 D_nm = gamma^(n-m) for n >= m, else 0
    chunkwise (eq. 7):  inside chunk i the masked decay matrix, across chunks the decayed state:
        O_[i] = (Q_[i] K_[i]^T ⊙ D) V_[i] + (Q_[i] S_(i-1)) ⊙ xi,        xi_j = gamma^(j+1)
        S_i   = gamma^L S_(i-1) + K_[i]^T (V_[i] ⊙ zeta),                 zeta_j = gamma^(L-1-j), L = chunk length
    output (eq. 8):     Y = W_o (swish(X W_g) ⊙ GroupNorm_h(O))

k is scaled by d^-1/2 (as torchscale). GroupNorm_h here is an RMSNorm over each head's d channels (no mean
subtraction, no bias; one learned scale per channel, H d in all), which is what torchscale's later RetNet uses.
The paper's extra score normalisations (§2.2, "Retention Score Normalization": D / sqrt(sum D), max(|sum R|, 1))
are dropped: each rescales a whole row of a head, which the per-head norm divides out (up to eps). They matter for
fp16 range at long T; the core here is fp32. Value width is d = D / H (the paper's value width is 2d, with fewer
heads to match parameters); grouped key/value heads are not used (`model.n_kv_heads` is ignored).

Training: chunks of C = `model.retnet.chunk_size` tokens; all chunks' intra-chunk products at once, the state
carried across the N = T / C chunks by a loop of N (d, d) updates (the decays gamma^(C n) of a cumulative-sum
trick underflow/overflow at long T). The last chunk may be shorter: padded keys are zero and its decay uses its
real length, so the returned state is exact. Decoding runs the same code with the cache as S_0.

Backend `fla` (training only, cache None): fla's `chunk_retention` Triton kernel (the same gamma_h) on the rotated
q, k and v, (B, T, H, d) layout, scale 1 (k is already scaled); decoding and the norm stay the torch code.

Shapes: x (B, T, D) -> q/k/v (B, H, T, d), d = D / H -> o (B, T, H, d) -> y (B, T, D).
Cache: S (B, H, d, d) in fp32 (decays multiply it at every step); the model passes the absolute position of x's
first token (rotation offset). The core (rotation, retention, norm) runs in fp32 with autocast off.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.component import Mixer
from model.mixers import kernels
from model.options import Options, option

EPS = 1e-6  # per-head RMSNorm epsilon


@dataclass
class RetNetConfig(Options):
    chunk_size: int = option(64, min=1)  # quadratic inside a chunk, decayed (d, d) state across chunks
    # torch (reference) | fla (Triton kernel, GPU only)
    backend: str = option("torch", choices=("torch", "fla"), runtime=True)


def decays(n_heads: int) -> Tensor:
    """gamma_h = 1 - 2^(-5 - h), h = 0 .. H-1 (Sun et al. 2023 §2.2), fp32 (H,)."""
    return 1.0 - 2.0 ** (-5.0 - torch.arange(n_heads, dtype=torch.float32))


def chunked_retention(q: Tensor, k: Tensor, v: Tensor, state: Tensor, gamma: Tensor,
                      chunk_size: int) -> tuple[Tensor, Tensor]:
    """sum_{m<=n} gamma^(n-m) (q_n . k_m) v_m + gamma^(n+1) q_n S_0, chunk by chunk (eq. 7).

    q, k, v (B, H, T, d), state S_0 (B, H, d, d), gamma (H,) -> o (B, H, T, d) and the state after the T tokens."""
    B, H, T, d = q.shape
    C = min(chunk_size, T)
    N = -(-T // C)
    pad = N * C - T  # zeros after the end: zero keys add nothing, padded queries are dropped
    q = F.pad(q, (0, 0, 0, pad)).view(B, H, N, C, d).contiguous()  # (B, H, N, C, d)
    k = F.pad(k, (0, 0, 0, pad)).view(B, H, N, C, d).contiguous()  # (B, H, N, C, d)
    v = F.pad(v, (0, 0, 0, pad)).view(B, H, N, C, d).contiguous()  # (B, H, N, C, d)
    lg = gamma.log().to(q.device)  # (H,)
    i = torch.arange(C, device=q.device, dtype=torch.float32)
    lag = i[:, None] - i[None, :]  # (C, C): n - m inside a chunk
    D = torch.where(lag >= 0, (lag.clamp(min=0) * lg[:, None, None]).exp(), 0.0)  # (H, C, C) masked decays
    xi = ((i[None, :] + 1) * lg[:, None]).exp()[..., None]  # (H, C, 1): gamma^(j+1), entering state at query j
    lens = torch.full((N,), C, device=q.device, dtype=torch.float32)
    lens[-1] = T - (N - 1) * C  # the last chunk's real length
    zeta = ((lens[:, None] - 1 - i[None, :]).clamp(min=0) * lg[:, None, None]).exp()  # (H, N, C): gamma^(L-1-j)
    kv = k.transpose(-1, -2) @ (v * zeta[..., None])  # (B, H, N, d, d): each chunk's decayed sum of k^T v
    step = (lens[None, :] * lg[:, None]).exp()[:, :, None, None]  # (H, N, 1, 1): gamma^L, a whole chunk's decay
    entering = []
    for n in range(N):  # N = T / C small updates of the (d, d) state
        entering.append(state)
        state = state * step[:, n] + kv[:, :, n]
    S = torch.stack(entering, dim=2)  # (B, H, N, d, d): the state entering each chunk
    o = ((q @ k.transpose(-1, -2)) * D[:, None]) @ v + (q @ S) * xi[:, None]  # (B, H, N, C, d)
    return o.view(B, H, N * C, d)[:, :, :T], state


class RetNet(Mixer):
    section = RetNetConfig
    lora_targets = ("q_proj", "k_proj", "v_proj", "g_proj", "o_proj")

    def __init__(self, cfg, position: nn.Module):
        super().__init__()
        opts = self.options(cfg)
        self.kernel = (kernels.load("retnet", "fla", "fla.ops.retention", "chunk_retention")
                       if opts.backend == "fla" else None)
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.chunk_size = opts.chunk_size
        self.position = position
        D, HD = cfg.d_model, cfg.n_heads * cfg.head_dim
        self.q_proj = nn.Linear(D, HD, bias=False)
        self.k_proj = nn.Linear(D, HD, bias=False)
        self.v_proj = nn.Linear(D, HD, bias=False)
        self.g_proj = nn.Linear(D, HD, bias=False)  # swish gate (eq. 8)
        self.o_proj = nn.Linear(HD, D, bias=False)
        self.norm_weight = nn.Parameter(torch.ones(cfg.n_heads, cfg.head_dim))  # per-head RMSNorm scales (H, d)
        self.register_buffer("gamma", decays(cfg.n_heads), persistent=False)  # (H,) fixed, not learned

    def reset_special_parameters(self) -> None:
        nn.init.ones_(self.norm_weight)
        self.gamma = decays(self.n_heads).to(self.gamma.device)  # buffers survive meta / to_empty init

    def residual_projections(self) -> list[nn.Linear]:
        return [self.o_proj]

    def no_decay_parameters(self) -> list[nn.Parameter]:
        return [self.norm_weight]  # a norm scale (2-D here, so the vector rule would not catch it)

    @staticmethod
    def flops_per_token(cfg, seq_len: int) -> float:
        # forward per head: Q K^T and (.. ⊙ D) V inside a chunk (2 * 2 C d), the chunk state K^T V and Q S
        # (2 * 2 d^2); x3 with backward. The decay multiplications and the norm are O(d) and left out.
        C = min(RetNet.options(cfg).chunk_size, seq_len)
        return 12 * cfg.n_heads * cfg.head_dim * (C + cfg.head_dim)

    @staticmethod
    def activation_bytes(cfg, seq_len: int, s: int) -> float:
        """s-byte tensors: the gate pre-activation, swish(g), the normed retention (after its scales) and the gated
        product (o_proj's input): 4 s D. fp32 inside the core: q, k, v and v ⊙ zeta (4 D, the matmuls' operands),
        the retention output and its normalised copy before the scales (2 D), the per-head rstd (H), the chunk
        scores (H C) and the states entering each chunk (H d^2 / C). Counted with saved-tensor hooks on CPU
        (torch 2.13) and checked in tests/model/test_retnet.py; with T not a multiple of C the padded chunk adds
        up to C - 1 tokens' worth, left out."""
        D, H, d = cfg.d_model, cfg.n_heads, cfg.head_dim
        C = min(RetNet.options(cfg).chunk_size, seq_len)
        return 4 * s * D + 4 * (6 * D + H + H * C + H * d * d / C)

    @staticmethod
    def cache_bytes(cfg, seq_len: int, s: int) -> float:
        """Fixed: S (H, d, d) fp32, whatever the length."""
        return 4 * cfg.n_heads * cfg.head_dim ** 2

    def init_cache(self, batch_size: int, device, dtype) -> Tensor:
        # the state stays fp32 whatever the model dtype: decays multiply it at every step
        return torch.zeros(batch_size, self.n_heads, self.head_dim, self.head_dim, device=device, dtype=torch.float32)

    def forward(self, x: Tensor, cache: Tensor | None = None, offset: int = 0):
        B, T, _ = x.shape
        H, d = self.n_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, d).transpose(1, 2)  # (B, H, T, d)
        k = self.k_proj(x).view(B, T, H, d).transpose(1, 2)  # (B, H, T, d)
        v = self.v_proj(x).view(B, T, H, d).transpose(1, 2)  # (B, H, T, d)
        g = self.g_proj(x)  # (B, T, H*d)
        S0 = self.init_cache(B, x.device, x.dtype) if cache is None else cache
        with torch.autocast(x.device.type, enabled=False):
            q, k = self.position.rotate(q.float(), k.float() * d ** -0.5, offset)
            if cache is None and self.kernel is not None:
                o, S = self.fla(q, k, v.float()), None  # (B, T, H, d)
            else:
                o, S = chunked_retention(q, k, v.float(), S0, self.gamma, self.chunk_size)  # (B, H, T, d)
                o = o.transpose(1, 2).contiguous()  # (B, T, H, d): one copy, so the reshape below is a view
            o = F.rms_norm(o, (d,), eps=EPS) * self.norm_weight.float()  # per-head norm, (B, T, H, d)
        o = o.reshape(B, T, H * d).to(x.dtype)  # (B, T, H*d)
        y = self.o_proj(F.silu(g) * o)
        return y, (None if cache is None else S)

    def fla(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """fla's chunk kernel on q, k, v (B, H, T, d); it wants (B, T, H, d) (fla >= 0.2) -> o (B, T, H, d) fp32."""
        kernels.require_cuda(q, "retnet", "fla")
        o, _ = self.kernel(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=1.0)
        return o.float()
