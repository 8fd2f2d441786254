"""Alignment losses as pure tensor functions: log-probs, DPO (and variants), GRPO pieces.

Shapes: B sequences, T positions, V vocabulary. Every function here is stateless and testable by hand.

Log-probs. ``logits[:, t]`` is the model's prediction for ``labels[:, t]``: labels are already shifted
(``labels[:, t] = input_ids[:, t + 1]``), and ``mask[:, t] = 1`` marks completion tokens that count.

    token_logprobs    log pi(labels[b, t] | ...)                         (B, T)
    sequence_logprobs sum_t mask[b, t] * token_logprobs[b, t]             (B,)

DPO (Rafailov et al. 2023, "Direct Preference Optimization", eq. 7). With the policy/reference
sequence log-probs of the chosen (w) and rejected (l) completions,

    h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))       (B,)
    sigmoid: -(1 - ls) log sigma(beta h) - ls log sigma(-beta h)          (ls: label smoothing, cDPO)
    ipo:     (h - 1 / (2 beta))^2                                         (Azar et al. 2023, IPO)
    hinge:   relu(1 - beta h)                                             (SLiC, Zhao et al. 2023)

as in TRL's ``DPOTrainer``. Implicit rewards: ``beta * (log pi(y) - log ref(y))``, detached.

SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward",
arXiv:2405.14734, eq. 6): no reference model; the reward is the length-normalised log-prob, and a target
margin gamma separates the two completions:

    simpo:   -log sigma(beta / |y_w| log pi(y_w) - beta / |y_l| log pi(y_l) - gamma)   (|y|: completion tokens)

Variants are entries of ``LOSSES`` (name -> loss of the margin, and whether the margin needs the reference's
log-probs or per-token normalisation), so a trainer asks the entry, never the name. ``LOSSES`` is a checked
registry: an entry that is not a ``PreferenceLoss`` giving one finite loss per margin is refused when registered.

GRPO (Shao et al. 2024, "DeepSeekMath", eq. 3-4). G completions per prompt, rewards r (N = groups * G,):

    A_i = (r_i - mean(r_group)) / (std(r_group) + eps)                   (N,)   group-relative advantage
    ratio = exp(logp - old_logp)                                          (B, T)
    L_clip = -min(ratio A, clip(ratio, 1 - eps_low, 1 + eps_high) A)      (B, T) (eps_high: DAPO clip-higher)
    KL = ref / pi - log(ref / pi) - 1  = exp(ref_logp - logp) - (ref_logp - logp) - 1   (k3, >= 0)
    loss = aggregate(L_clip + beta KL, mask)

The k3 term estimates KL(pi_theta || pi_ref) from samples of pi_theta (DeepSeekMath eq. 4).
Aggregation "sequence" is the paper's 1/G sum_i 1/|o_i| sum_t; "token" divides by the total number of
completion tokens (DAPO, Yu et al. 2025), so long completions are not down-weighted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from model.component import Registry

# ---------------------------------------------------------------------------------------------- log-probs


def token_logprobs(logits: Tensor, labels: Tensor) -> Tensor:
    """(B, T, V), (B, T) -> (B, T) log-prob of each label, computed in at least fp32 (bf16/fp16 upcast).

    Labels below 0 (e.g. -100 ignore markers) are read as token 0; mask those positions out."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    picked = logits.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked - torch.logsumexp(logits, dim=-1)  # (B, T)


