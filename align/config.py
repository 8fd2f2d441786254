"""The alignment stage's config section (`align.*`), added to the fine-tuning tree: DPO and GRPO settings.

`align.loss_type` takes its choices from the loss registry (align/losses.py `LOSSES`); `align.rewards` is checked
by the reward registry (align/rewards.py: `name: weight` or `name: {weight: w, <parameter>: value}`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from align.losses import LOSSES
from align.rewards import reward_terms
from finetune.config import FinetuneTree
from model.options import Options, option
from train.config import extend


@dataclass
class AlignConfig(Options):
    pairs: str = ""  # DPO: JSONL (prompt/chosen/rejected) or a hub dataset id; empty = make offline pairs
    beta: float = option(0.1, min=0.0)  # DPO temperature / GRPO KL weight
    loss_type: str = option("sigmoid", choices=lambda: list(LOSSES))  # DPO loss
    simpo_gamma: float = option(0.5, min=0.0)  # SimPO target margin gamma (eq. 6; absolute)
    label_smoothing: float = option(0.0, min=0.0, below=0.5)  # DPO sigmoid (conservative DPO)
    group_size: int = option(8, min=2)  # GRPO: completions per prompt
    prompts_per_step: int = option(4, min=1)  # GRPO: prompts per step
    num_iterations: int = option(1, min=1)  # GRPO: updates per batch of samples (old log-probs reused)
    epsilon: float = option(0.2, min=0.0, below=1.0)  # GRPO clip range (lower)
    epsilon_high: float = option(0.0, min=0.0)  # GRPO upper clip (DAPO clip-higher); 0 = same as epsilon
    scale: str = option("group", choices=("group", "batch", "none"))  # GRPO advantage scaling
    level: str = option("token", choices=("token", "sequence"))  # GRPO loss averaging
    max_new_tokens: int = option(128, min=1)  # GRPO sampling length
    temperature: float = option(1.0, above=0.0)  # GRPO sampling temperature
    rewards: dict = field(default_factory=lambda: {"word_inclusion": 1.0, "dialogue": 0.5, "length": 0.25,
                                                   "repetition": 0.25, "finished": 0.25})  # reward weights

    def check(self) -> None:
        try:
            reward_terms(self.rewards)
        except ValueError as err:
            raise ValueError(f"rewards: {err}") from None


AlignTree = extend(FinetuneTree, align=AlignConfig)  # the config tree of a DPO or GRPO run
