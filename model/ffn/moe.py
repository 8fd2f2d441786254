"""Sparse mixture-of-experts FFN (`model.ffn=moe`), top-k token-choice routing without token dropping.

Shazeer et al. 2017 ("Outrageously Large Neural Networks", arXiv:1701.06538); top-1 as Switch
Transformers (Fedus et al. 2021, arXiv:2101.03961), top-2 as GShard / Mixtral (Jiang et al. 2024,
arXiv:2401.04088); optional shared expert as DeepSeekMoE (Dai et al. 2024, arXiv:2401.06066):

    p(x)   = softmax(W_r x)                   router in fp32, x (S, D) -> p (S, E), S = B T tokens
    K(x)   = top-k indices of p(x)            k = top_k, distinct experts
    g_i    = p_i / sum_{j in K} p_j  (k > 1, Mixtral);   g_i = p_i  (k = 1, Switch: the gate keeps the
             router's gradient; renormalising one prob would make it 1 and cut the router off)
    y      = sum_{i in K(x)} g_i FFN_i(x)  [+ FFN_shared(x)]

Every expert runs on exactly the tokens routed to it (gather by index, `index_add_` back): no capacity
factor, no dropped tokens, so a token's output never depends on other tokens (causal at any length).
Auxiliary losses, summed into `self.aux_loss` after each forward (`Transformer.aux_loss` collects them):
    load balance (Switch) = aux_loss_coef * E * sum_i f_i P_i,   f_i = share of the S k routed slots that go
        to expert i (all k choices count, each 1/k of a token; = Switch's top-1 fraction when k = 1),
        P_i = mean router prob of expert i; it is 1 * coef for perfectly balanced routing;
    router z-loss (ST-MoE, Zoph et al. 2022, arXiv:2202.08906) = z_loss_coef * mean_S logsumexp(W_r x)^2.
`self.expert_share` (E,) is f (detached), for logging.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.component import FFN
from model.options import Options, option


def dense_ffns() -> dict[str, type]:
    """Every registered FFN but the MoE ones: the choices of an expert."""
    from model.ffn import FFNS  # the registry imports this file

    return {name: cls for name, cls in FFNS.items() if not issubclass(cls, MoE)}


@dataclass
class MoEConfig(Options):
    num_experts: int = option(4, min=1)  # experts per MoE layer
    top_k: int = option(2, min=1)  # experts each token is routed to (1 = Switch, 2 = GShard/Mixtral)
    aux_loss_coef: float = option(0.01, min=0.0)  # Switch load-balancing loss weight
    z_loss_coef: float = option(0.001, min=0.0)  # router z-loss weight (ST-MoE); keeps router logits small
    shared_expert: bool = False  # one always-on expert beside the routed ones (DeepSeekMoE)
    expert: str = option("swiglu", choices=lambda: list(dense_ffns()))  # the dense FFN each expert is

    def check(self) -> None:
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k={self.top_k} must be in [1, num_experts={self.num_experts}]")


class MoE(FFN):
    section = MoEConfig
    width_knob = "d_ff"  # each expert's hidden width

    def __init__(self, cfg):
        super().__init__()
        m = cfg.moe
        expert = dense_ffns()[m.expert]
        self.num_experts, self.top_k = m.num_experts, m.top_k
        self.aux_loss_coef, self.z_loss_coef = m.aux_loss_coef, m.z_loss_coef
        self.router = nn.Linear(cfg.d_model, m.num_experts, bias=False)
        self.experts = nn.ModuleList(expert(cfg) for _ in range(m.num_experts))
        self.shared_expert = expert(cfg) if m.shared_expert else None
        self.aux_loss: Tensor | None = None
        self.expert_share: Tensor | None = None

    @property
    def lora_targets(self) -> tuple[str, ...]:  # the experts' own Linears (names are suffixes)
        return self.experts[0].lora_targets

    def residual_projections(self) -> list[nn.Linear]:
        experts = [*self.experts, *([self.shared_expert] if self.shared_expert is not None else [])]
        return [p for e in experts for p in e.residual_projections()]

    @staticmethod
    def hidden_width(cfg) -> int:
        return dense_ffns()[cfg.moe.expert].hidden_width(cfg)

    @staticmethod
    def activation_bytes(cfg, s: int, mixed: bool) -> float:
        """fp32 router input and probs (4 D + 8 E), and per routed slot the gathered input, the gated output and
        its index_add copy (3 s D, + 4 D fp32 under autocast) plus the expert's own activations without its
        input; the shared expert adds its full activations."""
        m, D = cfg.moe, cfg.d_model
        expert = dense_ffns()[m.expert].activation_bytes(cfg, s, mixed) - s * D
        total = 4 * D + 8 * m.num_experts + m.top_k * ((3 * s + (4 if mixed else 0)) * D + expert)
        return total + (expert + s * D if m.shared_expert else 0)

    @property
    def inactive_params(self) -> int:
        """Expert parameters a token does not pass through, for FLOPs per token: (E - k) experts."""
        return (self.num_experts - self.top_k) * sum(p.numel() for p in self.experts[0].parameters())

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        tokens = x.reshape(B * T, D)  # (S, D)
        with torch.autocast(x.device.type, enabled=False):
            logits = F.linear(tokens.float(), self.router.weight.float())  # (S, E)
        probs = logits.softmax(dim=-1)  # (S, E)
        top_p, top_i = probs.topk(self.top_k, dim=-1)  # (S, k) each
        gates = top_p / top_p.sum(-1, keepdim=True) if self.top_k > 1 else top_p  # (S, k)

        slot_expert = top_i.reshape(-1)  # (S k,): slot j of token s sits at s * k + j
        order = slot_expert.argsort(stable=True)  # (S k,): slots grouped by expert
        counts = torch.bincount(slot_expert, minlength=self.num_experts)  # (E,)
        token_of = order // self.top_k  # (S k,): token of each sorted slot
        gate_of = gates.reshape(-1)[order]  # (S k,)
        y = torch.zeros_like(tokens)  # (S, D)
        start = 0
        for expert, n in zip(self.experts, counts.tolist()):  # one host sync for all experts
            if n:
                idx = token_of[start:start + n]  # (n,)
                out = expert(tokens[idx]) * gate_of[start:start + n, None]  # (n, D)
                y.index_add_(0, idx, out.to(y.dtype))
                start += n
        if self.shared_expert is not None:
            y = y + self.shared_expert(tokens).to(y.dtype)

        share = counts.float() / slot_expert.numel()  # (E,): f_i, sums to 1
        balance = self.num_experts * (share * probs.mean(0)).sum()
        z_loss = torch.logsumexp(logits, dim=-1).pow(2).mean()
        self.aux_loss = self.aux_loss_coef * balance + self.z_loss_coef * z_loss
        self.expert_share = share.detach()
        return y.view(B, T, D)  # (B, T, D)