def sequence_logprobs(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """(B, T, V), (B, T), (B, T) -> (B,) sum of the masked completion tokens' log-probs."""
    logp = token_logprobs(logits, labels)  # (B, T)
    return (logp * mask.to(logp.dtype)).sum(-1)


# ---------------------------------------------------------------------------------------------- DPO


def _smoothed(z: Tensor, label_smoothing: float) -> Tensor:
    """-(1 - ls) log sigma(z) - ls log sigma(-z): the logistic loss with labels flipped at rate ls (cDPO)."""
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def _sigmoid(h: Tensor, beta: float, label_smoothing: float, gamma: float) -> Tensor:
    return _smoothed(beta * h, label_smoothing)


def _ipo(h: Tensor, beta: float, label_smoothing: float, gamma: float) -> Tensor:
    return (h - 1 / (2 * beta)) ** 2


def _hinge(h: Tensor, beta: float, label_smoothing: float, gamma: float) -> Tensor:
    return torch.relu(1 - beta * h)


def _simpo(h: Tensor, beta: float, label_smoothing: float, gamma: float) -> Tensor:
    return _smoothed(beta * h - gamma, label_smoothing)


@dataclass(frozen=True)
class PreferenceLoss:
    """One `align.loss_type`: the loss of the margin h, and what h is made of.

    score(y) = log pi(y) [/ |y| if length_normalized] [- log ref(y) if needs_reference];  h = score(y_w) - score(y_l)
    """

    fn: Callable[[Tensor, float, float, float], Tensor]  # (h (B,), beta, label_smoothing, gamma) -> (B,)
    needs_reference: bool = True  # False: no reference model at all (the trainer skips its forward)
    length_normalized: bool = False  # log-probs per completion token (SimPO)
    label_smoothing: bool = False  # whether align.label_smoothing applies


def preference_loss(entry) -> None:
    """The contract of a LOSSES entry: a PreferenceLoss whose fn gives one finite loss per pair, tried on three
    margins. TypeError saying what is wrong."""
    if not isinstance(entry, PreferenceLoss):
        raise TypeError(f"{entry!r} must be a PreferenceLoss")
    h = torch.tensor([-1.0, 0.0, 1.0])  # (B,) margins
    out = entry.fn(h, 0.1, 0.1, 0.5)
    if not (isinstance(out, Tensor) and out.shape == h.shape and bool(torch.isfinite(out).all())):
        raise TypeError(f"{entry.fn.__name__}(h, beta, label_smoothing, gamma) must give one finite loss per margin, "
                        f"got {out!r}")


LOSSES = Registry("DPO loss_type", preference_loss, {
    "sigmoid": PreferenceLoss(_sigmoid, label_smoothing=True),
    "ipo": PreferenceLoss(_ipo),
    "hinge": PreferenceLoss(_hinge),
    "simpo": PreferenceLoss(_simpo, needs_reference=False, length_normalized=True, label_smoothing=True),
})


def preference_loss_type(name: str) -> PreferenceLoss:
    """The registry entry for `name`; ValueError naming the valid ones."""
    if name not in LOSSES:
        raise ValueError(f"unknown DPO loss_type {name!r}; valid: {sorted(LOSSES)}")
    return LOSSES[name]


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor | None,
    ref_rejected: Tensor | None,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    gamma: float = 0.0,
    chosen_tokens: Tensor | None = None,
    rejected_tokens: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sequence log-probs (B,) each -> (loss (B,), chosen_rewards (B,), rejected_rewards (B,)).

    Reduce the loss with ``.mean()``. Rewards are beta * score(y), detached. ``ref_*`` may be None for a
    loss without a reference (simpo); ``*_tokens`` (B,) are the completion lengths a length-normalised loss
    divides by; ``gamma`` is SimPO's target margin; ``label_smoothing`` (cDPO) applies to sigmoid and simpo."""
    entry = preference_loss_type(loss_type)
    if label_smoothing and not entry.label_smoothing:
        raise ValueError(f"label_smoothing does not apply to loss_type={loss_type!r}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen, rejected = policy_chosen, policy_rejected  # (B,) each
    if entry.length_normalized:
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError(f"loss_type={loss_type!r} needs the completion lengths chosen_tokens, rejected_tokens")
        chosen, rejected = chosen / chosen_tokens.clamp(min=1), rejected / rejected_tokens.clamp(min=1)
    if entry.needs_reference:
        if ref_chosen is None or ref_rejected is None:
            raise ValueError(f"loss_type={loss_type!r} needs the reference log-probs ref_chosen, ref_rejected")
        chosen, rejected = chosen - ref_chosen, rejected - ref_rejected
    h = chosen - rejected  # (B,)
    return entry.fn(h, beta, label_smoothing, gamma), beta * chosen.detach(), beta * rejected.detach()


# ---------------------------------------------------------------------------------------------- GRPO

ADVANTAGE_SCALES = ("group", "batch", "none")


def grpo_advantages(rewards: Tensor, group_size: int, scale: str = "group", eps: float = 1e-4) -> Tensor:
    """(N,) rewards, consecutive groups of ``group_size`` completions of one prompt -> (N,) advantages.

    r - group mean, divided by the group std ("group", GRPO), the batch std ("batch") or nothing ("none",
    Dr. GRPO). Stds are unbiased (as TRL). A group whose rewards are all equal gets exactly 0."""
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}; valid: {list(ADVANTAGE_SCALES)}")
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"group_size must be >= 2 and divide the {rewards.numel()} rewards, got {group_size}")
    r = rewards.float().view(-1, group_size)  # (groups, G)
    flat = r.amax(-1, keepdim=True) == r.amin(-1, keepdim=True)  # (groups, 1)
    centered = torch.where(flat, torch.zeros_like(r), r - r.mean(-1, keepdim=True))  # (groups, G)
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
) -> tuple[Tensor, dict[str, Tensor]]:
    """Token log-probs (B, T) of the policy, the sampling policy and the reference; advantages (B,);
    completion mask (B, T) -> (scalar loss, {"kl", "clip_fraction"} detached scalars).

    ``ref_logp`` may be None when ``beta == 0``. clip_fraction is the share of completion tokens whose
    clipped term is active (no gradient): ratio < 1 - eps_low with A < 0, or ratio > 1 + eps_high with A > 0."""
    if beta and ref_logp is None:
        raise ValueError("grpo_loss needs ref_logp when beta != 0")
    eps_high = eps_low if eps_high is None else eps_high
    per_token = clipped_surrogate(logp, old_logp, advantages, eps_low, eps_high)  # (B, T)
    kl = torch.zeros_like(per_token) if ref_logp is None else kl_estimate(logp, ref_logp)  # (B, T)
    if beta:
        per_token = per_token + beta * kl
    loss = aggregate(per_token, mask, level)
    with torch.no_grad():
        ratio = torch.exp(logp - old_logp)  # (B, T)
        adv = advantages.unsqueeze(-1)  # (B, 1)
        clipped = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))  # (B, T)
        stats = {
            "kl": aggregate(kl.detach(), mask, level),
            "clip_fraction": aggregate(clipped.to(per_token.dtype), mask, "token"),
        }
    return loss, stats
