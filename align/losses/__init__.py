"""Alignment losses as pure tensor functions, one file per family.

    logprobs.py   token and sequence log-probs of completion tokens
    contract.py   what a preference loss is given (`PreferenceBatch`) and declares (`PreferenceLoss`)
    dpo.py        DPO's margin losses: sigmoid (DPO, cDPO), ipo, hinge, simpo; `dpo_loss`
    orpo.py       ORPO (odds ratio + SFT NLL, no reference)
    kto.py        KTO (unpaired desirable / undesirable completions)
    grpo.py       GRPO and its variants: RLOO baseline, GSPO and CISPO objectives, k3 KL, aggregation
    ppo.py        PPO with a value function: KL-penalised token rewards, GAE, whitening, clipped value loss

`LOSSES` (`align.loss_type`) is a checked registry: an entry that breaks the contract in contract.py is refused
when registered. An entry's options are its `section`, nested in the config under `align.<its name>`.
"""

from align.losses.contract import PreferenceBatch, PreferenceLoss, preference_loss
from align.losses.dpo import DPO_LOSSES, dpo_loss
from align.losses.grpo import (
    ADVANTAGE_SCALES,
    AGGREGATIONS,
    BASELINES,
    SURROGATES,
    aggregate,
    clipped_surrogate,
    grpo_advantages,
    grpo_loss,
    kl_estimate,
)
from align.losses.kto import KTO
from align.losses.logprobs import sequence_logprobs, token_logprobs
from align.losses.orpo import ORPO
from align.losses.ppo import PPOObjective, PPOOptions, explained_variance, gae, ppo_advantages, ppo_loss, value_loss
from model.component import Registry

LOSSES = Registry("align.loss_type", preference_loss, {**DPO_LOSSES, "orpo": ORPO, "kto": KTO})

__all__ = ["ADVANTAGE_SCALES", "AGGREGATIONS", "BASELINES", "LOSSES", "SURROGATES", "PPOObjective", "PPOOptions",
           "PreferenceBatch", "PreferenceLoss", "aggregate", "clipped_surrogate", "dpo_loss", "explained_variance",
           "gae", "grpo_advantages", "grpo_loss", "kl_estimate", "ppo_advantages", "ppo_loss", "sequence_logprobs",
           "token_logprobs", "value_loss"]
