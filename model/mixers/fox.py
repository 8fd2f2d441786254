"""Forgetting attention, the Forgetting Transformer's token mixer (`model.mixer=fox`).

Lin, Nikishin, He, Courville 2025, "Forgetting Transformer: Softmax Attention with a Forget Gate"
(arXiv:2503.02130), §2. Per head h, a scalar forget gate per token down-weights the scores of older keys:

    f_t = sigmoid(w_f^T x_t + b_f)                    (one w_f, b_f per head; b_f starts at `model.fox.gate_bias`)
    c_t = sum_{l <= t} log f_l                          cumulative log-forget, fp32
    D_ij = sum_{l = j+1}^{i} log f_l = c_i - c_j       (j <= i; -inf for j > i)
    y_i = sum_j softmax_j(q_i . k_j / sqrt(d) + D_ij + p_ij) v_j

f = 1 everywhere is causal softmax attention (softmax.py); otherwise D acts as a gated RNN's forget gate on softmax
attention, an ALiBi bias -m (i - j) whose per-token slope is learned from the input. The model's position
enters as in softmax.py: q and k go through `rotate(q, k, offset)` (RoPE for `model.position=rope`, the identity for
`none`: the paper's FoX uses no RoPE, the gate orders the tokens) and p (H, T, P + T) is its `score_bias` for the
absolute positions of the queries and keys (ALiBi, T5), 0 when it contributes none.
Grouped-query heads as softmax.py: H query heads, each with its own gate, share Hk = n_kv_heads key/value heads.

Shapes: x (B, T, D) -> q (B, H, T, d), k/v (B, Hk, T, d), log f and c (B, H, T) -> bias D (B, H, T, P + T) ->
y (B, T, D). Computed by `F.scaled_dot_product_attention` with D + p as an additive float mask; a mask that needs a
gradient (training) runs SDPA's math path, which keeps the (B, H, T, T) probabilities for backward:
memory quadratic in T, where the paper's Triton kernel (or fla's `forgetting_attn`) stays linear.
Backend `fla` (training only, cache None): fla's `parallel_forgetting_attn` Triton kernel (flash attention with
the bias D: it takes log f (B, T, H), fp32, and sums it itself) on the rotated q, k, v in (B, T, H, d) layout,
bf16 (as fla's tests run it), scale d^-0.5 (its default, SDPA's); a position's score bias cannot enter it, so
`position` must contribute none (rope or none; refused when the config is read).
Cache: (k, v, c): the rotated keys and values seen so far (B, Hk, P, d) and their cumulative log-forget values
c (B, H, P) in fp32 (at least), so a new chunk continues c from c_{P-1} and decoding gives the full forward's biases.

Inherited from softmax attention: the q/k/v/o projections and their init, `qkv` and `attend`,
`residual_projections` (o_proj) and `lora_targets` (q/k/v/o_proj; the gate has H outputs, too few to adapt).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.mixers import kernels
from model.mixers.softmax import SoftmaxAttention
from model.options import Options, option


@dataclass
class FoxConfig(Options):
    # b_f at init: 0 as in the paper (f ~ 0.5, a short memory it learns to lengthen); large -> softmax attention
    gate_bias: float = option(0.0)
    # torch (reference) | fla (Triton kernel, GPU only; no score-bias position)
    backend: str = option("torch", choices=("torch", "fla"), runtime=True)


class ForgettingAttention(SoftmaxAttention):
    section = FoxConfig
    llama_module = None  # Llama's attention has no forget gate: export_hf refuses this mixer
    position_hooks = ("rotate", "score_bias")  # RoPE on q and k; ALiBi / T5 biases added to D

    def __init__(self, cfg, position: nn.Module):
        super().__init__(cfg, position)
        fox = self.options(cfg)
        self.gate_bias = fox.gate_bias
        self.kernel = (kernels.load("fox", "fla", "fla.ops.forgetting_attn", "parallel_forgetting_attn")
                       if fox.backend == "fla" else None)
        self.f_proj = nn.Linear(cfg.d_model, cfg.n_heads, bias=True)  # w_f, b_f of every head

    def reset_special_parameters(self) -> None:
        nn.init.constant_(self.f_proj.bias, self.gate_bias)

    @staticmethod
    def check_config(cfg) -> None:
        if ForgettingAttention.options(cfg).backend == "fla" and SoftmaxAttention.biased(cfg):
            raise ValueError(f"position={cfg.position} biases attention scores, which fox.backend=fla cannot apply "
                             "(fla's kernel adds the forget gate's only); use fox.backend=torch or another position")

    @staticmethod
    def flops_per_token(cfg, seq_len: int) -> float:
        # softmax's Q K^T and A V, plus adding the bias to the T scores of each head (x3 with backward)
        return SoftmaxAttention.flops_per_token(cfg, seq_len) + 3 * cfg.n_heads * seq_len

    @staticmethod
    def activation_bytes(cfg, seq_len: int, s: int) -> float:
        """Measured with tests' `saved_activation_bytes` on CPU (T = 32 and 64, H = 4 and 8, Hk = H and H / 2, fp32
        and bf16 autocast): a bias that needs a gradient sends SDPA to its math path, which computes in fp32 (bf16
        inputs upcast) and keeps q, k and v expanded to the H heads (3 D fp32) and the probabilities (H T fp32);
        its input and the output o_proj reads (2 D, compute dtype); logsigmoid's input and buffer (2 H fp32).
        On CUDA the memory-efficient kernel takes the bias's gradient instead: q, k, v, the output and the bias
        (H T) in the compute dtype, not measured here."""
        D, H = cfg.d_model, cfg.n_heads
        return s * 2 * D + 4 * (3 * D + H * seq_len + 2 * H)

    @staticmethod
    def cache_bytes(cfg, seq_len: int, s: int) -> float:
        """Per token: softmax's keys and values (s 2 Hk d) plus c, H fp32 values."""
        return (s * 2 * cfg.kv_heads * cfg.head_dim + 4 * cfg.n_heads) * seq_len

    def init_cache(self, batch_size: int, device, dtype) -> tuple[Tensor, Tensor, Tensor]:
        k, v = super().init_cache(batch_size, device, dtype)  # (B, Hk, 0, d) each
        c = torch.zeros(batch_size, self.n_heads, 0, device=device, dtype=torch.promote_types(dtype, torch.float32))
        return k, v, c  # c (B, H, 0), fp32 (fp64 in an fp64 model)

    def log_f(self, x: Tensor) -> Tensor:
        """log f (B, T, H) of x's tokens, fp32 (at least)."""
        z = self.f_proj(x)  # (B, T, H)
        return F.logsigmoid(z.to(torch.promote_types(z.dtype, torch.float32)))

    def log_forget(self, x: Tensor, start: Tensor | None) -> Tensor:
        """c (B, H, T) fp32: the cumulative log f of x's tokens, continued from `start` (B, H, 1) when given."""
        c = self.log_f(x).transpose(1, 2).cumsum(dim=-1)  # (B, H, T)
        return c if start is None else c + start

    def forward(self, x: Tensor, cache: tuple[Tensor, Tensor, Tensor] | None = None, offset: int = 0):
        T = x.shape[1]
        q, k, v = self.qkv(x, offset)  # (B, H, T, d), (B, Hk, T, d) x 2
        if cache is None and self.kernel is not None:
            return self.fla(q, k, v, self.log_f(x)), None
        past = 0 if cache is None else cache[0].shape[2]
        start = cache[2][:, :, -1:] if past else None  # c of the last cached key (B, H, 1)
        c = self.log_forget(x, start)  # (B, H, T): c_i of the new queries
        if cache is not None:
            k = torch.cat([cache[0], k], dim=2)  # (B, Hk, P + T, d)
            v = torch.cat([cache[1], v], dim=2)
            c_keys = torch.cat([cache[2], c], dim=2)  # (B, H, P + T)
            cache = (k, v, c_keys)
        else:
            c_keys = c
        q_pos = torch.arange(offset, offset + T, device=x.device)  # absolute positions of the queries
        k_pos = torch.arange(offset - past, offset + T, device=x.device)  # and of the keys
        bias = c[..., :, None] - c_keys[..., None, :]  # (B, H, T, P + T): D_ij
        position_bias = self.position.score_bias(self.n_heads, q_pos, k_pos, bias.dtype)  # (H, T, P + T) or None
        if position_bias is not None:
            bias = bias + position_bias
        bias = bias.masked_fill(k_pos > q_pos[:, None], float("-inf"))  # causal: key j <= query i
        return self.attend(q, k, v, bias.to(q.dtype), causal=False), cache

    def fla(self, q: Tensor, k: Tensor, v: Tensor, log_f: Tensor) -> Tensor:
        """fla's kernel on q (B, H, T, d), k, v (B, Hk, T, d), which it wants as (B, T, H, d) (fla >= 0.2; grouped
        heads as ours), and log f (B, T, H) -> the output projection of o, y (B, T, D)."""
        kernels.require_cuda(q, "fox", "fla")
        B, _, T, _ = q.shape
        dtype = q.dtype
        q, k, v = (t.transpose(1, 2).to(torch.bfloat16) for t in (q, k, v))  # (B, T, H or Hk, d)
        o = self.kernel(q, k, v, log_f, scale=self.head_dim ** -0.5)  # (B, T, H, d)
        return self.o_proj(o.reshape(B, T, self.n_heads * self.head_dim).to(dtype))  # (B, T, H d) -> (B, T, D)
