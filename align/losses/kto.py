"""KTO: Ethayarajh, Xu, Muennighoff, Jurafsky, Kiela 2024, "KTO: Model Alignment as Prospect Theoretic Optimization"
(arXiv:2402.01306), eq. 8. Unpaired: each completion is only labelled desirable or undesirable.

For N completions with implied rewards r = log pi(y|x) - log ref(y|x) (N,) and a reference point z_0,

    v(x, y) = lambda_D sigma(beta (r - z_0))     if y is desirable
              lambda_U sigma(beta (z_0 - r))     if y is undesirable
    L       = mean(lambda_y - v(x, y))                                        (N,) -> scalar

z_0 estimates KL(pi || ref): here the batch mean of r, clamped at 0 and detached (no gradient flows through the
reference point, as in the paper and TRL). The paper and TRL estimate it on mismatched (x_i, y_j) pairs, which
costs one more forward of each model; the batch's own completions are a cheaper, biased estimate.
lambda_D, lambda_U (`align.kto.desirable_weight`, `undesirable_weight`) balance the two kinds: the paper advises
lambda_D n_D / (lambda_U n_U) in [1, 4/3]. A paired batch is read as its chosen rows desirable, the rest not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from align.losses.contract import PreferenceBatch, PreferenceLoss, masked_mean
from model.options import Options, option


@dataclass
class KTOOptions(Options):
    desirable_weight: float = option(1.0, above=0.0)  # lambda_D: weight of desirable completions
    undesirable_weight: float = option(1.0, above=0.0)  # lambda_U: weight of undesirable completions


class KTO(PreferenceLoss):
    section = KTOOptions
    paired = False

    @staticmethod
    def loss(batch: PreferenceBatch, beta: float, opts: KTOOptions) -> tuple[Tensor, dict[str, Tensor]]:
        r = batch.policy - batch.reference  # (N,)
        z0 = r.mean().clamp(min=0).detach()  # () reference point
        good = batch.desirable  # (N,)
        weight = torch.where(good, opts.desirable_weight, opts.undesirable_weight)  # (N,) lambda_y
        value = weight * torch.sigmoid(torch.where(good, beta * (r - z0), beta * (z0 - r)))  # (N,) v(x, y)
        good_f, bad_f = good.to(r.dtype), (~good).to(r.dtype)
        rewards, logps = beta * r.detach(), batch.policy.detach()
        metrics = {"kl": z0, "rewards/chosen": masked_mean(rewards, good_f),
                   "rewards/rejected": masked_mean(rewards, bad_f),
                   "logps/chosen": masked_mean(logps, good_f), "logps/rejected": masked_mean(logps, bad_f),
                   "desirable_share": good_f.mean()}
        return (weight - value).mean(), metrics
