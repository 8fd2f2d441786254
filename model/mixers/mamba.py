"""Mamba selective state-space mixer (`model.mixer=mamba`).

Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (arXiv:2312.00752),
the block of Figure 3 with the selective SSM of Algorithm 2 (S6):

    x, z   = in_proj(u)                              u (B, T, D) -> x, z (B, T, E), E = d_inner or expand * D
    x      = SiLU(causal depthwise conv1d(x))        width d_conv, per channel
    dt, B, C = x_proj(x)                             (B, T, R), (B, T, N), (B, T, N), R = dt_rank
    dt     = softplus(dt_proj(dt))                   (B, T, E), the input-dependent step Delta
    A      = -exp(A_log)                             (E, N), S4D-real init A_n = -(n + 1)
    h_t    = exp(dt_t A) h_{t-1} + dt_t B_t x_t      (B, E, N)   zero-order hold for A, Euler for B
    y_t    = C_t h_t + D x_t                         (B, E)
    out    = out_proj(y * SiLU(z))                   (B, T, D)

Training runs the chunked scan (parallel over chunks) of `model/mixers/selective_scan.py` (its docstring has the
cost: O(B T (E + N)) memory kept for backward, a few (B, T, E, N) fp32 tensors transiently).
Cache: (conv_state (B, E, d_conv - 1), the last conv inputs; ssm_state (B, E, N) fp32, h_{t-1}). T new
tokens continue from it through the same parallel scan (a prefill, a chunk or one token).
Backend `mamba_ssm` runs training (no cache) through `selective_scan_fn` of the mamba_ssm package (CUDA);
decoding keeps the torch scan, which takes an initial state that the kernel does not.
Initialisation as the reference `mamba_simple.py`: S4D-real A, D = 1, dt_proj weight U(+-R^-0.5), dt_proj
bias = softplus^-1(dt) with dt log-uniform in [1e-3, 1e-1], conv1d PyTorch default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.component import Mixer
from model.mixers import kernels
from model.mixers.selective_scan import selective_scan
from model.options import Options, option


@dataclass
class MambaConfig(Options):
    d_state: int = option(16, min=1)  # N: SSM state size per channel
    d_conv: int = option(4, min=1)  # causal depthwise conv width
    expand: int = option(2, min=1)  # inner width = expand * d_model
    d_inner: int = option(0, min=0)  # inner width itself when > 0 (overrides expand), e.g. to match parameters
    dt_rank: int = option(0, min=0)  # rank of the delta projection; 0 = ceil(d_model / 16)
    chunk_size: int = option(64, min=1)  # chunk length of the parallel scan
    # torch (reference) | mamba_ssm (CUDA kernels)
    backend: str = option("torch", choices=("torch", "mamba_ssm"), runtime=True)


class Mamba(Mixer):
    section = MambaConfig
    width_knob = "d_inner"
    lora_targets = ("in_proj", "x_proj", "out_proj")
    position_hooks = ()  # applies none: its recurrence and causal conv order the tokens

    def __init__(self, cfg, position: nn.Module | None = None):
        super().__init__()  # `position` is unused: the recurrence and the causal conv carry order
        m = self.options(cfg)
        self.kernel = (kernels.load("mamba", "mamba_ssm", "mamba_ssm.ops.selective_scan_interface", "selective_scan_fn")
                       if m.backend == "mamba_ssm" else None)
        self.d_inner, self.d_state, self.d_conv = self.inner(cfg), m.d_state, m.d_conv
        self.dt_rank = m.dt_rank or math.ceil(cfg.d_model / 16)
        self.chunk_size = m.chunk_size
        E, N, R = self.d_inner, self.d_state, self.dt_rank
        self.in_proj = nn.Linear(cfg.d_model, 2 * E, bias=False)
        self.conv1d = nn.Conv1d(E, E, m.d_conv, groups=E, bias=True)  # left padding is done by hand
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        self.A_log = nn.Parameter(torch.empty(E, N))
        self.D = nn.Parameter(torch.empty(E))
        self.out_proj = nn.Linear(E, cfg.d_model, bias=False)
        self.reset_special_parameters()

    @torch.no_grad()
    def reset_special_parameters(self) -> None:
        E, N, R = self.d_inner, self.d_state, self.dt_rank
        self.A_log.copy_(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).expand(E, N))  # A_n = -(n+1)
        self.D.fill_(1.0)
        self.conv1d.reset_parameters()
        nn.init.uniform_(self.dt_proj.weight, -(R**-0.5), R**-0.5)
        dt_min, dt_max = 1e-3, 1e-1
        dt = torch.exp(torch.rand(E) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=1e-4)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)

    def residual_projections(self) -> list[nn.Linear]:
        return [self.out_proj]

    def no_decay_parameters(self) -> list[nn.Parameter]:
        return [self.A_log, self.D]  # as mamba_simple.py: decaying A or D towards 0 is not wanted

    @staticmethod
    def inner(cfg) -> int:
        m = Mamba.options(cfg)
        return m.d_inner or m.expand * cfg.d_model

    @staticmethod
    def flops_per_token(cfg, seq_len: int) -> float:
        """The scan, per channel and state: exp(dt A) (2), dt B x (2), the update h (2) and C . h (2) forward,
        x3 with backward: 24 E N. The projections and the conv are parameters (6 N covers them)."""
        return 24 * Mamba.inner(cfg) * Mamba.options(cfg).d_state

    @staticmethod
    def activation_bytes(cfg, seq_len: int, s: int) -> float:
        """Input (s D); x, z, the conv output and its SiLU, the gate and y (6 s E); the fp32 scan inputs x, dt, its
        pre-activation, y and the gated product (20 E) and B, C (24 N with their pre-split copies)."""
        E = Mamba.inner(cfg)
        return s * cfg.d_model + 6 * s * E + 20 * E + 24 * Mamba.options(cfg).d_state

    @staticmethod
    def cache_bytes(cfg, seq_len: int, s: int) -> float:
        """Fixed: the last d_conv - 1 conv inputs (E each, s bytes) and h (E, N) fp32."""
        m = Mamba.options(cfg)
        return Mamba.inner(cfg) * (s * (m.d_conv - 1) + 4 * m.d_state)

    def init_cache(self, batch_size: int, device, dtype) -> tuple[Tensor, Tensor]:
        conv_state = torch.zeros(batch_size, self.d_inner, self.d_conv - 1, device=device, dtype=dtype)
        f32 = torch.promote_types(dtype, torch.float32)
        ssm_state = torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=f32)
        return conv_state, ssm_state

    def forward(self, u: Tensor, cache: tuple[Tensor, Tensor] | None = None, offset: int = 0):
        Bsz, T, _ = u.shape
        x, z = self.in_proj(u).chunk(2, dim=-1)  # (B, T, E) each
        x = x.transpose(1, 2)  # (B, E, T)
        if cache is None:
            past = x.new_zeros(Bsz, self.d_inner, self.d_conv - 1)  # (B, E, K-1): causal zero padding
        else:
            past = cache[0].to(x.dtype)
        x = torch.cat([past, x], dim=-1)  # (B, E, K-1+T)
        conv_state = x[..., x.shape[-1] - (self.d_conv - 1):]  # (B, E, K-1)
        x = F.silu(self.conv1d(x)).transpose(1, 2)  # (B, T, E)
        dt, Bm, Cm = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)  # (B, T, R|N|N)
        f32 = torch.promote_types(u.dtype, torch.float32)  # the scan runs in fp32 (fp64 in fp64 tests)
        dt = F.softplus(F.linear(dt, self.dt_proj.weight).to(f32) + self.dt_proj.bias.to(f32))  # (B, T, E)
        A = -torch.exp(self.A_log.to(f32))  # (E, N)
        x, Bm, Cm = x.to(f32), Bm.to(f32), Cm.to(f32)
        if cache is None and self.kernel is not None:
            y, h_last = self.kernel_scan(x, dt, A, Bm, Cm), None
        else:
            h0 = x.new_zeros(Bsz, self.d_inner, self.d_state) if cache is None else cache[1].to(f32)
            y, h_last = selective_scan(x, dt, A, Bm, Cm, h0, self.chunk_size)  # (B, T, E), (B, E, N)
        y = (y + x * self.D.to(f32)) * F.silu(z.to(f32))  # (B, T, E)
        out = self.out_proj(y.to(u.dtype))  # (B, T, D)
        return out, (None if cache is None else (conv_state, h_last))

    def kernel_scan(self, x: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor) -> Tensor:
        """The fused CUDA selective scan (no initial state): kernel layout is (B, E, T) and (B, N, T)."""
        kernels.require_cuda(x, "mamba", "mamba_ssm")
        y = self.kernel(x.transpose(1, 2).contiguous(), dt.transpose(1, 2).contiguous(), A,
                        Bm.transpose(1, 2).contiguous(), Cm.transpose(1, 2).contiguous())  # (B, E, T)
        return y.transpose(1, 2)  # (B, T, E)
