"""GRPO and its variants as options of one RL objective: advantages, importance ratios, KL, aggregation.

GRPO (Shao et al. 2024, "DeepSeekMath", arXiv:2402.03300, eq. 3-4). G completions per prompt, rewards r
(N = groups * G,), token log-probs (N, T) of the policy (logp), the sampling policy (old_logp) and pi_ref:

    A_i = (r_i - mean(r_group)) / (std(r_group) + eps)                   (N,)   group-relative advantage
    ratio = exp(logp - old_logp)                                          (N, T)
    L_clip = -min(ratio A, clip(ratio, 1 - eps_low, 1 + eps_high) A)      (N, T) (eps_high: DAPO clip-higher)
    KL = exp(ref_logp - logp) - (ref_logp - logp) - 1                     (N, T) (k3, >= 0, eq. 4)
    loss = aggregate(L_clip + beta KL, mask)

Baselines (`align.baseline`):
    mean           the group mean above (GRPO)
    leave_one_out  A_i = r_i - 1/(G-1) sum_{j != i} r_j = G/(G-1) (r_i - mean(r_group))   (RLOO: Ahmadian et al.
                   2024, "Back to Basics: Revisiting REINFORCE Style Optimization", arXiv:2402.14740)
and then the scale (`align.scale`): the group's std (GRPO), the batch's, or none (Dr. GRPO; RLOO).

Objectives (`align.objective`, `SURROGATES`), each (N, T) per-token loss terms:
    clip   the per-token clipped ratio L_clip above (GRPO, PPO)
    gspo   GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv:2507.18071): one ratio per
           sequence, s_i = exp(1/|y_i| sum_t (logp - old_logp)), clipped at the sequence level:
           -min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i), the same value on each token of y_i; s_i
           moves far less than a token ratio, so the paper clips at 3e-4 / 4e-4 (`align.epsilon`, `epsilon_high`)
    cispo  CISPO (MiniMax-M1, arXiv:2506.13585): REINFORCE on every token with a clipped, stop-gradient
           importance weight: -sg(clip(ratio, 1 - eps_low, 1 + eps_high)) A_i logp; no token loses its gradient

Aggregation "sequence" is the GRPO paper's 1/G sum_i 1/|o_i| sum_t (GSPO's sequence mean); "token" divides by the
total number of completion tokens (DAPO, Yu et al. 2025; CISPO's 1 / sum_i |o_i|), so long completions are not
down-weighted.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

ADVANTAGE_SCALES = ("group", "batch", "none")
BASELINES = ("mean", "leave_one_out")


def grpo_advantages(rewards: Tensor, group_size: int, scale: str = "group", eps: float = 1e-4,
                    baseline: str = "mean") -> Tensor:
    """(N,) rewards, consecutive groups of ``group_size`` completions of one prompt -> (N,) advantages.

    r minus the group mean ("mean", GRPO) or the mean of the group's other rewards ("leave_one_out", RLOO),
    divided by the group std ("group"), the batch std ("batch") or nothing ("none"). Stds are unbiased (as TRL).
    A group whose rewards are all equal gets exactly 0."""
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}; valid: {list(ADVANTAGE_SCALES)}")
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; valid: {list(BASELINES)}")
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"group_size must be >= 2 and divide the {rewards.numel()} rewards, got {group_size}")
    r = rewards.float().view(-1, group_size)  # (groups, G)
    if baseline == "mean":
        base = r.mean(-1, keepdim=True)  # (groups, 1)
    else:
        base = (r.sum(-1, keepdim=True) - r) / (group_size - 1)  # (groups, G) mean of the others
    flat = r.amax(-1, keepdim=True) == r.amin(-1, keepdim=True)  # (groups, 1)
    centered = torch.where(flat, torch.zeros_like(r), r - base)  # (groups, G)
    if scale == "group":
        centered = centered / (r.std(-1, keepdim=True) + eps)
    elif scale == "batch":
        centered = centered / (r.std() + eps)
    return centered.view(-1)  # (N,)


def clipped_surrogate(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, eps_low: float, eps_high: float | None = None
) -> Tensor:
    """(B, T), (B, T), (B,) -> per-token loss (B, T) = -min(ratio A, clip(ratio, 1-eps_low, 1+eps_high) A).

    ``old_logp`` is treated as a constant (detached); ``eps_high`` defaults to ``eps_low``."""
    eps_high = eps_low if eps_high is None else eps_high
    ratio = torch.exp(logp - old_logp.detach())  # (B, T)
    adv = advantages.unsqueeze(-1)  # (B, 1)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)  # (B, T)
    return -torch.minimum(ratio * adv, clipped * adv)


def _inactive(ratio: Tensor, adv: Tensor, eps_low: float, eps_high: float) -> Tensor:
    """Where the clipped branch of -min(ratio A, clip(ratio) A) is taken (no gradient), broadcast like ratio * adv."""
    return ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))


def token_clip(logp, old_logp, advantages, mask, eps_low, eps_high) -> tuple[Tensor, Tensor]:
    """GRPO / PPO: -> per-token loss (B, T), clipped (B, T) bool."""
    ratio = torch.exp(logp.detach() - old_logp.detach())  # (B, T)
    clipped = _inactive(ratio, advantages.unsqueeze(-1), eps_low, eps_high)  # (B, T)
    return clipped_surrogate(logp, old_logp, advantages, eps_low, eps_high), clipped


def sequence_clip(logp, old_logp, advantages, mask, eps_low, eps_high) -> tuple[Tensor, Tensor]:
    """GSPO: the sequence ratio s_i (B, 1) from the mean token log-ratio over the completion -> per-token (B, T)."""
    log_s = ((logp - old_logp.detach()) * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
    s = torch.exp(log_s)  # (B, 1)
    adv = advantages.unsqueeze(-1)  # (B, 1)
    per_seq = -torch.minimum(s * adv, torch.clamp(s, 1 - eps_low, 1 + eps_high) * adv)  # (B, 1)
    return per_seq.expand_as(logp), _inactive(s.detach(), adv, eps_low, eps_high).expand_as(logp)


def cispo(logp, old_logp, advantages, mask, eps_low, eps_high) -> tuple[Tensor, Tensor]:
    """CISPO: -> per-token loss -sg(clip(ratio)) A logp (B, T), clipped weight (B, T) bool."""
    ratio = torch.exp(logp.detach() - old_logp.detach())  # (B, T)
    weight = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)  # (B, T), no gradient
    return -weight * advantages.unsqueeze(-1) * logp, (ratio < 1 - eps_low) | (ratio > 1 + eps_high)


SURROGATES: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {"clip": token_clip, "gspo": sequence_clip,
                                                               "cispo": cispo}


def kl_estimate(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """(B, T), (B, T) -> (B, T) k3 estimate of KL(pi_theta || pi_ref) on tokens sampled from pi_theta.

    exp(ref - logp) - (ref - logp) - 1 >= 0, zero where the two agree; ``ref_logp`` is detached."""
    d = ref_logp.detach() - logp  # (B, T)
    return torch.exp(d) - d - 1


def _aggregate_token(per_token: Tensor, mask: Tensor) -> Tensor:
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def _aggregate_sequence(per_token: Tensor, mask: Tensor) -> Tensor:
    per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # (B,)
    return per_seq.mean()


AGGREGATIONS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "token": _aggregate_token,
    "sequence": _aggregate_sequence,
}


def aggregate(per_token: Tensor, mask: Tensor, level: str = "token") -> Tensor:
    """(B, T), (B, T) -> scalar. "token": sum / number of masked tokens (DAPO); "sequence": mean over
    sequences of each sequence's masked mean (GRPO paper). A sequence with no tokens counts as 0."""
    if level not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation level {level!r}; valid: {sorted(AGGREGATIONS)}")
    return AGGREGATIONS[level](per_token, mask.to(per_token.dtype))


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    beta: float,
    eps_low: float,
    eps_high: float | None = None,
    level: str = "token",
    objective: str = "clip",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Token log-probs (B, T) of the policy, the sampling policy and the reference; advantages (B,);
    completion mask (B, T) -> (scalar loss, {"kl", "clip_fraction"} detached scalars).

    ``objective`` names a SURROGATES entry. ``ref_logp`` may be None when ``beta == 0``. clip_fraction is the share
    of completion tokens where clipping is active: the clipped branch taken (clip, gspo: no gradient) or the
    importance weight clipped (cispo)."""
    if objective not in SURROGATES:
        raise ValueError(f"unknown objective {objective!r}; valid: {sorted(SURROGATES)}")
    if beta and ref_logp is None:
        raise ValueError("grpo_loss needs ref_logp when beta != 0")
    eps_high = eps_low if eps_high is None else eps_high
    mask = mask.to(logp.dtype)
    per_token, clipped = SURROGATES[objective](logp, old_logp, advantages, mask, eps_low, eps_high)  # (B, T) each
    kl = torch.zeros_like(per_token) if ref_logp is None else kl_estimate(logp, ref_logp)  # (B, T)
    if beta:
        per_token = per_token + beta * kl
    loss = aggregate(per_token, mask, level)
    stats = {"kl": aggregate(kl.detach(), mask, level),
             "clip_fraction": aggregate(clipped.to(per_token.dtype), mask, "token")}
    return loss, stats
