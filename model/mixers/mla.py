"""Multi-head latent attention (`model.mixer=mla`).

DeepSeek-AI 2024, "DeepSeek-V2: A Strong, Economical, and Efficient Mixture-of-Experts Language Model"
(arXiv:2405.04434), §2.1. Keys and values are up-projected from one low-rank latent per token, the only thing
(with one small shared rope key) the decoding cache keeps. With h_t the token's input (D), n_h heads of width d_h:

    c_t^KV = W^DKV h_t                         (d_c)            low-rank joint KV compression (eq. 9)
    k_t^C = W^UK c_t^KV,  v_t^C = W^UV c_t^KV  (n_h d_h each)   (eq. 10-11)
    k_t^R = RoPE(W^KR h_t)                     (d_h^R)          decoupled rope key, shared by the heads (eq. 15)
    c_t^Q = W^DQ h_t                           (d_c')           optional low-rank query compression (eq. 12)
    q_t^C = W^UQ c_t^Q,  q_t^R = RoPE(W^QR c_t^Q)   (n_h d_h, n_h d_h^R)   (eq. 13-14; c_t^Q = h_t without it)
    q_{t,i} = [q_{t,i}^C; q_{t,i}^R],  k_{t,i} = [k_{t,i}^C; k_t^R]          (eq. 16-17)
    o_{t,i} = sum_{j <= t} softmax_j(q_{t,i} . k_{j,i} / sqrt(d_h + d_h^R)) v_{j,i}^C,   u_t = W^O [o_{t,1}; ...]

with an RMSNorm after each latent (c^KV, c^Q), as DeepSeek-V2 does (§3.1.2). W^UQ and W^QR are one Linear
(`q_proj`, its output split into the content and rope parts per head). Sizes (`model.mla.*`, 0 = derived):
d_c = 4 d_h, d_h^R = d_h / 2 (DeepSeek-V2: 512 = 4 x 128 and 64), no query compression unless `q_rank` is set
(DeepSeek-V2: 1536). `model.n_kv_heads` does not apply: every head reads the shared latent.

Positions: RoPE is applied to the decoupled parts q^R, k^R by model.positions' `RotaryPosition` (base
`model.rope_theta`) whatever `model.position` is; the content parts are never rotated (the model's position is
not asked to rotate; an embedding position such as sinusoidal is still added to the tokens by the model).

Shapes: x (B, T, D) -> c^KV (B, T, d_c), k^R (B, T, d_r) -> k (B, H, S, d + d_r), v (B, H, S, d), q (B, H, T,
d + d_r), S = P + T keys -> y (B, T, D). Computed by `F.scaled_dot_product_attention` with v zero-padded to
d + d_r (the flash kernels take one head width; the padded output columns are dropped), as DeepSeek-V2's
released modelling code does for flash attention. Keys and values are up-projected from the cached latents at
every call (the non-absorbed form): folding W^UK into the queries and W^UV into W^O (§2.1.3) would save that
compute at decoding but reads k_up / v_up's weights directly, which a LoRA adapter on them would bypass.
Cache: (c^KV (B, P, d_c), k^R (B, P, d_r)) after the norm and RoPE: (d_c + d_r) values per token and layer, against
2 n_kv_heads d_h for softmax attention's keys and values (`cache_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.component import Mixer
from model.norm import RMSNorm
from model.options import Options, option
from model.positions import RotaryPosition


@dataclass
class MLAConfig(Options):
    kv_rank: int = option(0, min=0)  # d_c, the cached latent; 0 = 4 head_dim (DeepSeek-V2: 512 = 4 x 128)
    q_rank: int = option(0, min=0)  # d_c' of the query compression; 0 = none, a full-rank W^Q (DeepSeek-V2: 1536)
    rope_dim: int = option(0, min=0)  # d_h^R, the rope part of a head (even); 0 = head_dim / 2 (DeepSeek-V2: 64)

    def check(self) -> None:
        if self.rope_dim % 2:
            raise ValueError(f"rope_dim={self.rope_dim} must be even: RoPE rotates pairs of dimensions")


class MultiHeadLatentAttention(Mixer):
    section = MLAConfig
    lora_targets = ("q_proj", "kv_down", "k_up", "v_up", "o_proj")
    position_hooks = ()  # its own RoPE on q^R and k^R; the model's position is not applied (module docstring)

    @staticmethod
    def dims(cfg) -> tuple[int, int, int]:
        """(d_c, d_c', d_r): the KV latent, the query latent (0: none) and the rope part of a head."""
        mla = MultiHeadLatentAttention.options(cfg)
        return mla.kv_rank or 4 * cfg.head_dim, mla.q_rank, mla.rope_dim or 2 * max(1, cfg.head_dim // 4)

    def __init__(self, cfg, position: nn.Module):  # the model's position: not used (see the module docstring)
        super().__init__()
        assert cfg.d_model % cfg.n_heads == 0, "d_model must be divisible by n_heads"
        d_c, d_q, d_r = self.dims(cfg)
        self.n_heads, self.head_dim, self.rope_dim = cfg.n_heads, cfg.head_dim, d_r
        inner = cfg.n_heads * cfg.head_dim
        self.rope = RotaryPosition(cfg.d_model, cfg.rope_theta)  # for q^R and k^R only
        self.kv_down = nn.Linear(cfg.d_model, d_c, bias=False)  # W^DKV
        self.kv_norm = RMSNorm(d_c, cfg.norm_eps)
        self.k_rope = nn.Linear(cfg.d_model, d_r, bias=False)  # W^KR
        self.k_up = nn.Linear(d_c, inner, bias=False)  # W^UK
        self.v_up = nn.Linear(d_c, inner, bias=False)  # W^UV
        # W^DQ and its norm, or nothing (q from h_t directly)
        self.q_down = nn.Sequential(nn.Linear(cfg.d_model, d_q, bias=False), RMSNorm(d_q, cfg.norm_eps)) \
            if d_q else nn.Identity()
        self.q_proj = nn.Linear(d_q or cfg.d_model, cfg.n_heads * (cfg.head_dim + d_r), bias=False)  # [W^UQ; W^QR]
        self.o_proj = nn.Linear(inner, cfg.d_model, bias=False)  # W^O

    def residual_projections(self) -> list[nn.Linear]:
        return [self.o_proj]

    @staticmethod
    def flops_per_token(cfg, seq_len: int) -> float:
        # per head, Q K^T over d + d_r (2 T (d + d_r)) and A V over d (2 T d), forward + backward (x3); the up-
        # projections of the latents are parameter matmuls, counted by 6 N
        d_r = MultiHeadLatentAttention.dims(cfg)[2]
        return 6 * cfg.n_heads * seq_len * (2 * cfg.head_dim + d_r)

    @staticmethod
    def activation_bytes(cfg, seq_len: int, s: int) -> float:
        """Measured with tests' `saved_activation_bytes` on CPU (T = 32 and 64, H = 4 and 8, with and without query
        compression; fp32 and bf16 autocast): its input (D), c^KV normed twice (the norm's output and what k_up and
        v_up read, 2 d_c), SDPA's q, k, padded v and output (4 H (d + d_r)) and the output o_proj reads (H d), in the
        compute dtype; in fp32 the norm's input (d_c) and rsqrt (1) and SDPA's log-sum-exp (H). Query compression
        adds the same for c^Q (2 d_c' + fp32 d_c' + 1). RoPE keeps only its (T, d_r) cos and sin tables."""
        D, H, d = cfg.d_model, cfg.n_heads, cfg.head_dim
        d_c, d_q, d_r = MultiHeadLatentAttention.dims(cfg)
        kept = s * (D + 2 * (d_c + d_q) + 4 * H * (d + d_r) + H * d)
        return kept + 4 * (d_c + 1 + H) + (4 * (d_q + 1) if d_q else 0)

    @staticmethod
    def cache_bytes(cfg, seq_len: int, s: int) -> float:
        """Per token: the latent c^KV and the rope key k^R (d_c + d_r values)."""
        d_c, _, d_r = MultiHeadLatentAttention.dims(cfg)
        return s * (d_c + d_r) * seq_len

    def init_cache(self, batch_size: int, device, dtype) -> tuple[Tensor, Tensor]:
        d_c = self.kv_down.out_features
        return (torch.zeros(batch_size, 0, d_c, device=device, dtype=dtype),  # c^KV (B, 0, d_c)
                torch.zeros(batch_size, 0, self.rope_dim, device=device, dtype=dtype))  # k^R (B, 0, d_r)

    def latents(self, x: Tensor, offset: int) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, D) -> c^KV (B, T, d_c), rotated k^R (B, T, d_r), q (B, H, T, d + d_r) with its rope part rotated,
        all from absolute position `offset`."""
        B, T, _ = x.shape
        H, d, d_r = self.n_heads, self.head_dim, self.rope_dim
        c_kv = self.kv_norm(self.kv_down(x))  # (B, T, d_c)
        k_r = self.k_rope(x).view(B, 1, T, d_r)  # (B, 1, T, d_r): one rope key for all heads
        q = self.q_proj(self.q_down(x)).view(B, T, H, d + d_r).transpose(1, 2)  # (B, H, T, d + d_r)
        q_c, q_r = q.split([d, d_r], dim=-1)  # (B, H, T, d), (B, H, T, d_r)
        q_r, k_r = self.rope.rotate(q_r, k_r, offset=offset)
        return c_kv, k_r.view(B, T, d_r), torch.cat([q_c, q_r], dim=-1)

    def forward(self, x: Tensor, cache: tuple[Tensor, Tensor] | None = None, offset: int = 0):
        B, T, _ = x.shape
        H, d, d_r = self.n_heads, self.head_dim, self.rope_dim
        c_kv, k_r, q = self.latents(x, offset)
        past = 0 if cache is None else cache[0].shape[1]
        if cache is not None:
            c_kv = torch.cat([cache[0], c_kv], dim=1)  # (B, P + T, d_c)
            k_r = torch.cat([cache[1], k_r], dim=1)  # (B, P + T, d_r)
            cache = (c_kv, k_r)
        S = past + T
        k_c = self.k_up(c_kv).view(B, S, H, d).transpose(1, 2)  # (B, H, S, d)
        v = self.v_up(c_kv).view(B, S, H, d).transpose(1, 2)  # (B, H, S, d)
        k = torch.cat([k_c, k_r[:, None].expand(B, H, S, d_r)], dim=-1)  # (B, H, S, d + d_r)
        # a chunk after a prefix: query i sits at key index P + i (softmax.py; SDPA's is_causal is top-left)
        mask = None if past == 0 else torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=past)
        y = F.scaled_dot_product_attention(q, k, F.pad(v, (0, d_r)), attn_mask=mask, is_causal=past == 0,
                                           scale=(d + d_r) ** -0.5)  # (B, H, T, d + d_r)
        y = y[..., :d].transpose(1, 2).reshape(B, T, H * d)  # (B, T, H*d)
        return self.o_proj(y), cache
