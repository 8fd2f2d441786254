"""Muon on the hidden matrices, AdamW on the rest (`train.optimizer=muon`): Jordan et al. 2024, "Muon: MomentUm
Orthogonalized by Newton-schulz" (kellerjordan.github.io/posts/muon), with `torch.optim.Muon`.

    B_t = mu B + G,  M = G + mu B_t (nesterov),  O = NewtonSchulz5(M) ~ U V^T  (M = U S V^T),
    W -= lr_muon (O * adjust(A, B) + wd W)                            W: (A, B), a 2-D hidden matrix

Which parameters are "hidden matrices" is decided once, in train/optim.py (`param_groups` tags each parameter with
`_hidden_matrix`): every trainable 2-D parameter that is not an nn.Embedding weight, not the output head (tied or
not) and not declared in a component's `no_decay_parameters()` (Mamba's A_log / D, GAU's gamma / beta).
Everything else (embeddings, head, norms, biases, declared parameters, and conv kernels such as Mamba's depthwise
(E, 1, K): per-channel filters, not matrices, and `torch.optim.Muon` takes 2-D only) trains with AdamW at
train.lr, train.betas and train.weight_decay (0 on the no-decay group), as with `train.optimizer=adamw`. LoRA
adapters (A: (r, in), B: (out, r)) are 2-D hidden matrices too, so a LoRA run trains them with Muon.

Hyperparameters (`train.muon.*`): Muon's peak lr is train.lr * lr_ratio (its orthogonalised update has unit
spectral norm, so it wants a much larger lr than AdamW: Jordan uses 0.02 next to AdamW's ~1e-3), momentum, nesterov,
ns_steps; Muon's weight decay is train.weight_decay. The LR schedule (`train.schedule`) multiplies both optimizers'
lrs by the same factor (LambdaLR over the union of their param groups).

One `torch.optim.Optimizer` (`MuonAdamW`) holds both: its `param_groups` are Muon's then AdamW's (the same dicts, so
the scheduler and gradient clipping see them all), `step` runs the closure once and steps both, and
`state_dict` / `load_state_dict` delegate ({"muon": ..., "adamw": ...}), so Lightning checkpoints resume exactly.
Muon needs whole 2-D matrices: not under FSDP (1-D shards), which is refused with one line.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.options import Options, option
from train.errors import ConfigError
from train.optimizers.recipe import OptimizerRecipe


@dataclass
class MuonConfig(Options):
    lr_ratio: float = option(20.0, above=0.0)  # Muon lr = train.lr * lr_ratio (Jordan: 0.02 vs AdamW ~1e-3)
    momentum: float = option(0.95, min=0.0, below=1.0)  # momentum of the gradient buffer that is orthogonalised
    nesterov: bool = True  # Nesterov momentum (the paper's default)
    ns_steps: int = option(5, min=1)  # Newton-Schulz iterations (5 is enough for bf16-level orthogonality)


class MuonAdamW(torch.optim.Optimizer):
    """A `torch.optim.Muon` over the hidden matrices and a `torch.optim.AdamW` over the rest, as one optimizer."""

    def __init__(self, muon: torch.optim.Optimizer | None, adamw: torch.optim.Optimizer | None):
        self.children_ = [o for o in (muon, adamw) if o is not None]
        self.names_ = [n for n, o in (("muon", muon), ("adamw", adamw)) if o is not None]
        super().__init__([g for o in self.children_ for g in o.param_groups], {})
        self._share_groups()

    def _share_groups(self) -> None:
        """Our param_groups ARE the children's dicts (load_state_dict replaces them, so re-link after it)."""
        self.param_groups = [g for o in self.children_ for g in o.param_groups]

    @property
    def state(self):  # the children hold the state; a merged view for Lightning's device moves
        merged = {}
        for o in self.children_:
            merged.update(o.state)
        return merged

    @state.setter
    def state(self, value) -> None:  # Optimizer.__init__ assigns an empty one: ignored
        pass

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self.children_:
            o.step()
        return loss

    def state_dict(self) -> dict:
        return {name: o.state_dict() for name, o in zip(self.names_, self.children_)}

    def load_state_dict(self, state_dict: dict) -> None:
        if set(state_dict) != set(self.names_):
            raise ValueError(f"optimizer state has {sorted(state_dict)}, this MuonAdamW holds {self.names_}")
        for name, o in zip(self.names_, self.children_):
            o.load_state_dict(state_dict[name])
        self._share_groups()


def split_groups(groups: list[dict]) -> tuple[list[dict], list[dict]]:
    """train/optim.py's groups -> (Muon groups, AdamW groups), by each parameter's `_hidden_matrix` tag; a group
    keeps its weight decay on both sides; empty groups are dropped."""
    muon, adamw = [], []
    for group in groups:
        params = list(group["params"])
        hidden = [p for p in params if getattr(p, "_hidden_matrix", False)]
        rest = [p for p in params if not getattr(p, "_hidden_matrix", False)]
        for side, ps in ((muon, hidden), (adamw, rest)):
            if ps:
                side.append({**group, "params": ps})
    return muon, adamw


class Muon(OptimizerRecipe):
    section = MuonConfig
    state = {"hidden": ("momentum",), "other": ("m", "v")}  # Muon's buffer B on the matrices, AdamW's on the rest

    @staticmethod
    def build(groups: list[dict], train_cfg, fused: bool) -> torch.optim.Optimizer:
        if not hasattr(torch.optim, "Muon"):
            raise ConfigError(f"train.optimizer=muon needs torch.optim.Muon (torch >= 2.9); "
                             f"this torch is {torch.__version__}: upgrade torch or use train.optimizer=adamw")
        cfg: MuonConfig = Muon.options(train_cfg)
        muon_groups, adamw_groups = split_groups(groups)
        bad = [tuple(p.shape) for g in muon_groups for p in g["params"] if p.ndim != 2]
        if bad:
            raise ConfigError(f"train.optimizer=muon needs whole 2-D matrices, got shapes {bad[:3]} (FSDP shards): "
                              f"use train.strategy=ddp or train.optimizer=adamw")
        muon = adamw = None
        if muon_groups:
            muon = torch.optim.Muon(muon_groups, lr=train_cfg.lr * cfg.lr_ratio, weight_decay=train_cfg.weight_decay,
                                    momentum=cfg.momentum, nesterov=cfg.nesterov, ns_steps=cfg.ns_steps)
        if adamw_groups:
            adamw = torch.optim.AdamW(adamw_groups, lr=train_cfg.lr, betas=tuple(train_cfg.betas), fused=fused)
        if muon is None and adamw is None:
            raise ConfigError("train.optimizer=muon: the model has no trainable parameters")
        return MuonAdamW(muon, adamw)
