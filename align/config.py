"""The alignment stage's config section (`align.*`), added to the fine-tuning tree: DPO-family and GRPO settings.

`align.loss_type` takes its choices from the loss registry (align/losses `LOSSES`); each loss with options owns a
section under its name (`align.sigmoid.label_smoothing`, `align.simpo.gamma`, `align.orpo.ratio_weight`,
`align.kto.desirable_weight`), composed from the registry as model/ components' sections are (model/options.py).
Options of a loss that is not the chosen one are refused, as are the keys they replaced (`MOVED`), in one line
when the config is built. `align.rewards` is checked by the reward registry (align/rewards.py: `name: weight` or
`name: {weight: w, <parameter>: value}`). GRPO variants are options of one objective (align/losses/grpo.py):
`align.baseline` (mean: GRPO; leave_one_out: RLOO), `align.objective` (clip: GRPO; gspo; cispo). PPO's options
(align/losses/ppo.py: gamma, lam, vf_coef, cliprange_value, kl_coef, whiten) are the section `align.ppo`, composed
the same way from `PPO_SECTIONS`; the sampling options (group_size, prompts_per_step, num_iterations = PPO epochs,
epsilon, max_new_tokens, temperature, rewards) are GRPO's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from align.losses import BASELINES, LOSSES, SURROGATES, PPOObjective
from align.rewards import reward_terms
from finetune.config import FinetuneTree
from model.options import Options, compose, option
from train.config import ConfigError, extend

MOVED = {"label_smoothing": "align.sigmoid.label_smoothing (or align.simpo.label_smoothing)",
         "simpo_gamma": "align.simpo.gamma"}  # keys that moved into a loss's own section


@dataclass
class CoreAlignConfig(Options):
    pairs: str = ""  # JSONL (prompt/chosen/rejected; KTO's prompt/completion/label), a hub id; empty = offline
    beta: float = option(0.1, min=0.0)  # DPO / KTO temperature, GRPO KL weight (ORPO has none: orpo.ratio_weight)
    loss_type: str = option("sigmoid", choices=lambda: list(LOSSES))  # preference loss; its options: align.<name>
    group_size: int = option(8, min=2)  # GRPO: completions per prompt
    prompts_per_step: int = option(4, min=1)  # GRPO: prompts per step
    num_iterations: int = option(1, min=1)  # GRPO: updates per batch of samples (old log-probs reused)
    epsilon: float = option(0.2, min=0.0, below=1.0)  # GRPO clip range (lower)
    epsilon_high: float = option(0.0, min=0.0)  # GRPO upper clip (DAPO clip-higher); 0 = same as epsilon
    baseline: str = option("mean", choices=BASELINES)  # GRPO group mean, or RLOO's mean of the other samples
    objective: str = option("clip", choices=lambda: list(SURROGATES))  # per-token clip, gspo (sequence), cispo
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
        if self.baseline == "leave_one_out" and self.scale == "group":
            raise ValueError("baseline=leave_one_out (RLOO) with scale=group divides by the group's std, which RLOO "
                             "does not: set align.scale=none (RLOO) or batch")
        for name in LOSSES:
            opts = getattr(self, name, None) if name != self.loss_type else None  # a section, when it has one
            changed = [f.name for f in dataclasses.fields(opts) if getattr(opts, f.name) != f.default] if opts else []
            if changed:
                raise ValueError(f"{name}.{changed[0]}={getattr(opts, changed[0])!r} is an option of "
                                 f"loss_type={name}, not of loss_type={self.loss_type}: set align.loss_type={name} "
                                 f"or leave align.{name} out")


PPO_SECTIONS = {"ppo": PPOObjective}  # align.ppo.*
AlignConfig = compose(CoreAlignConfig, [LOSSES, PPO_SECTIONS], "AlignConfig", __name__)  # + align.<loss name>.*
AlignTree = extend(FinetuneTree, align=AlignConfig)  # the config tree of a DPO, GRPO or PPO run


def refuse_moved(values: dict) -> None:
    """ConfigError, one line, for an `align.*` key that moved into a loss's section (MOVED)."""
    align = values.get("align")
    old = next((key for key in MOVED if isinstance(align, dict) and key in align), None)
    if old is not None:
        raise ConfigError(f"align.{old} is now {MOVED[old]}: the option belongs to the loss's own section")
