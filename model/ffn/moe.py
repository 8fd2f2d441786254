"""Sparse mixture-of-experts FFN (`model.ffn=moe`), top-k token-choice routing without token dropping.

Shazeer et al. 2017 ("Outrageously Large Neural Networks", arXiv:1701.06538); top-1 as Switch
Transformers (Fedus et al. 2021, arXiv:2101.03961), top-2 as GShard / Mixtral (Jiang et al. 2024,
arXiv:2401.04088); optional shared expert as DeepSeekMoE (Dai et al. 2024, arXiv:2401.06066):

    p(x)   = softmax(W_r x)                   router in fp32, x (S, D) -> p (S, E), S = B T tokens
    K(x)   = top-k indices of p(x)            k = top_k, distinct experts (of W_r x + b with balance=bias, below)
    g_i    = p_i / sum_{j in K} p_j  (k > 1, Mixtral);   g_i = p_i  (k = 1, Switch: the gate keeps the
             router's gradient; renormalising one prob would make it 1 and cut the router off)
    y      = sum_{i in K(x)} g_i FFN_i(x)  [+ FFN_shared(x)]

Every expert runs on exactly the tokens routed to it, without capacity factor or dropped tokens, so a token's
output never depends on other tokens (causal at any length). The forward never synchronises with the host (no
`.item()`, no shapes that depend on the routing), so `torch.compile` traces it as one graph:
    grouped   the S k routed slots are sorted by expert and every expert's Linears run as one grouped GEMM
              (`F.grouped_mm`, offsets = cumulative expert loads on the device): the FLOPs of the routed
              tokens only. Used for swiglu / gelu experts made of plain Linears with widths a multiple of 8,
              in bf16 (CPU, or CUDA from sm80) or fp32 eager on CPU (grouped_mm's compiled form takes bf16 only);
    dense     otherwise (LoRA-adapted experts, other expert kinds, fp32 under torch.compile or on CUDA):
              every expert runs on all S tokens and is weighted by its gate, 0 where it was not chosen; the
              same outputs and gradients, at E / k times the expert FLOPs.

Load balancing, `model.moe.balance`:
    aux   the Switch loss, summed into `self.aux_loss` after each forward (`Transformer.aux_loss` collects it):
          aux_loss_coef * E * sum_i f_i P_i,  f_i = share of the S k routed slots that go to expert i (all k
          choices count, each 1/k of a token; = Switch's top-1 fraction when k = 1), P_i = mean router prob
          of expert i; it is 1 * coef for perfectly balanced routing;
    bias  auxiliary-loss-free balancing (DeepSeek-V3, arXiv:2412.19437 section 2.1.2): a per-expert bias b
          (the buffer `route_bias`, saved in checkpoints, so a resumed run continues it exactly) is added to
          the router logits for the top-k choice only; the gates g use the unbiased p. (DeepSeek-V3 adds b to
          sigmoid scores; with softmax the unchosen experts' p sit near 0, so one step of b flips all of their
          tokens at once and the loads oscillate; on the logits b acts as a prior exp(b) on p.) After every
          optimizer step b_i += bias_update_rate * sign(mean_j load_j - load_i), the loads counted over the
          step's routed slots (all micro-batches, all-reduced over ranks: `update_route_biases`), so every
          rank applies the same update. aux_loss_coef is unused; the z-loss still applies (it bounds the
          router logits, which balancing does not).
    z-loss (ST-MoE, Zoph et al. 2022, arXiv:2202.08906), both modes: z_loss_coef * mean_S logsumexp(W_r x)^2.
`self.expert_share` (E,) is f (detached), for logging.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.component import FFN
from model.ffn.gelu import GELUFFN
from model.ffn.registry import FFNS
from model.ffn.swiglu import SwiGLU
from model.options import Options, option


def dense_ffns() -> dict[str, type]:
    """Every registered FFN but the MoE ones: the choices of an expert."""
    return {name: cls for name, cls in FFNS.items() if not issubclass(cls, MoE)}


@dataclass
class MoEConfig(Options):
    num_experts: int = option(4, min=1)  # experts per MoE layer
    top_k: int = option(2, min=1)  # experts each token is routed to (1 = Switch, 2 = GShard/Mixtral)
    balance: str = option("aux", choices=("aux", "bias"))  # aux: Switch loss; bias: DeepSeek-V3 loss-free bias
    aux_loss_coef: float = option(0.01, min=0.0)  # Switch load-balancing loss weight (balance=aux only)
    bias_update_rate: float = option(1e-3, min=0.0)  # gamma of balance=bias: bias step per optimizer step
    z_loss_coef: float = option(0.001, min=0.0)  # router z-loss weight (ST-MoE); keeps router logits small
    shared_expert: bool = False  # one always-on expert beside the routed ones (DeepSeekMoE)
    expert: str = option("swiglu", choices=lambda: list(dense_ffns()))  # the dense FFN each expert is

    def check(self) -> None:
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k={self.top_k} must be in [1, num_experts={self.num_experts}]")


def grouped_mm_device(device: torch.device) -> bool:
    """Whether `F.grouped_mm` runs on `device`: CPU, or CUDA from compute capability 8.0 (its kernel's floor)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    return device.type == "cpu"


# The Linears of the expert kinds the grouped GEMM knows, in the order their forward applies them.
GROUPED = {SwiGLU: ("gate_proj", "up_proj", "down_proj"), GELUFFN: ("up_proj", "down_proj")}


class MoE(FFN):
    section = MoEConfig
    width_knob = "d_ff"  # each expert's hidden width

    def __init__(self, cfg):
        super().__init__()
        m = self.options(cfg)
        expert = dense_ffns()[m.expert]
        self.num_experts, self.top_k, self.balance = m.num_experts, m.top_k, m.balance
        self.aux_loss_coef = m.aux_loss_coef if m.balance == "aux" else 0.0
        self.z_loss_coef, self.bias_update_rate = m.z_loss_coef, m.bias_update_rate
        self.router = nn.Linear(cfg.d_model, m.num_experts, bias=False)
        self.experts = nn.ModuleList(expert(cfg) for _ in range(m.num_experts))
        self.shared_expert = expert(cfg) if m.shared_expert else None
        if m.balance == "bias":  # only then: aux-balanced runs keep their state-dict keys
            self.register_buffer("route_bias", torch.zeros(m.num_experts))  # (E,) fp32, persistent
        self.grouped_device = grouped_mm_device(self.router.weight.device)  # F.grouped_mm runs there
        self.aux_loss: Tensor | None = None
        self.expert_share: Tensor | None = None
        self.load: Tensor | None = None  # (E,) slots routed to each expert by training forwards, see forward
        self.step_load: Tensor | None = None  # (E,) summed over the optimizer step (optimizer_step_end)

    def _apply(self, fn, recurse=True):
        """`.to(dtype)` and friends cast route_bias too; it stays fp32 (its steps of 1e-3 vanish in bf16)."""
        bias = getattr(self, "route_bias", None)
        out = super()._apply(fn, recurse)
        if bias is not None and self.route_bias.dtype != torch.float32:
            self.route_bias = bias.to(self.route_bias.device)
        self.grouped_device = grouped_mm_device(self.router.weight.device)  # read here, not in the traced forward
        return out

    @property
    def lora_targets(self) -> tuple[str, ...]:  # the experts' own Linears (names are suffixes)
        return self.experts[0].lora_targets

    def residual_projections(self) -> list[nn.Linear]:
        experts = [*self.experts, *([self.shared_expert] if self.shared_expert is not None else [])]
        return [p for e in experts for p in e.residual_projections()]

    @staticmethod
    def hidden_width(cfg) -> int:
        return dense_ffns()[MoE.options(cfg).expert].hidden_width(cfg)

    @staticmethod
    def activation_bytes(cfg, s: int, mixed: bool) -> float:
        """fp32 router input and probs (4 D + 8 E), and per routed slot the gathered input, the gated output and
        its index_add copy (3 s D, + 4 D fp32 under autocast) plus the expert's own activations without its
        input; the shared expert adds its full activations. (The grouped path; the dense fallback keeps every
        expert's activations for every token.)"""
        m, D = MoE.options(cfg), cfg.d_model
        expert = dense_ffns()[m.expert].activation_bytes(cfg, s, mixed) - s * D
        total = 4 * D + 8 * m.num_experts + m.top_k * ((3 * s + (4 if mixed else 0)) * D + expert)
        return total + (expert + s * D if m.shared_expert else 0)

    @property
    def inactive_params(self) -> int:
        """Expert parameters a token does not pass through, for FLOPs per token: (E - k) experts."""
        return (self.num_experts - self.top_k) * sum(p.numel() for p in self.experts[0].parameters())

    # Training-loop events (model/component.py), used by balance=bias only.
    def micro_batch_start(self) -> None:
        self.load = None  # what an activation-checkpointing recompute in the last backward left

    def micro_batch_end(self) -> None:
        """Move the load this micro-batch's forward left into the step's sum (before backward, so an
        activation-checkpointing recompute is not counted)."""
        if self.load is not None:
            self.step_load = self.load if self.step_load is None else self.step_load + self.load
            self.load = None

    def step_skipped(self) -> None:
        self.load = self.step_load = None

    @torch.no_grad()
    def optimizer_step_end(self) -> None:
        """b_i += gamma sign(mean load - load_i), the load summed over the step's micro-batches and all ranks
        (an all-reduce), so every rank applies the same update."""
        if self.balance != "bias" or self.step_load is None:
            return
        load = self.step_load.clone()  # (E,) int64 slot counts
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(load)  # the global batch's loads, the same on every rank
        load = load.double()
        step = torch.sign(load.mean() - load)  # (E,): +1 underloaded, -1 overloaded
        self.route_bias.add_(self.bias_update_rate * step.to(self.route_bias.dtype))
        self.step_load = None

    def route(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """tokens (S, D) -> router logits (S, E) and probs (S, E) in fp32, chosen experts (S, k), gates (S, k)."""
        with torch.autocast(tokens.device.type, enabled=False):
            logits = F.linear(tokens.float(), self.router.weight.float())  # (S, E)
        probs = logits.softmax(dim=-1)  # (S, E)
        if self.balance == "bias":  # the bias (on the logits) picks the experts; the gates stay the router's probs
            top_i = (logits.detach() + self.route_bias.float()).topk(self.top_k, dim=-1).indices  # (S, k)
            top_p = probs.gather(-1, top_i)  # (S, k)
        else:
            top_p, top_i = probs.topk(self.top_k, dim=-1)  # (S, k) each
        gates = top_p / top_p.sum(-1, keepdim=True) if self.top_k > 1 else top_p  # (S, k)
        return logits, probs, top_i, gates

    def grouped_linears(self, dtype: torch.dtype) -> tuple[str, ...] | None:
        """The Linear names the grouped GEMM runs for these experts in `dtype`, or None (dense fallback)."""
        names = GROUPED.get(type(self.experts[0]))  # exactly these classes: a subclass may compute otherwise
        if names is None:
            return None
        if not self.grouped_device or dtype not in (torch.float32, torch.bfloat16):
            return None
        if dtype == torch.float32 and (self.router.weight.device.type != "cpu" or torch.compiler.is_compiling()):
            return None  # grouped_mm's CUDA kernel and its compiled (meta) form take bf16 only
        for name in names:
            for expert in self.experts:
                linear = getattr(expert, name, None)
                if type(linear) is not nn.Linear or linear.bias is not None or linear.weight.shape[0] % 8 \
                        or linear.weight.shape[1] % 8:  # LoRA-wrapped, biased, or rows not 16-byte aligned
                    return None
        return names

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        tokens = x.reshape(B * T, D)  # (S, D)
        logits, probs, top_i, gates = self.route(tokens)
        slot_expert = top_i.reshape(-1)  # (S k,): slot j of token s sits at s * k + j
        counts = torch.zeros(self.num_experts, dtype=torch.long, device=x.device).scatter_add_(
            0, slot_expert, torch.ones_like(slot_expert))  # (E,), on the device (bincount would sync)
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        names = self.grouped_linears(dtype)
        if names is not None:
            y = self.grouped_experts(tokens, slot_expert, counts, gates, names, dtype)
        else:
            y = self.dense_experts(tokens, top_i, gates)
        if self.shared_expert is not None:
            y = y + self.shared_expert(tokens).to(y.dtype)

        share = counts.float() / slot_expert.numel()  # (E,): f_i, sums to 1
        z_loss = torch.logsumexp(logits, dim=-1).pow(2).mean()
        self.aux_loss = self.z_loss_coef * z_loss
        if self.balance == "aux":
            self.aux_loss = self.aux_loss + self.aux_loss_coef * self.num_experts * (share * probs.mean(0)).sum()
        self.expert_share = share.detach()
        if self.balance == "bias" and self.training and torch.is_grad_enabled():  # the step's routing
            self.load = counts if self.load is None else self.load + counts  # read by the LightningModule
        return y.view(B, T, D)  # (B, T, D)

    def grouped_experts(self, tokens: Tensor, slot_expert: Tensor, counts: Tensor, gates: Tensor,
                        names: tuple[str, ...], dtype: torch.dtype) -> Tensor:
        """Sort the S k slots by expert, run each expert's Linears as one grouped GEMM over its rows."""
        order = slot_expert.argsort(stable=True)  # (S k,): slots grouped by expert
        token_of = order // self.top_k  # (S k,): token of each sorted slot
        gate_of = gates.reshape(-1)[order]  # (S k,)
        offs = counts.cumsum(0).to(torch.int32)  # (E,): end row of each expert's group
        h = tokens[token_of].to(dtype)  # (S k, D)

        def linear(inp: Tensor, name: str) -> Tensor:
            w = torch.stack([getattr(e, name).weight for e in self.experts]).to(dtype)  # (E, out, in)
            return F.grouped_mm(inp, w.transpose(-2, -1), offs=offs)  # (S k, out)

        if len(names) == 3:  # SwiGLU: down(silu(gate x) * up x)
            out = linear(F.silu(linear(h, names[0])) * linear(h, names[1]), names[2])
        else:  # GELU: down(gelu(up x))
            out = linear(F.gelu(linear(h, names[0]), approximate="tanh"), names[1])
        out = out * gate_of[:, None]  # (S k, D), fp32 as the gates
        return torch.zeros_like(tokens).index_add_(0, token_of, out.to(tokens.dtype))  # (S, D)

    def dense_experts(self, tokens: Tensor, top_i: Tensor, gates: Tensor) -> Tensor:
        """Every expert on every token, weighted by its gate (0 where not chosen): fixed shapes, E / k FLOPs."""
        dense = torch.zeros(tokens.shape[0], self.num_experts, dtype=gates.dtype, device=gates.device)
        dense = dense.scatter(1, top_i, gates)  # (S, E)
        y = torch.zeros_like(tokens)  # (S, D)
        for e, expert in enumerate(self.experts):
            y = y + (expert(tokens) * dense[:, e, None]).to(y.dtype)
        return y
