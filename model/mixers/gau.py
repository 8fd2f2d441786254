"""Gated attention unit (`model.mixer=gau`): one single-head unit in place of attention + FFN.

Hua et al. 2022, "Transformer Quality in Linear Time" (FLASH, arXiv:2202.10447), §2 and §3:

    U = silu(X W_u),  V = silu(X W_v)                    (B, T, e),  e = hidden or expansion * D  (fused uv_proj)
    Z = silu(X W_z)                                      (B, T, s),  s = qk_dim
    Q = Z ⊙ gamma_q + beta_q,  K = Z ⊙ gamma_k + beta_k  (B, T, s), then RoPE on Q and K
    A = relu(Q K^T / sqrt(s))^2 / n ⊙ M                  scores=relu2 (M the causal mask)
    A = softmax(Q K^T / sqrt(s) + log M)                 scores=softmax (quadratic form only)
    O = (U ⊙ A V) W_o                                    (B, T, D), W_o is `o_proj`

form=quadratic (FLASH-Quad): A over the whole sequence. The paper's n is the sequence length; causal
decoding needs it fixed, so n = max_seq_len (the training length, i.e. the paper's n during training),
or chunk_size when max_seq_len is unset. Cache: (K (B, 1, P, s) rotated, V (B, 1, P, e)).
form=chunked (FLASH, §3.2 "mixed chunk attention"): chunks of C = chunk_size tokens, aligned to position 0;
four scale/offset pairs give Q_quad, K_quad, Q_lin, K_lin, and chunk g gets
    O_g = U_g ⊙ [ relu(Q_quad,g K_quad,g^T / sqrt(s))^2 / C ⊙ M ] V_g  +  U_g ⊙ Q_lin,g S_g,
    S_g = sum_{h<g} K_lin,h^T V_h / C                     (s, e): causal linear attention across chunks
(cost linear in T). Cache: (S over the completed chunks (B, s, e) fp32, the rotated keys (B, 2, P, s)
[quad, lin] and V (B, P, e) of the current partial chunk of P < C tokens). The model passes the offset.
RoPE (the default position) rotates Q and K, the linear-part ones too. The paper's relative-position bias comes
from the position: a score bias (T5, ALiBi; model/positions/) for one head is added to Q K^T / sqrt(s) before
relu^2 (or softmax) in the quadratic form; the chunked form, whose linear part has no scores, refuses one at config
time. The chunked core runs in fp32 with autocast off (running sums).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.component import Mixer
from model.options import Options, option
from model.positions import POSITIONS


@dataclass
class GAUConfig(Options):
    expansion: int = option(2, min=1)  # e = expansion * d_model for U and V
    hidden: int = option(0, min=0)  # e itself when > 0 (overrides expansion): any width, e.g. to match parameters
    qk_dim: int = option(128, min=1)  # s: the shared small Z that becomes Q and K
    scores: str = option("relu2", choices=("relu2", "softmax"))  # relu2 (relu(qk/sqrt(s))^2 / n, the paper's)
    form: str = option("quadratic", choices=("quadratic", "chunked"))  # FLASH-Quad | FLASH (linear in length)
    chunk_size: int = option(64, min=1)  # chunk length of the chunked form

    def check(self) -> None:
        if self.form == "chunked" and self.scores == "softmax":
            raise ValueError("scores=softmax needs form=quadratic: the chunked form's linear attention across "
                             "chunks has no softmax; use scores=relu2")


class GAU(Mixer):
    section = GAUConfig
    replaces_ffn = True  # U gates A V: attention and FFN in one unit
    width_knob = "hidden"
    lora_targets = ("uv_proj", "z_proj", "o_proj")
    position_hooks = ("rotate", "score_bias")  # a score bias in the quadratic form only (check_config)

    def __init__(self, cfg, position: nn.Module):
        super().__init__()
        g = self.options(cfg)
        self.form, self.scores, self.chunk_size = g.form, g.scores, g.chunk_size
        self.e, self.s = self.width(cfg), g.qk_dim
        self.n = g.chunk_size if g.form == "chunked" else (cfg.max_seq_len or g.chunk_size)  # the fixed 1/n
        self.position = position
        self.uv_proj = nn.Linear(cfg.d_model, 2 * self.e, bias=False)
        self.z_proj = nn.Linear(cfg.d_model, self.s, bias=False)
        self.o_proj = nn.Linear(self.e, cfg.d_model, bias=False)
        n_qk = 2 if g.form == "quadratic" else 4  # rows: queries first, then keys ([quad, lin] each if chunked)
        self.gamma = nn.Parameter(torch.empty(n_qk, self.s))
        self.beta = nn.Parameter(torch.empty(n_qk, self.s))
        self.reset_special_parameters()

    def reset_special_parameters(self) -> None:
        # Scales N(0, 1), offsets 0. The paper draws scales from N(0, 0.02), where its relative-position bias
        # inside the relu^2 gives the first gradients; without that bias the scores are O(gamma^2) and their
        # gradient O(gamma^3), and a copy task does not move off chance in 300 steps (N(0, 1) solves it).
        nn.init.normal_(self.gamma, std=1.0)
        nn.init.zeros_(self.beta)

    def residual_projections(self) -> list[nn.Linear]:
        return [self.o_proj]

    def no_decay_parameters(self) -> list[nn.Parameter]:
        return [self.gamma, self.beta]  # per-dim scales and offsets, like norm weights

    @staticmethod
    def check_config(cfg) -> None:
        if GAU.options(cfg).form == "chunked" and "score_bias" in POSITIONS[cfg.position].contributes:
            raise ValueError(f"position={cfg.position} biases attention scores, which gau.form=chunked cannot apply "
                             "(its linear attention across chunks has no scores); use gau.form=quadratic")

    @staticmethod
    def width(cfg) -> int:
        g = GAU.options(cfg)
        return g.hidden or g.expansion * cfg.d_model

    @staticmethod
    def flops_per_token(cfg, seq_len: int) -> float:
        g, e = GAU.options(cfg), GAU.width(cfg)
        if g.form == "quadratic":  # Q K^T (2 s T) and A V (2 e T), forward + backward
            return 6 * (g.qk_dim + e) * seq_len
        # the same inside a chunk, plus K_lin^T V and Q_lin S (2 * 2 s e)
        return 6 * (g.qk_dim + e) * min(g.chunk_size, seq_len) + 12 * g.qk_dim * e

    @staticmethod
    def activation_bytes(cfg, seq_len: int, s: int) -> float:
        """Input (s D), U, V, their SiLU inputs, U * AV and AV (6 e), Z, Q, K and its pre-activation (4 s_qk), in
        the compute dtype; the relu^2 scores (2 s T) of the quadratic form, or the fp32 chunk tensors of the
        chunked one (2 s_qk + e, 8 C, s_qk e / C)."""
        g, e = GAU.options(cfg), GAU.width(cfg)
        sq = g.qk_dim
        total = s * (cfg.d_model + 6 * e + 4 * sq)
        if g.form == "chunked":
            C = min(g.chunk_size, seq_len)
            return total + 4 * (2 * sq + e) + 8 * C + 4 * sq * e / C
        return total + (2 * s * seq_len if g.scores == "relu2" else 0)

    @staticmethod
    def cache_bytes(cfg, seq_len: int, s: int) -> float:
        """quadratic: K (s_qk) and V (e) of every token; chunked: S (s_qk, e) fp32, and the two keys (2 s_qk) and
        V (e) of the tokens past the last completed chunk (chunks aligned to position 0)."""
        g, e = GAU.options(cfg), GAU.width(cfg)
        if g.form == "quadratic":
            return s * (g.qk_dim + e) * seq_len
        return 4 * g.qk_dim * e + s * (2 * g.qk_dim + e) * (seq_len % g.chunk_size)

    def init_cache(self, batch_size: int, device, dtype) -> tuple:
        if self.form == "quadratic":
            k = torch.zeros(batch_size, 1, 0, self.s, device=device, dtype=dtype)
            v = torch.zeros(batch_size, 1, 0, self.e, device=device, dtype=dtype)
            return k, v
        S = torch.zeros(batch_size, self.s, self.e, device=device, dtype=torch.float32)
        k = torch.zeros(batch_size, 2, 0, self.s, device=device, dtype=dtype)
        v = torch.zeros(batch_size, 0, self.e, device=device, dtype=dtype)
        return S, k, v

    def forward(self, x: Tensor, cache: tuple | None = None, offset: int = 0):
        u, v = F.silu(self.uv_proj(x)).chunk(2, dim=-1)  # (B, T, e) each
        z = F.silu(self.z_proj(x))  # (B, T, s)
        qk = z[:, None] * self.gamma[:, None] + self.beta[:, None]  # (B, n_qk, T, s): per-dim scale and offset
        h = qk.shape[1] // 2
        q, k = self.position.rotate(qk[:, :h], qk[:, h:], offset)  # (B, h, T, s) each, h = 1 or 2 ([quad, lin])
        if self.form == "quadratic":
            o, cache = self._quadratic(q, k, v, cache, offset)
        else:
            o, cache = self._chunked(q, k, v, cache)
        return self.o_proj(u * o), cache

    def _quadratic(self, q: Tensor, k: Tensor, v: Tensor, cache: tuple | None, offset: int):
        """q/k (B, 1, T, s), v (B, T, e) -> A V (B, T, e) over the cached keys and the new ones; the first query at
        absolute position `offset`."""
        v = v[:, None]  # (B, 1, T, e)
        if cache is not None:
            k = torch.cat([cache[0], k], dim=2)  # (B, 1, P + T, s)
            v = torch.cat([cache[1], v], dim=2)  # (B, 1, P + T, e)
            cache = (k, v)
        T, L = q.shape[2], k.shape[2]
        mask = torch.ones(T, L, dtype=torch.bool, device=q.device).tril(diagonal=L - T)  # query i is at L - T + i
        bias = None  # or the position's (1, T, L): GAU has one head
        if "score_bias" in self.position.contributes:
            q_pos = torch.arange(offset, offset + T, device=q.device)  # absolute positions of the queries
            k_pos = torch.arange(offset + T - L, offset + T, device=q.device)  # and of the (cached + new) keys
            bias = self.position.score_bias(1, q_pos, k_pos, q.dtype)
        if self.scores == "softmax":  # without a past or a bias, is_causal lets SDPA pick its fused kernels
            causal = L == T and bias is None
            attn_mask = None if causal else mask if bias is None else bias.masked_fill(~mask, float("-inf"))
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal)
        else:
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.s)  # (B, 1, T, L)
            a = F.relu(scores if bias is None else scores + bias).square()
            o = a.masked_fill(~mask, 0.0) @ v / self.n  # (B, 1, T, e)
        return o[:, 0], cache

    def _chunked(self, q: Tensor, k: Tensor, v: Tensor, cache: tuple | None):
        """q/k (B, 2, T, s) [quad, lin], v (B, T, e) -> (B, T, e). With a cache, the partial chunk's keys and
        values go in front (with dummy queries), so every chunk stays aligned to absolute position 0."""
        B, _, T, s = q.shape
        C, e = self.chunk_size, self.e
        S0, k_part, v_part = self.init_cache(B, q.device, q.dtype) if cache is None else cache
        P = k_part.shape[2]
        k = torch.cat([k_part, k], dim=2)  # (B, 2, L, s), L = P + T
        v = torch.cat([v_part, v], dim=1)  # (B, L, e)
        L = P + T
        N = -(-L // C)
        pad = N * C - L
        with torch.autocast(q.device.type, enabled=False):
            qc = F.pad(q.float(), (0, 0, P, pad)).view(B, 2, N, C, s)  # (B, 2, N, C, s)
            kc = F.pad(k.float(), (0, 0, 0, pad)).view(B, 2, N, C, s)  # (B, 2, N, C, s)
            vc = F.pad(v.float(), (0, 0, 0, pad)).view(B, N, C, e)  # (B, N, C, e)
            mask = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
            a = F.relu(qc[:, 0] @ kc[:, 0].transpose(-1, -2) / math.sqrt(s)).square()  # (B, N, C, C)
            quad = a.masked_fill(~mask, 0.0) @ vc / C  # (B, N, C, e)
            kv = kc[:, 1].transpose(-1, -2) @ vc / C  # (B, N, s, e): one chunk's K_lin^T V / C
            cum = kv.cumsum(dim=1)
            before = torch.cat([torch.zeros_like(kv[:, :1]), cum[:, :-1]], dim=1) + S0[:, None]  # (B, N, s, e)
            lin = qc[:, 1] @ before  # (B, N, C, e)
            o = (quad + lin).view(B, N * C, e)[:, P:L]  # (B, T, e)
        if cache is not None:
            full = L // C  # completed chunks: their sums join the state, the rest stays as keys and values
            S = S0 + cum[:, full - 1] if full else S0
            cache = (S, k[:, :, full * C:], v[:, full * C:])
        return o.to(v.dtype), cache
