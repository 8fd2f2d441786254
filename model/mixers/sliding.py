"""Sliding-window causal softmax attention with grouped-query heads (`model.mixer=sliding`).

Beltagy et al. 2020, "Longformer: The Long-Document Transformer" (arXiv:2004.05150), its causal sliding window;
Jiang et al. 2023, "Mistral 7B" (arXiv:2310.06825), §2 "Sliding Window Attention" with a rolling buffer cache.
Query i attends to the last W = `model.sliding.window` keys only (itself included):

    A_ij = exp(q_i . k_j / sqrt(d)) / sum_{l = max(0, i-W+1)}^{i} exp(q_i . k_l / sqrt(d))   for i-W+1 <= j <= i,
    A_ij = 0 otherwise;   y_i = sum_j A_ij v_j

W >= T is full causal attention (`model.mixer=softmax`). Grouped-query heads as softmax.py: H query heads share
Hk = n_kv_heads key/value heads; q and k rotated by the model's position (`rotate(q, k, offset)`, absolute offset),
and its score bias (ALiBi, T5: `score_bias` for the queries' and keys' absolute positions) added to the scores
inside the band, as a float mask (-inf outside the band).

Shapes: x (B, T, D) -> q (B, H, T, d), k/v (B, Hk, T, d), d = D / H -> y (B, T, D).
Training (no cache): `F.scaled_dot_product_attention` with `is_causal=True` when W >= T; else blocked local
attention, linear in T: the sequence is cut into N = ceil(T / W) blocks of W queries, and block n attends to the
2W keys of blocks n - 1 and n under a (W, 2W) band mask (query a of block n, key b: visible iff a < b <= a + W,
and b >= W in block 0, whose previous block is padding):

    q (B, H, T, d) -> (B N, H, W, d),  k, v (B, Hk, T, d) -> (B N, Hk, 2W, d) (overlapping windows)

so the kernel scores 2W keys per query instead of T. The same for a prompt (no cached keys yet); a chunk after a
cached prefix uses the dense band mask (T, P + T).
Cache: the rotated keys and values of the last at most W - 1 positions, (B, Hk, P, d) each, P <= W - 1: exactly
what the next query can still see, so decoding memory is bounded by W, not by the generated length. Keys are
cached after RoPE, so a cached key keeps its absolute position; the offset passed in (absolute position of x's
first token) rotates the new q/k, while the masks use the cache length P (no longer equal to the offset once the
buffer has been truncated): new query i sits at index P + i of the concatenated keys (P + T of them).

Activation bytes (measured with saved-tensor hooks on CPU, torch 2.13): every path runs the CPU flash kernel
(`ScaledDotProductFlashAttentionForCpuBackward0`) and keeps q, k, v, the output and an fp32 log-sum-exp (B, H, T),
never the probabilities. At W >= T that is softmax's formula. The blocked path (W < T) keeps, per token, one more
D (the padded, block-major copy of q), k and v twice (each block's 2W-key window holds every key twice) and
the (B N, 1, W, 2W) mask in the compute dtype (2W per query); tests/model/test_sliding.py checks the formula
against a measured forward within 10%. On CUDA a boolean mask routes SDPA to the memory-efficient kernel (flash
takes no mask), which also keeps only the log-sum-exp; not measured here.
With a score bias the (B N, H, W, 2W) float mask sends SDPA on CPU to its math path when the mask needs a gradient
(T5's), which keeps fp32 q, the windows' k and v expanded to the H heads and the probabilities (H 2W per query), as
counted; a fixed bias (ALiBi) takes the flash kernel with the mask instead, within 25% of that.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.mixers.softmax import SoftmaxAttention
from model.options import Options, option


@dataclass
class SlidingConfig(Options):
    window: int = option(256, min=1)  # W: keys a query sees, itself included (Mistral 7B: 4096); W >= T = softmax


class SlidingWindowAttention(SoftmaxAttention):
    """Softmax attention's projections, init, cache layout and memory (inherited), with a banded mask and a
    cache cut to the last W - 1 positions."""

    section = SlidingConfig
    llama_module = None  # Llama's attention is full causal: export_hf refuses this mixer
    position_hooks = ("rotate", "score_bias")  # softmax's, applied in the band

    def __init__(self, cfg, position: nn.Module):
        super().__init__(cfg, position)
        self.window = self.options(cfg).window

    @staticmethod
    def flops_per_token(cfg, seq_len: int) -> float:
        # Q K^T and A V over at most W keys (2 min(W, T) H d each), forward + backward (x3): the band's work, as
        # softmax counts T for its causal triangle (a dense masked kernel computes the full T, see the docstring)
        return 12 * cfg.n_heads * cfg.head_dim * min(SlidingWindowAttention.options(cfg).window, seq_len)

    @staticmethod
    def activation_bytes(cfg, seq_len: int, s: int) -> float:
        dense = SoftmaxAttention.activation_bytes(cfg, seq_len, s)
        W = SlidingWindowAttention.options(cfg).window
        if W >= seq_len:
            return dense
        if SoftmaxAttention.biased(cfg):  # the math path over the blocks, fp32: q (D), the windows' k and v
            # expanded to H heads (2 D each), the probabilities (H 2W); beside the input and o_proj's (2 D)
            return s * 2 * cfg.d_model + 4 * (5 * cfg.d_model + 2 * cfg.n_heads * W)
        # + q's block copy, k and v twice (the windows), a mask row of 2W per query
        return dense + s * (cfg.d_model + 2 * cfg.kv_heads * cfg.head_dim + 2 * W)

    @staticmethod
    def cache_bytes(cfg, seq_len: int, s: int) -> float:
        """Softmax's keys and values of the last W - 1 tokens at most (the rolling buffer)."""
        keep = min(SlidingWindowAttention.options(cfg).window - 1, seq_len)
        return SoftmaxAttention.cache_bytes(cfg, keep, s)

    def band(self, T: int, past: int, device) -> Tensor:
        """(T, past + T) bool, True where query i (key index past + i) may see key j: 0 <= past + i - j < W."""
        i = torch.arange(past, past + T, device=device)
        j = torch.arange(past + T, device=device)
        lag = i[:, None] - j[None, :]  # (T, past + T)
        return (lag >= 0) & (lag < self.window)

    def blocked(self, q: Tensor, k: Tensor, v: Tensor, offset: int) -> Tensor:
        """Local attention in blocks of W queries over 2W keys: q (B, H, T, d), k/v (B, Hk, T, d) -> (B, T, D); the
        first query at absolute position `offset`."""
        B, H, T, d = q.shape
        W = self.window
        N = -(-T // W)
        pad = N * W - T
        q = F.pad(q, (0, 0, 0, pad)).view(B, H, N, W, d).transpose(1, 2).reshape(B * N, H, W, d)  # (B N, H, W, d)

        def windows(t: Tensor) -> Tensor:  # (B, Hk, T, d) -> (B N, Hk, 2W, d): block n's keys n W - W .. n W + W
            t = F.pad(t, (0, 0, W, pad))  # (B, Hk, W + N W, d): one block of padding in front
            return t.unfold(2, 2 * W, W).permute(0, 2, 1, 4, 3).reshape(B * N, t.shape[1], 2 * W, d)

        a = torch.arange(W, device=q.device)[:, None]  # query index in its block
        b = torch.arange(2 * W, device=q.device)[None, :]  # key index in the block's window
        visible = ((b > a) & (b <= a + W)).repeat(N, 1, 1)  # (N, W, 2W): lag W + a - b in [0, W)
        visible[0, :, :W] = False  # block 0's previous block is padding
        mask = visible[:, None]  # (N, 1, W, 2W)
        if "score_bias" in self.position.contributes:
            q_pos = torch.arange(offset, offset + N * W, device=q.device).view(N, W)  # (N, W) absolute positions
            k_pos = q_pos[:, :1] - W + torch.arange(2 * W, device=q.device)  # (N, 2W): block n's window
            bias = self.position.score_bias(H, q_pos, k_pos, q.dtype)  # (N, H, W, 2W)
            mask = bias.masked_fill(~mask, float("-inf"))
        mask = mask.expand(B, *mask.shape).reshape(B * N, mask.shape[1], W, 2 * W)  # (B N, 1 or H, W, 2W)
        y = F.scaled_dot_product_attention(q, windows(k), windows(v), attn_mask=mask,
                                           enable_gqa=self.n_kv_heads != self.n_heads)  # (B N, H, W, d)
        y = y.view(B, N, H, W, d).permute(0, 1, 3, 2, 4).reshape(B, N * W, H * d)[:, :T]  # (B, T, H*d)
        return self.o_proj(y)

    def forward(self, x: Tensor, cache: tuple[Tensor, Tensor] | None = None, offset: int = 0):
        T = x.shape[1]
        q, k, v = self.qkv(x, offset)  # absolute positions offset .. offset + T - 1
        past = 0 if cache is None else cache[0].shape[2]  # cached keys P <= W - 1 (not the offset once truncated)
        if cache is not None:
            k = torch.cat([cache[0], k], dim=2)  # (B, Hk, P + T, d)
            v = torch.cat([cache[1], v], dim=2)
            keep = min(self.window - 1, past + T)  # what the next query can still see
            cache = (k[:, :, past + T - keep:], v[:, :, past + T - keep:])  # (B, Hk, <= W - 1, d)
        if past == 0 and T > self.window:  # training or a prompt: linear-cost blocks (k, v hold only x's keys)
            return self.blocked(q, k, v, offset), cache
        bias = self.score_bias(T, past, offset, q.dtype, x.device)  # (H, T, P + T) or None
        if bias is not None:
            mask, causal = bias.masked_fill(~self.band(T, past, x.device), float("-inf")), False
        elif past == 0:
            mask, causal = None, True  # the band covers the whole causal triangle
        elif T == 1 and past < self.window:
            mask, causal = None, False  # one new query sees every cached key (P <= W - 1)
        else:  # a chunk after a prefix: query i sits at key index P + i
            mask, causal = self.band(T, past, x.device), False
        return self.attend(q, k, v, mask, causal), cache
