"""Warmup-stable-decay (`train.schedule=wsd`): Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training
Beyond Fixed Training Durations" (arXiv:2405.18392); MiniCPM (Hu et al. 2024) calls it WSD.

    lr(s) = lr * (s + 1) / W                     s < W                  (linear warm-up)
    lr(s) = lr                                   W <= s < D             (stable)
    lr(s) = lr * (m + (1 - m) (1 - f(p)))        D <= s,  p = (s - D) / (S - D)   (decay to m * lr at S)
    D = max(W, S - round(d S)),  f(p) = p (linear) | sqrt(p) (1-sqrt: lr * (1 - sqrt(p)), Hägele et al.'s best)

W = train.warmup_steps, S = train.max_steps, m = train.min_lr_ratio, d = train.wsd.decay_fraction,
shape = train.wsd.shape.

Several budgets from one run. The factor is a pure function of (step, config) and, before the decay starts, it
does not depend on train.max_steps. So train once with the longest budget (or any), keeping checkpoints of the
stable phase (train.ckpt_every), then branch a short decay from a stable-phase checkpoint for each smaller budget:

    python -m train --config C.yaml --train.schedule=wsd --train.max_steps=20000      # the long run
    python -m train --config C.yaml --train.schedule=wsd --train.max_steps=10000 \\
        --train.resume=runs/C/checkpoints/<a checkpoint before step 8000>.ckpt --train.name=C-10k

The branch restores the checkpoint exactly (weights, optimizer, data position) and its decay starts at
10000 - round(0.2 * 10000) = 8000 with the new max_steps: the checkpoint must be from before the branch's decay
start (the stable phase is identical in both runs, so any checkpoint up to there is valid). Likewise a stable-phase
checkpoint of a short run can be resumed with a larger --train.max_steps to continue, then decay later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from model.options import Options, option
from train.schedules.schedule import Schedule


@dataclass
class WSDConfig(Options):
    decay_fraction: float = option(0.2, min=0.0, max=1.0)  # last fraction of max_steps spent decaying (Hägele: 0.2)
    shape: str = option("1-sqrt", choices=("linear", "1-sqrt"))  # decay curve; 1-sqrt beat linear in Hägele et al.


class WSD(Schedule):
    section = WSDConfig

    @staticmethod
    def decay_start(train_cfg) -> int:
        cfg = WSD.options(train_cfg)
        S = train_cfg.max_steps
        return max(train_cfg.warmup_steps, S - round(cfg.decay_fraction * S))

    @staticmethod
    def factor(step: int, train_cfg) -> float:
        warm = Schedule.warmup(step, train_cfg)
        if warm is not None:
            return warm
        cfg = WSD.options(train_cfg)
        S, m, D = train_cfg.max_steps, train_cfg.min_lr_ratio, WSD.decay_start(train_cfg)
        if step < D:
            return 1.0
        p = min(1.0, (step - D) / max(1, S - D))
        decayed = p if cfg.shape == "linear" else math.sqrt(p)
        return m + (1 - m) * (1 - decayed)
