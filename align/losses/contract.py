"""The contract of a preference loss (`align.loss_type`): what it is given, what it returns, what it declares.

A loss sees one `PreferenceBatch` of N scored completions, never the trainer:

    policy     (N,)    log pi(y | x) = sum_t log pi(y_t | x, y_<t) over the completion tokens
    reference  (N,)    the same under pi_ref; None when the entry declares needs_reference = False
    tokens     (N,)    completion lengths |y| (>= 1)
    token_nll  (N, T)  -log pi(y_t | x, y_<t) on completion tokens, 0 elsewhere (the SFT term of ORPO)
    desirable  (N,)    bool: chosen / desirable completions

A paired batch (`paired = True`, the DPO family, ORPO) is B chosen rows then their B rejected rows: row i pairs row
i + B, and `desirable` is B times True then B times False. An unpaired batch (KTO) is any mix of desirable and
undesirable completions, each with its own prompt. `loss(batch, beta, opts)` returns (scalar loss, {name: detached
scalar}); `opts` is the entry's own options (`section`, nested under `align.<registry name>`), None without one.

An entry declares `section`, `needs_reference` (False: the trainer neither runs nor keeps pi_ref) and `paired`
(True: it refuses unpaired data before a run starts). `preference_loss` checks an entry when it is registered: it
subclasses `PreferenceLoss`, defines `loss`, and gives a finite scalar loss and named metrics on a toy batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from model.component import declares
from model.options import Sectioned


@dataclass(frozen=True)
class PreferenceBatch:
    policy: Tensor  # (N,) sequence log-probs under the policy
    reference: Tensor | None  # (N,) under pi_ref; None for a reference-free loss
    tokens: Tensor  # (N,) completion lengths
    token_nll: Tensor  # (N, T) per-token NLL under the policy, 0 off the completion
    desirable: Tensor  # (N,) bool: chosen (paired) / desirable (unpaired)

    @staticmethod
    def pairs(policy: Tensor, reference: Tensor | None, tokens: Tensor, token_nll: Tensor) -> PreferenceBatch:
        """A paired batch from (2B,) chosen-then-rejected rows: desirable = B x True, then B x False."""
        half = policy.shape[0] // 2
        desirable = torch.arange(policy.shape[0], device=policy.device) < half  # (2B,)
        return PreferenceBatch(policy, reference, tokens, token_nll, desirable)

    def halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(2B, ...) -> chosen (B, ...), rejected (B, ...) of a paired batch."""
        return x.chunk(2)


class PreferenceLoss(Sectioned):
    REQUIRED: ClassVar[tuple[str, ...]] = ("loss",)
    needs_reference: ClassVar[bool] = True  # False: no reference model at all (the trainer skips its forward)
    paired: ClassVar[bool] = True  # True: chosen-then-rejected pairs; False: unpaired desirable/undesirable rows

    @staticmethod
    def loss(batch: PreferenceBatch, beta: float, opts) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x where mask (same shape), 0 when mask is empty."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def reward_metrics(chosen: Tensor, rejected: Tensor, logps: Tensor, batch: PreferenceBatch) -> dict[str, Tensor]:
    """TRL's DPO logs from implicit rewards (B,) of the chosen and rejected rows of a paired batch: rewards/chosen,
    rewards/rejected, rewards/margins, rewards/accuracies; logps/chosen, logps/rejected from logps (2B,)."""
    chosen, rejected = chosen.detach(), rejected.detach()
    logps_chosen, logps_rejected = batch.halves(logps.detach())
    return {"rewards/chosen": chosen.mean(), "rewards/rejected": rejected.mean(),
            "rewards/margins": (chosen - rejected).mean(), "rewards/accuracies": (chosen > rejected).float().mean(),
            "logps/chosen": logps_chosen.mean(), "logps/rejected": logps_rejected.mean()}


def toy_batch(paired: bool) -> PreferenceBatch:
    """Two chosen and two rejected completions (or, unpaired, two desirable and two undesirable)."""
    policy = torch.tensor([-4.0, -6.0, -5.0, -3.0])  # (4,)
    tokens = torch.tensor([2.0, 3.0, 2.0, 1.0])  # (4,)
    token_nll = torch.tensor([[2.0, 2.0, 0.0], [2.0, 2.0, 2.0], [2.5, 2.5, 0.0], [3.0, 0.0, 0.0]])  # (4, 3)
    desirable = torch.tensor([True, False, True, False]) if not paired else torch.tensor([True, True, False, False])
    return PreferenceBatch(policy, policy + 0.5, tokens, token_nll, desirable)


def preference_loss(entry) -> None:
    """The contract of a LOSSES entry (see the module docstring). TypeError saying what is wrong."""
    declares(PreferenceLoss, entry)
    out = entry.loss(toy_batch(entry.paired), 0.1, entry.section() if entry.section is not None else None)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)):
        raise TypeError(f"{entry.__name__}.loss must return (loss, {{name: metric}}), got {out!r}")
    loss, metrics = out
    if not (isinstance(loss, Tensor) and loss.dim() == 0 and bool(torch.isfinite(loss))):
        raise TypeError(f"{entry.__name__}.loss must give one finite scalar loss, got {loss!r}")
    if not all(isinstance(k, str) and isinstance(v, Tensor) and v.dim() == 0 for k, v in metrics.items()):
        raise TypeError(f"{entry.__name__}.loss metrics must map names to scalar tensors, got {metrics!r}")
