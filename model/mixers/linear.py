"""Causal linear attention with grouped-query heads (`model.mixer=linear`).

Katharopoulos et al. 2020, "Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention"
(arXiv:2006.16236), eq. 16-20: writing the similarity as phi(q)^T phi(k) turns the causal sum into a state

    S_t = S_{t-1} + phi(k_t) v_t^T   (d, d),      z_t = z_{t-1} + phi(k_t)   (d,)
    y_t = phi(q_t)^T S_t / (phi(q_t)^T z_t + eps)      normalize=True (the paper's)
    y_t = phi(q_t)^T S_t                                normalize=False (no denominator)

phi (`model.linear.feature_map`): elu(x) + 1 (the paper's), relu, or identity (only with normalize=False,
because its denominator can be zero or negative).
RoPE (Su et al. 2021, RoFormer §3.4.1): the numerator uses the rotated phi(q), phi(k); the denominator the
un-rotated ones, so it stays positive. Both the chunked and the one-token path use this one definition.

Training uses the chunked parallel form (as in fla / GLA): split T into N chunks of C tokens, then
    Y_n = (phi(Q_n) phi(K_n)^T ⊙ M) V_n + phi(Q_n) S_{n-1},    S_{n-1} = S_0 + sum_{m<n} phi(K_m)^T V_m
with every chunk's phi(K_m)^T V_m computed at once and an exclusive cumsum over chunks (no python loop).
Decoding runs the same code with the cache as S_0, so a prompt, a chunk or one token all work.

Shapes: x (B, T, D) -> q (B, H, T, d), k/v (B, Hk, T, d), d = D / H -> y (B, T, D). The G = H / Hk query
heads of a group share their key/value head, hence one state S (B, Hk, d, d) and z (B, Hk, d).
Cache: (S, z): fp32 running sums; the model passes the absolute position of the first new token (RoPE offset).
The core runs in fp32 with autocast off: running sums over long sequences lose too much in bf16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.component import Mixer
from model.mixers import kernels
from model.options import Options, option

FEATURE_MAPS = {"elu": lambda x: F.elu(x) + 1.0, "relu": F.relu, "identity": lambda x: x}
EPS = 1e-6  # keeps the denominator away from 0 (relu features can all be 0)


def chunked_linear_attention(q: Tensor, k: Tensor, v: Tensor, state: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Causal sum_{j<=t} (q_t . k_j) v_j + q_t S_0, chunk by chunk.

    q (B, Hk, G, T, dk), k (B, Hk, T, dk), v (B, Hk, T, dv), state S_0 (B, Hk, dk, dv)
    -> y (B, Hk, G, T, dv) and the state after the T tokens."""
    B, Hk, G, T, dk = q.shape
    dv = v.shape[-1]
    C = min(chunk_size, T)
    N = -(-T // C)
    pad = N * C - T  # zeros after the end: zero keys add nothing to the state, padded queries are dropped
    q = F.pad(q, (0, 0, 0, pad)).view(B, Hk, G, N, C, dk)  # (B, Hk, G, N, C, dk)
    k = F.pad(k, (0, 0, 0, pad)).view(B, Hk, 1, N, C, dk)  # (B, Hk, 1, N, C, dk)
    v = F.pad(v, (0, 0, 0, pad)).view(B, Hk, 1, N, C, dv)  # (B, Hk, 1, N, C, dv)
    kv = k.transpose(-1, -2) @ v  # (B, Hk, 1, N, dk, dv): one chunk's sum of k v^T
    cum = kv.cumsum(dim=3)  # inclusive over chunks
    before = torch.cat([torch.zeros_like(kv[:, :, :, :1]), cum[:, :, :, :-1]], dim=3)  # exclusive
    before = before + state[:, :, None, None]  # (B, Hk, 1, N, dk, dv): the state entering each chunk
    mask = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    scores = (q @ k.transpose(-1, -2)).masked_fill(~mask, 0.0)  # (B, Hk, G, N, C, C)
    y = scores @ v + q @ before  # (B, Hk, G, N, C, dv)
    y = y.view(B, Hk, G, N * C, dv)[:, :, :, :T]  # (B, Hk, G, T, dv)
    return y, state + cum[:, :, 0, -1]


@dataclass
class LinearAttentionConfig(Options):
    feature_map: str = option("elu", choices=tuple(FEATURE_MAPS))  # phi: elu (elu+1, Katharopoulos) | relu | identity
    normalize: bool = True  # divide by phi(q) . sum phi(k); False = normalisation-free form
    chunk_size: int = option(64, min=1)  # quadratic inside a chunk, running K^T V state across chunks
    # torch (reference) | fla (Triton kernels, GPU only)
    backend: str = option("torch", choices=("torch", "fla"), runtime=True)

    def check(self) -> None:
        if self.feature_map == "identity" and self.normalize:
            raise ValueError("feature_map=identity needs normalize=false: phi(q) . sum phi(k) can be 0 or negative "
                             "without a positive feature map")


class LinearAttention(Mixer):
    section = LinearAttentionConfig
    lora_targets = ("q_proj", "k_proj", "v_proj", "o_proj")

    def __init__(self, cfg, position: nn.Module):
        super().__init__()
        lin = self.options(cfg)
        self.fla = (kernels.load("linear", "fla", "fla.ops.linear_attn", "chunk_linear_attn")
                    if lin.backend == "fla" else None)
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.phi, self.normalize, self.chunk_size = FEATURE_MAPS[lin.feature_map], lin.normalize, lin.chunk_size
        self.position = position
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * self.head_dim, cfg.d_model, bias=False)

    def residual_projections(self) -> list[nn.Linear]:
        return [self.o_proj]

    @staticmethod
    def flops_per_token(cfg, seq_len: int) -> float:
        # forward: phi(Q) phi(K)^T and A V inside a chunk (2 * 2 C d), K^T V and Q S (2 * 2 d^2); x3 with backward
        C = min(LinearAttention.options(cfg).chunk_size, seq_len)
        return 12 * cfg.n_heads * cfg.head_dim * (C + cfg.head_dim)

    @staticmethod
    def activation_bytes(cfg, seq_len: int, s: int) -> float:
        """Input and output (s D each); fp32 inside the core: phi(q), phi(k), v, rotated copies and the
        denominator (7 D + 4 D_kv), the chunk scores (H C) and the chunk states (H_kv d^2 / C)."""
        D, d, Hk = cfg.d_model, cfg.head_dim, cfg.kv_heads
        C = min(LinearAttention.options(cfg).chunk_size, seq_len)
        return 2 * s * D + 4 * (7 * D + 4 * Hk * d + cfg.n_heads * C + Hk * d * d / C)

    @staticmethod
    def cache_bytes(cfg, seq_len: int, s: int) -> float:
        """Fixed: S (Hk, d, d) and z (Hk, d), fp32, whatever the length."""
        return 4 * cfg.kv_heads * cfg.head_dim * (cfg.head_dim + 1)

    def init_cache(self, batch_size: int, device, dtype) -> tuple[Tensor, Tensor]:
        # the running sums stay fp32 whatever the model dtype (see the module docstring)
        S = torch.zeros(batch_size, self.n_kv_heads, self.head_dim, self.head_dim, device=device, dtype=torch.float32)
        z = torch.zeros(batch_size, self.n_kv_heads, self.head_dim, device=device, dtype=torch.float32)
        return S, z

    def forward(self, x: Tensor, cache: tuple[Tensor, Tensor] | None = None, offset: int = 0):
        B, T, _ = x.shape
        H, Hk, d = self.n_heads, self.n_kv_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, d).transpose(1, 2)  # (B, H, T, d)
        k = self.k_proj(x).view(B, T, Hk, d).transpose(1, 2)  # (B, Hk, T, d)
        v = self.v_proj(x).view(B, T, Hk, d).transpose(1, 2)  # (B, Hk, T, d)
        S0, z0 = self.init_cache(B, x.device, x.dtype) if cache is None else cache
        with torch.autocast(x.device.type, enabled=False):
            q, k, v = self.phi(q.float()), self.phi(k.float()), v.float()
            q_rot, k_rot = self.position.rotate(q, k, offset)
            q_rot = q_rot.reshape(B, Hk, H // Hk, T, d)  # (B, Hk, G, T, d): heads h = g * G + i share kv head g
            if self.fla is not None:
                y, S = self._fla(q_rot, k_rot, v, S0)
            else:
                y, S = chunked_linear_attention(q_rot, k_rot, v, S0, self.chunk_size)  # (B, Hk, G, T, d)
            z_all = z0[:, :, None] + k.cumsum(dim=2)  # (B, Hk, T, d): un-rotated sum_{j<=t} phi(k_j)
            if self.normalize:
                den = (q.reshape(B, Hk, H // Hk, T, d) * z_all[:, :, None]).sum(-1, keepdim=True)  # (B, Hk, G, T, 1)
                y = y / (den + EPS)
        y = y.reshape(B, H, T, d).transpose(1, 2).reshape(B, T, H * d).to(x.dtype)  # (B, T, H*d)
        new_cache = None if cache is None else (S, z_all[:, :, -1])
        return self.o_proj(y), new_cache

    def _fla(self, q: Tensor, k: Tensor, v: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """fla's Triton chunk kernel for the numerator (the denominator stays ours, see the docstring).

        fla wants equal head counts and (B, T, H, d) tensors (fla >= 0.2 layout), so the kv heads are repeated
        and the repeated states (identical within a group) are folded back by taking one per group."""
        kernels.require_cuda(q, "linear", "fla")
        B, Hk, G, T, d = q.shape
        q = q.reshape(B, Hk * G, T, d).transpose(1, 2)  # (B, T, H, d)
        k = k.repeat_interleave(G, dim=1).transpose(1, 2)  # (B, T, H, d)
        v = v.repeat_interleave(G, dim=1).transpose(1, 2)  # (B, T, H, d)
        y, S = self.fla(q, k, v, scale=1.0, initial_state=state.repeat_interleave(G, dim=1),
                        output_final_state=True, normalize=False)  # (B, T, H, d), (B, H, d, d)
        y = y.transpose(1, 2).reshape(B, Hk, G, T, d)  # (B, Hk, G, T, d)
        return y.float(), S[:, ::G].float()
