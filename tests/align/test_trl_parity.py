"""Parity with TRL where it exposes a tensor-level computation: ORPO's odds-ratio term
(`ORPOTrainer.odds_ratio_loss`). Skipped unless `trl` is installed (it is not a dependency: importing it loads
transformers, several seconds). TRL's DPO, KTO, RLOO and GRPO (GSPO, CISPO) losses sit inside `_compute_loss`
with the model's forward, so those are checked against the papers' formulas instead (test_loss_family.py)."""

from types import SimpleNamespace

import pytest
import torch

from align.losses import LOSSES, PreferenceBatch
from align.losses.orpo import ORPOOptions

orpo_trainer = pytest.importorskip("trl.experimental.orpo.orpo_trainer")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_orpo_odds_ratio_term_matches_trl(seed):
    g = torch.Generator().manual_seed(seed)
    B, lam = 5, 0.2
    tokens = torch.randint(1, 9, (2 * B,), generator=g).float()  # (2B,)
    mean_logp = -(torch.rand(2 * B, generator=g) * 3 + 0.05)  # (2B,) length-normalised log P, as TRL's inputs
    batch = PreferenceBatch.pairs(mean_logp * tokens, None, tokens, torch.zeros(2 * B, 1))  # NLL 0: the OR term alone
    loss, logs = LOSSES["orpo"].loss(batch, 0.1, ORPOOptions(ratio_weight=lam))
    trainer = SimpleNamespace(beta=lam, accelerator=SimpleNamespace(device="cpu"))  # TRL's beta is ORPO's lambda
    losses, chosen, rejected, _, log_odds = orpo_trainer.ORPOTrainer.odds_ratio_loss(trainer, *mean_logp.chunk(2))
    torch.testing.assert_close(loss, -losses.mean())  # TRL: loss = NLL - mean(lambda log sigma(log odds ratio))
    torch.testing.assert_close(logs["log_odds_ratio"], log_odds)
    torch.testing.assert_close(logs["rewards/chosen"], chosen.mean())
    torch.testing.assert_close(logs["rewards/rejected"], rejected.mean())
