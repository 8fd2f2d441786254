"""PPO with a learned value function (actor-critic): per-token rewards with a KL penalty, GAE, clipped losses.

PPO (Schulman et al. 2017, "Proximal Policy Optimization Algorithms", arXiv:1707.06347) is an actor-critic
method: the policy pi_theta (the actor) is trained on advantages estimated with a learned value function V (the
critic). Its clipped ratio replaces TRPO's KL trust region (Schulman et al. 2015) by a first-order objective that
gives no incentive to move the ratio outside [1 - eps, 1 + eps]. For language models (Ouyang et al. 2022,
"InstructGPT", arXiv:2203.02155; TRL's PPOTrainer) each completion token is an action, the state is the prompt
and the tokens so far, and the scalar score s of the completion arrives at its last token:

    r_t   = -kl_coef (log pi_old(y_t) - log pi_ref(y_t)) + [t = last] s          (N, T) per-token reward

Generalised advantage estimation (Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized
Advantage Estimation", arXiv:1506.02438, eq. 16), with V_{T'} = 0 after the last token:

    delta_t = r_t + gamma V_{t+1} - V_t                                            (N, T) TD(0) errors
    A_t     = sum_l (gamma lambda)^l delta_{t+l} = delta_t + gamma lambda A_{t+1}  (N, T)
    R_t     = A_t + V_t                                                            (N, T) lambda-returns

This is TD(lambda) seen from the actor: the advantage is an exponentially weighted sum of TD errors; lambda = 0
is the one-step TD error (low variance, biased by V), lambda = 1 the Monte Carlo return minus V (unbiased, high
variance; with gamma = 1 the reward-to-go minus the value). The advantages are whitened over the batch's
completion tokens (mean 0, std 1; TRL's masked_whiten). With ratio rho_t = pi_theta(y_t) / pi_old(y_t):

    L_pi = -mean_t min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps_high) A_t)          (align/losses/grpo.py)
    L_V  = 0.5 mean_t max((V_t - R_t)^2, (clip(V_t, V_old,t - c, V_old,t + c) - R_t)^2)   (PPO2's value clip)
    L    = L_pi + vf_coef L_V

Means run over the completion tokens (mask (N, T)); R and A are constants (computed at sampling time from
pi_old and V_old). Every function is vectorised over the N sequences; GAE runs one reverse loop over T.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from align.losses.grpo import token_clip
from model.options import Options, Sectioned, option


@dataclass
class PPOOptions(Options):
    gamma: float = option(1.0, min=0.0, max=1.0)  # discount per token (TRL's default 1: the score is not discounted)
    lam: float = option(0.95, min=0.0, max=1.0)  # GAE lambda: 0 = one-step TD error, 1 = Monte Carlo return - V
    vf_coef: float = option(0.1, min=0.0)  # weight of the value loss against the policy loss (shared trunk)
    cliprange_value: float = option(0.2, min=0.0)  # c: how far a value may move from V_old before its loss clips
    kl_coef: float = option(0.05, min=0.0)  # per-token KL penalty in the reward (0: no reference model)
    whiten: bool = True  # whiten the advantages over the batch's completion tokens


class PPOObjective(Sectioned):
    """The PPO objective as a config entry: its options are `align.ppo.*` (composed in align/config.py)."""

    section = PPOOptions


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """(N, T), (N, T) -> scalar mean of x over the masked tokens."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = False) -> Tensor:
    """(N, T), (N, T) -> scalar variance of x over the masked tokens (Bessel-corrected if `unbiased`)."""
    n = mask.sum()
    var = masked_mean((x - masked_mean(x, mask)) ** 2, mask)
    return var * n / (n - 1).clamp(min=1) if unbiased else var


def whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(N, T) -> (N, T) (x - mean) / std over the masked tokens (unbiased std, as TRL), 0 elsewhere."""
    return (x - masked_mean(x, mask)) * torch.rsqrt(masked_var(x, mask, unbiased=True) + eps) * mask


def token_rewards(scores: Tensor, logp: Tensor, ref_logp: Tensor | None, mask: Tensor, kl_coef: float) -> Tensor:
    """Scores (N,), sampling and reference log-probs (N, T), mask (N, T) -> r (N, T): -kl_coef (logp - ref_logp)
    on every completion token, plus the score on the last one. `ref_logp` may be None when kl_coef == 0."""
    last = mask * (mask.cumsum(-1) == mask.sum(-1, keepdim=True))  # (N, T) one-hot on the last completion token
    rewards = last * scores.unsqueeze(-1)  # (N, T)
    if kl_coef:
        rewards = rewards - kl_coef * (logp - ref_logp) * mask
    return rewards


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Rewards, values and mask (N, T) -> (advantages, returns), each (N, T) and 0 off the mask.

    A_t = delta_t + gamma lambda A_{t+1}, delta_t = r_t + gamma V_{t+1} - V_t; the value and the advantage after
    the last completion token are 0 (the episode ends there), so tokens off the mask contribute nothing."""
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    following = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], 1)  # (N, T) 1 where t + 1 is a token
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], 1) * following  # (N, T) V_{t+1}
    deltas = rewards + gamma * next_values - values  # (N, T)
    advantages = torch.zeros_like(values)  # (N, T)
    carry = torch.zeros_like(values[:, 0])  # (N,) A_{t+1}
    for t in reversed(range(values.shape[1])):
        carry = deltas[:, t] + gamma * lam * following[:, t] * carry
        advantages[:, t] = carry
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def ppo_advantages(scores: Tensor, logp: Tensor, ref_logp: Tensor | None, values: Tensor, mask: Tensor,
                   opts: PPOOptions) -> tuple[Tensor, Tensor, Tensor]:
    """Scores (N,); pi_old and pi_ref token log-probs and V_old (N, T); mask (N, T) -> (advantages, returns,
    per-token rewards), each (N, T): GAE on the KL-penalised rewards, advantages whitened if `opts.whiten`."""
    mask = mask.to(values.dtype)
    rewards = token_rewards(scores.to(values.dtype), logp, ref_logp, mask, opts.kl_coef)
    advantages, returns = gae(rewards, values, mask, opts.gamma, opts.lam)
    return (whiten(advantages, mask) if opts.whiten else advantages), returns, rewards


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float
               ) -> tuple[Tensor, Tensor]:
    """V, V_old, R, mask (N, T) -> (0.5 mean max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2), the share of
    tokens where the clipped term is the larger one: TRL's val/clipfrac)."""
    mask = mask.to(values.dtype)
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)  # (N, T)
    plain, bounded = (values - returns) ** 2, (clipped - returns) ** 2  # (N, T) each
    return 0.5 * masked_mean(torch.maximum(plain, bounded), mask), masked_mean((bounded > plain).to(mask), mask)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 - Var(R - V) / Var(R) over the masked tokens: 1 = V predicts the returns, 0 = no better than their mean."""
    mask = mask.to(values.dtype)
    return 1 - masked_var(returns - values, mask) / masked_var(returns, mask).clamp(min=1e-8)


def ppo_loss(logp: Tensor, old_logp: Tensor, values: Tensor, old_values: Tensor, advantages: Tensor,
             returns: Tensor, mask: Tensor, opts: PPOOptions, eps_low: float, eps_high: float | None = None
             ) -> tuple[Tensor, dict[str, Tensor]]:
    """Token log-probs of pi_theta and pi_old, values V and V_old, advantages, returns and mask, each (N, T) ->
    (L_pi + vf_coef L_V, detached stats: policy_loss, value_loss, policy_clipfrac, value_clipfrac,
    explained_variance, approx_kl = mean 0.5 (logp - old_logp)^2 as TRL's policy/approxkl_avg)."""
    mask = mask.to(logp.dtype)
    n, t = logp.shape
    # each token is its own one-token "sequence" for the clipped surrogate, whose advantage is per sequence
    per_token, clipped = token_clip(logp.reshape(n * t, 1), old_logp.reshape(n * t, 1), advantages.reshape(n * t),
                                    None, eps_low, eps_low if eps_high is None else eps_high)  # (N * T, 1) each
    policy = masked_mean(per_token.view(n, t), mask)
    value, value_clipfrac = value_loss(values, old_values, returns, mask, opts.cliprange_value)
    stats = {"policy_loss": policy, "value_loss": value, "value_clipfrac": value_clipfrac,
             "policy_clipfrac": masked_mean(clipped.view(n, t).to(mask), mask),
             "explained_variance": explained_variance(values, returns, mask),
             "approx_kl": masked_mean(0.5 * (logp - old_logp) ** 2, mask)}
    return policy + opts.vf_coef * value, {k: v.detach() for k, v in stats.items()}
