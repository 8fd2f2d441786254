"""ORPO: Hong, Lee, Thorne 2024, "ORPO: Monolithic Preference Optimization without Reference Model"
(arXiv:2403.07691), eq. 6-7. No reference model: the SFT term and a log odds-ratio penalty, in one loss.

With P(y|x) = exp(1/|y| sum_t log pi(y_t | x, y_<t)) the length-normalised likelihood (eq. 4) and
odds(y|x) = P / (1 - P), for pairs (B,) of chosen y_w and rejected y_l:

    L_SFT = 1/|y_w| sum_t -log pi(y_w,t | x, y_w,<t)                          (B,)   (eq. 2, the chosen side)
    L_OR  = -log sigma(log odds(y_w|x) - log odds(y_l|x))                     (B,)   (eq. 7)
    L     = mean(L_SFT + lambda L_OR)                                                (eq. 6)

log odds = log P - log(1 - P), with log(1 - P) = log(-expm1(log P)); log P is clamped just below 0 so that a
certain completion (P = 1) keeps finite odds. TRL's `ORPOTrainer.odds_ratio_loss` computes the same L_OR (its
`beta` is lambda); its NLL averages over all chosen tokens of a batch, the paper's (here) over each sequence.
Logged rewards are lambda log P (TRL's), plus log_odds_ratio (mean) and nll.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from align.losses.contract import PreferenceBatch, PreferenceLoss, reward_metrics
from model.options import Options, option

CERTAIN = -1e-6  # log P is clamped here: P = 1 would give infinite odds


@dataclass
class ORPOOptions(Options):
    ratio_weight: float = option(0.1, min=0.0)  # lambda (eq. 6): weight of the odds-ratio term against the NLL


def log_odds(mean_logp: Tensor) -> Tensor:
    """(B,) length-normalised log P -> (B,) log(P / (1 - P))."""
    logp = mean_logp.clamp(max=CERTAIN)
    return logp - (-logp.expm1()).log()


class ORPO(PreferenceLoss):
    section = ORPOOptions
    needs_reference = False

    @staticmethod
    def loss(batch: PreferenceBatch, beta: float, opts: ORPOOptions) -> tuple[Tensor, dict[str, Tensor]]:
        mean_logp = batch.policy / batch.tokens.clamp(min=1)  # (2B,) log P(y|x), eq. 4
        chosen, rejected = batch.halves(mean_logp)  # (B,) each
        ratio = log_odds(chosen) - log_odds(rejected)  # (B,)
        nll_chosen, _ = batch.halves(batch.token_nll.sum(-1) / batch.tokens.clamp(min=1))  # (B,) eq. 2
        losses = nll_chosen - opts.ratio_weight * F.logsigmoid(ratio)  # (B,)
        w = opts.ratio_weight
        metrics = reward_metrics(w * chosen, w * rejected, batch.policy, batch)
        return losses.mean(), {**metrics, "log_odds_ratio": ratio.detach().mean(), "nll": nll_chosen.detach().mean()}
