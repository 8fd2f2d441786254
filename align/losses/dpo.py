"""DPO and the losses of its margin: sigmoid (DPO, cDPO), ipo, hinge, simpo.

DPO (Rafailov et al. 2023, "Direct Preference Optimization", arXiv:2305.18290, eq. 7). With the policy/reference
sequence log-probs of the chosen (w) and rejected (l) completions, (B,) each,

    h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))       (B,)
    sigmoid: -(1 - ls) log sigma(beta h) - ls log sigma(-beta h)          (ls: label smoothing, cDPO)
    ipo:     (h - 1 / (2 beta))^2                                         (Azar et al. 2023, IPO)
    hinge:   relu(1 - beta h)                                             (SLiC, Zhao et al. 2023)

as in TRL's ``DPOTrainer``. Implicit rewards: ``beta * (log pi(y) - log ref(y))``, detached.

SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward",
arXiv:2405.14734, eq. 6): no reference model; the reward is the length-normalised log-prob, and a target
margin gamma separates the two completions:

    simpo:   -log sigma(beta / |y_w| log pi(y_w) - beta / |y_l| log pi(y_l) - gamma)   (|y|: completion tokens)

Each is a `MarginLoss`: the loss of h (B,) -> (B,), and what h is made of (`needs_reference`, `length_normalized`).
Options: `align.sigmoid.label_smoothing`; `align.simpo.gamma`, `align.simpo.label_smoothing`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from align.losses.contract import PreferenceBatch, PreferenceLoss, reward_metrics
from model.options import Options, option


@dataclass
class SmoothingOptions(Options):
    label_smoothing: float = option(0.0, min=0.0, below=0.5)  # share of flipped preference labels (cDPO)


@dataclass
class SimPOOptions(Options):
    gamma: float = option(0.5, min=0.0)  # target reward margin gamma (eq. 6; absolute, not gamma / beta)
    label_smoothing: float = option(0.0, min=0.0, below=0.5)  # as cDPO, on the SimPO logit


def _smoothed(z: Tensor, label_smoothing: float) -> Tensor:
    """-(1 - ls) log sigma(z) - ls log sigma(-z): the logistic loss with labels flipped at rate ls (cDPO)."""
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


class MarginLoss(PreferenceLoss):
    """score(y) = log pi(y) [/ |y| if length_normalized] [- log ref(y) if needs_reference]; h = score(y_w) - score(y_l).
    A subclass defines `of_margin(h, beta, opts) -> (B,)`."""

    length_normalized: ClassVar[bool] = False  # log-probs per completion token (SimPO)

    @staticmethod
    def of_margin(h: Tensor, beta: float, opts) -> Tensor:
        raise NotImplementedError

    @classmethod
    def scores(cls, batch: PreferenceBatch) -> Tensor:
        """(N,) score of every row; beta * score is the implicit reward."""
        score = batch.policy / batch.tokens.clamp(min=1) if cls.length_normalized else batch.policy
        return score - batch.reference if cls.needs_reference else score

    @classmethod
    def loss(cls, batch: PreferenceBatch, beta: float, opts) -> tuple[Tensor, dict[str, Tensor]]:
        chosen, rejected = batch.halves(cls.scores(batch))  # (B,) each
        losses = cls.of_margin(chosen - rejected, beta, opts)  # (B,)
        return losses.mean(), reward_metrics(beta * chosen, beta * rejected, batch.policy, batch)


class Sigmoid(MarginLoss):
    section = SmoothingOptions

    @staticmethod
    def of_margin(h: Tensor, beta: float, opts: SmoothingOptions) -> Tensor:
        return _smoothed(beta * h, opts.label_smoothing)


class IPO(MarginLoss):
    @staticmethod
    def of_margin(h: Tensor, beta: float, opts) -> Tensor:
        return (h - 1 / (2 * beta)) ** 2


class Hinge(MarginLoss):
    @staticmethod
    def of_margin(h: Tensor, beta: float, opts) -> Tensor:
        return torch.relu(1 - beta * h)


class SimPO(MarginLoss):
    section = SimPOOptions
    needs_reference = False
    length_normalized = True

    @staticmethod
    def of_margin(h: Tensor, beta: float, opts: SimPOOptions) -> Tensor:
        return _smoothed(beta * h - opts.gamma, opts.label_smoothing)


DPO_LOSSES: dict[str, type[MarginLoss]] = {"sigmoid": Sigmoid, "ipo": IPO, "hinge": Hinge, "simpo": SimPO}


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
    """The margin losses as one pure function: sequence log-probs (B,) each -> (loss (B,), chosen_rewards (B,),
    rejected_rewards (B,)), the same values the LOSSES entries give a trainer.

    Reduce the loss with ``.mean()``. Rewards are beta * score(y), detached. ``ref_*`` may be None for a
    loss without a reference (simpo); ``*_tokens`` (B,) are the completion lengths a length-normalised loss
    divides by; ``gamma`` is SimPO's target margin; ``label_smoothing`` (cDPO) applies to sigmoid and simpo."""
    if loss_type not in DPO_LOSSES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; valid: {sorted(DPO_LOSSES)}")
    entry = DPO_LOSSES[loss_type]
    given = {"label_smoothing": label_smoothing, "gamma": gamma}
    fields = entry.section.__dataclass_fields__ if entry.section is not None else {}
    if label_smoothing and "label_smoothing" not in fields:
        raise ValueError(f"label_smoothing does not apply to loss_type={loss_type!r}")
    opts = entry.section(**{k: v for k, v in given.items() if k in fields}) if entry.section is not None else None
    if entry.length_normalized and (chosen_tokens is None or rejected_tokens is None):
        raise ValueError(f"loss_type={loss_type!r} needs the completion lengths chosen_tokens, rejected_tokens")
    if entry.needs_reference and (ref_chosen is None or ref_rejected is None):
        raise ValueError(f"loss_type={loss_type!r} needs the reference log-probs ref_chosen, ref_rejected")
    policy = torch.cat([policy_chosen, policy_rejected])  # (2B,)
    tokens = torch.ones_like(policy) if chosen_tokens is None else torch.cat([chosen_tokens, rejected_tokens])
    reference = torch.cat([ref_chosen, ref_rejected]) if entry.needs_reference else None
    batch = PreferenceBatch.pairs(policy, reference, tokens, policy.new_zeros(policy.shape[0], 1))
    chosen, rejected = batch.halves(entry.scores(batch))  # (B,) each
    return entry.of_margin(chosen - rejected, beta, opts), beta * chosen.detach(), beta * rejected.detach()
