"""Causal softmax attention with grouped-query heads (`model.mixer=softmax`).

Vaswani et al. 2017, "Attention Is All You Need"; grouped-query attention from Ainslie et al. 2023
("GQA", arXiv:2305.13245): H query heads share Hk = n_kv_heads key/value heads (H % Hk == 0).

    Attn(Q, K, V) = softmax(Q K^T / sqrt(d) + M + P) V,   M_ij = -inf for j > i (causal)

P (H, T, T_k) is the position's score bias (ALiBi, T5; model/positions/) for the absolute positions of the queries
and keys, 0 when the position contributes none; it joins the causal mask as SDPA's float attn_mask.

Shapes: x (B, T, D) -> q (B, H, T, d), k/v (B, Hk, T, d), d = D / H -> y (B, T, D).
Computed by `F.scaled_dot_product_attention` (flash / memory-efficient kernels where available).
Cache: the keys and values seen so far, (B, Hk, T_past, d) each; decoding appends to them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.component import Mixer
from model.positions import POSITIONS


class SoftmaxAttention(Mixer):
    lora_targets = ("q_proj", "k_proj", "v_proj", "o_proj")
    llama_module = "self_attn"  # q/k/v/o_proj are Hugging Face Llama's names
    position_hooks = ("rotate", "score_bias")  # RoPE on q and k; ALiBi / T5 biases added to the scores

    def __init__(self, cfg, position: nn.Module):
        super().__init__()
        assert cfg.d_model % cfg.n_heads == 0, "d_model must be divisible by n_heads"
        assert cfg.n_heads % cfg.kv_heads == 0, "n_heads must be a multiple of n_kv_heads"
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.position = position
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * self.head_dim, cfg.d_model, bias=False)

    def residual_projections(self) -> list[nn.Linear]:
        return [self.o_proj]

    @staticmethod
    def flops_per_token(cfg, seq_len: int) -> float:
        return 12 * cfg.n_heads * cfg.head_dim * seq_len  # Q K^T and A V (2 T H d each), forward + backward (x3)

    @staticmethod
    def biased(cfg) -> bool:
        """Whether the model's position adds a score bias: SDPA then gets a float mask."""
        return "score_bias" in POSITIONS[cfg.position].contributes

    @staticmethod
    def activation_bytes(cfg, seq_len: int, s: int) -> float:
        """Its input, q and the output (D each), k and v (D_kv each) in the compute dtype, SDPA's fp32
        log-sum-exp per head (never the T x T scores). With a score bias (measured with tests'
        `saved_activation_bytes` on CPU: ALiBi and T5, fp32, bf16 autocast and bf16): SDPA's math path, which
        computes in fp32 and keeps q, k and v expanded to the H heads (3 D) and the probabilities (H T), beside its
        input and the output o_proj reads (2 D, compute dtype). CUDA's memory-efficient kernel takes a float mask
        (and its gradient) without the probabilities; not measured here."""
        D, H = cfg.d_model, cfg.n_heads
        if SoftmaxAttention.biased(cfg):
            return s * 2 * D + 4 * (3 * D + H * seq_len)
        return s * (3 * D + 2 * cfg.kv_heads * cfg.head_dim) + 4 * H

    def init_cache(self, batch_size: int, device, dtype) -> tuple[Tensor, Tensor]:
        empty = torch.zeros(batch_size, self.n_kv_heads, 0, self.head_dim, device=device, dtype=dtype)
        return empty, empty

    def qkv(self, x: Tensor, offset: int) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, D) -> q (B, H, T, d), k, v (B, Hk, T, d); q and k rotated from absolute position `offset`."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, d)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hk, T, d)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hk, T, d)
        q, k = self.position.rotate(q, k, offset=offset)
        return q, k, v

    def score_bias(self, T: int, past: int, offset: int, dtype, device) -> Tensor | None:
        """The position's score bias (H, T, past + T) for T queries at absolute positions offset .. offset + T - 1
        over the `past` keys before them and their own; None when the position contributes none."""
        if "score_bias" not in self.position.contributes:
            return None
        q_pos = torch.arange(offset, offset + T, device=device)
        k_pos = torch.arange(offset - past, offset + T, device=device)
        return self.position.score_bias(self.n_heads, q_pos, k_pos, dtype)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
        """SDPA over the (cached + new) keys, then the output projection -> (B, T, D)."""
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=self.n_kv_heads != self.n_heads
        )  # (B, H, T, d)
        B, _, T, _ = q.shape
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, H*d)
        return self.o_proj(y)

    def forward(self, x: Tensor, cache: tuple[Tensor, Tensor] | None = None, offset: int = 0):
        T = x.shape[1]
        q, k, v = self.qkv(x, offset)
        past = 0 if cache is None else cache[0].shape[2]  # cached keys (= offset: the cache keeps them all)
        if cache is not None:
            k = torch.cat([cache[0], k], dim=2)  # (B, Hk, past + T, d)
            v = torch.cat([cache[1], v], dim=2)
            cache = (k, v)
        bias = self.score_bias(T, past, offset, q.dtype, x.device)  # (H, T, past + T) or None
        if bias is not None:
            visible = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            mask, causal = bias.masked_fill(~visible, float("-inf")), False
        elif past == 0:
            mask, causal = None, True
        elif T == 1:
            mask, causal = None, False  # one new query sees every cached key
        else:  # a chunk after a prefix: query i sits at absolute position past + i
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            causal = False
        return self.attend(q, k, v, mask, causal), cache
