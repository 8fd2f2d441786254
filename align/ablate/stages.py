"""The alignment stages a sweep can run: a name -> its train function, the data it reads, and its budget.

    dpo   align.dpo.train_dpo    every align.loss_type (sigmoid, ipo, hinge, simpo, orpo, kto) on the sweep's
                                 on-policy pairs (kto: the same pairs as unpaired rows)
    grpo  align.grpo.train_grpo  GRPO and its options (RLOO, Dr. GRPO, GSPO, CISPO) sampling its own completions
    ppo   align.ppo.train_ppo    PPO with a value head, sampling as GRPO does

A stage is one `Stage(...)` line in STAGES: its entry point is imported only when a run of it trains. Every stage's
config is align_config's (align/policy.py): the fine-tuning tree plus `align.*`.

The budget a stage's variants must share (`budget`; across stages budgets differ by nature and are not compared,
the table's wall time is):
    preference pairs  optimizer steps, micro-batches per step, data.seq_len, and sequences per step
                      (train.batch_size x 2 for pairs; x 1 for kto's unpaired rows: 16 pairs = 32 rows)
    sampling          optimizer steps, micro-batches per step, prompts per step x completions per prompt,
                      align.max_new_tokens, data.path and data.seq_len (the prompts)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from train.ablate.param_match import get
from train.config import Config

PAIRS, SAMPLES = "pairs", "samples"  # what a stage trains on: the sweep's pairs, or its own samples


def pairs_budget(cfg: Config) -> dict:
    per_row = 1 if cfg.align.loss_type == "kto" else 2
    return {**{key: get(cfg, key) for key in ("train.max_steps", "train.grad_accum", "data.seq_len")},
            "sequences per step": cfg.train.batch_size * per_row}


def sampling_budget(cfg: Config) -> dict:
    keys = ("train.max_steps", "train.grad_accum", "align.max_new_tokens", "data.path", "data.seq_len")
    return {**{key: get(cfg, key) for key in keys},
            "completions per step": cfg.align.prompts_per_step * cfg.align.group_size}


@dataclass(frozen=True)
class Stage:
    entry: str  # "module:function", the function taking the run's Config and returning its run directory
    data: str  # PAIRS (align.pairs is the sweep's) or SAMPLES
    budget: Callable[[Config], dict]  # what every variant of the stage must share

    def train(self, cfg: Config):
        module, _, function = self.entry.partition(":")
        return getattr(importlib.import_module(module), function)(cfg)


STAGES = {
    "dpo": Stage("align.dpo:train_dpo", PAIRS, pairs_budget),
    "grpo": Stage("align.grpo:train_grpo", SAMPLES, sampling_budget),
    "ppo": Stage("align.ppo:train_ppo", SAMPLES, sampling_budget),
}
