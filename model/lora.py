"""Low-rank adapters on frozen linear layers (`finetune.method=lora`), a model component: training stages
(finetune/, align/) apply them, and loading a run (train/rundir/load.py, train/rundir/adapter.py) rebuilds them.

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models" (arXiv:2106.09685): a frozen weight
W (out, in) is adapted by a rank-r product; only A and B train.

    y = x W^T + s * (dropout(x) A^T) B^T,   A (r, in) ~ kaiming-uniform, B (out, r) = 0,   s = alpha / r

Shapes: x (..., in) -> x A^T (..., r) -> y (..., out). B = 0 makes the adapted model equal the base model at
step 0. rsLoRA (Kalajdzievski 2023, arXiv:2312.03732) uses s = alpha / sqrt(r), which keeps the update's
scale stable as r grows. Merging folds the update into the weight, W' = W + s B A, so inference costs
nothing extra. Module and state-dict names follow PEFT (`q_proj.base_layer.weight`, `q_proj.lora_A.weight`,
`q_proj.lora_B.weight`), so `train/rundir/adapter.py` can write adapters that PEFT reads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

ALL_LINEAR = "all-linear"
OUTPUT_HEADS = ("lm_head",)  # never adapted by "all-linear": with tied embeddings it is the embedding matrix


@dataclass
class LoRAConfig:
    r: int = 8  # rank of the update B A; small r already captures most of the task (Hu et al., table 6)
    alpha: float = 16  # update scale s = alpha / r; fixing alpha lets r change without retuning the lr
    dropout: float = 0.0  # dropout on the adapter's input only; 0 for short runs on small data
    # which nn.Linear to adapt: names or suffixes (["q_proj", "v_proj"], PEFT's list semantics), one regex
    # matched against the full module name, or "all-linear" (every Linear but lm_head; QLoRA found adapting
    # all of them is what matches full fine-tuning, and it works for every mixer and FFN)
    target_modules: str | list[str] = field(default_factory=lambda: ALL_LINEAR)
    rslora: bool = False  # s = alpha / sqrt(r) (rsLoRA): keeps learning stable at large ranks

    def __post_init__(self):
        if not (isinstance(self.r, int) and self.r > 0):
            raise ValueError(f"finetune.lora.r must be a positive integer, got {self.r!r}")
        if not 0 < self.alpha < math.inf:  # NaN fails too
            raise ValueError(f"finetune.lora.alpha must be a positive finite number, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"finetune.lora.dropout must be in [0, 1), got {self.dropout!r}")
        if not self.target_modules:
            raise ValueError("finetune.lora.target_modules is empty: give names (e.g. [q_proj, v_proj]), "
                             "a regex, or all-linear")

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` (`base_layer`) plus a trainable rank-r update `lora_B(lora_A(x))`."""

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, dropout: float = 0.0, rslora: bool = False):
        super().__init__()
        self.base_layer = base_layer
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.r, self.scaling = r, alpha / (math.sqrt(r) if rslora else r)
        factory = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        self.lora_A = nn.Linear(self.in_features, r, bias=False, **factory)  # (r, in)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, **factory)  # (out, r)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False  # True: s B A has been added into base_layer.weight
        self.disabled = False  # True: behave as the base layer (DPO's reference model)
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # PEFT's init (nn.Linear's default)
        nn.init.zeros_(self.lora_B.weight)  # the update starts at exactly zero

    @property
    def weight(self) -> Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base_layer.bias

    def delta_weight(self) -> Tensor:
        """s B A, (out, in), computed in fp32 and returned in the base weight's dtype."""
        delta = self.lora_B.weight.float() @ self.lora_A.weight.float()  # (out, r) @ (r, in)
        return (self.scaling * delta).to(self.base_layer.weight.dtype)

    def _update(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        if not torch.is_autocast_enabled(x.device.type):  # under autocast x already is the compute dtype
            x = x.to(self.lora_A.weight.dtype)
        h = self.lora_A(x)  # (..., r)
        return (self.lora_B(h) * self.scaling).to(dtype)  # (..., out)

    def forward(self, x: Tensor) -> Tensor:
        y = self.base_layer(x)  # (..., out)
        if self.disabled and self.merged:  # take the merged update back out (no dropout: it is the weight)
            return y - self._update(x, y.dtype)
        if self.disabled or self.merged:
            return y
        return y + self._update(self.lora_dropout(x), y.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + s B A in place (no copy of W is kept; `unmerge` subtracts the same delta)."""
        if not self.merged:
            self.base_layer.weight.add_(self.delta_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - s B A: restores W up to floating-point rounding of the add/subtract."""
        if self.merged:
            self.base_layer.weight.sub_(self.delta_weight())
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:g}, merged={self.merged}"


def _linear_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def match_target(name: str, target_modules: str | list[str]) -> bool:
    """PEFT's rule: a string is a regex that must match the whole name; a list entry matches the name or a
    dotted suffix of it (`q_proj` matches `layers.0.mixer.q_proj`, not `layers.0.mixer.xq_proj`)."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith("." + t) for t in target_modules)


def _shared_weights(model: nn.Module) -> dict[int, int]:
    """id(parameter) -> how many modules hold it (2+ means tied, e.g. lm_head and embed_tokens)."""
    counts: dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        for p in module.parameters(recurse=False):
            counts[id(p)] = counts.get(id(p), 0) + 1
    return counts


def find_targets(model: nn.Module, target_modules: str | list[str]) -> list[str]:
    """The Linear module names `target_modules` selects; raises ValueError if none or if one is tied."""
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("the model already has LoRA adapters; merge_lora(model) first or start from the base model")
    candidates = _linear_names(model)
    if isinstance(target_modules, str) and target_modules.lower() == ALL_LINEAR:
        names = [n for n in candidates if n.rsplit(".", 1)[-1] not in OUTPUT_HEADS]
    else:
        names = [n for n in candidates if match_target(n, target_modules)]
    if not names:
        suffixes = sorted({n.rsplit(".", 1)[-1] for n in candidates})
        raise ValueError(f"finetune.lora.target_modules={target_modules!r} matches no nn.Linear in the model; "
                         f"available names include {suffixes} (e.g. {candidates[:3]}), or use all-linear")
    counts, modules = _shared_weights(model), dict(model.named_modules())
    tied = [n for n in names if counts.get(id(modules[n].weight), 0) > 1]
    if tied:
        raise ValueError(f"LoRA target(s) {tied} share their weight with another module (tied embeddings): "
                         "merging would change both; drop them from finetune.lora.target_modules")
    return names


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Freeze every parameter of `model` and wrap the targeted nn.Linear in LoRALinear, in place.

    Returns the adapted module names; afterwards only lora_A / lora_B weights have requires_grad. A rank above a
    layer's smaller side (r > min(in, out)) raises ValueError before any layer is touched: the update B A could not
    have that rank, and A (r, in) and B (out, r) would be allocated at r's size."""
    names = find_targets(model, cfg.target_modules)
    modules = dict(model.named_modules())
    for name in names:
        layer = modules[name]
        if cfg.r > min(layer.in_features, layer.out_features):
            raise ValueError(f"finetune.lora.r={cfg.r} exceeds {name}'s smaller side (in {layer.in_features}, out "
                             f"{layer.out_features}); a LoRA rank is at most min(in, out)")
    model.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), cfg.r, cfg.alpha, cfg.dropout, cfg.rslora))
    return names


def store_base_weights(model: nn.Module, dtype: torch.dtype) -> None:
    """Keep the frozen base weights (and biases) of every adapted layer in `dtype`, in place.

    bfloat16 halves their memory, and under bf16 autocast the matmuls read them as they are: no bf16 copy of
    each frozen weight is made (autocast caches copies only of trainable weights) and kept for backward every
    step. The adapters stay in their own (fp32) dtype; a merge adds s B A in the base dtype."""
    for _, m in lora_modules(model):
        m.base_layer.to(dtype)


def lora_modules(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    return ((n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear))


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable adapter weights (pass these, and only these, to the optimizer)."""
    return [p for _, m in lora_modules(model) for p in (m.lora_A.weight, m.lora_B.weight)]


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """`<module path>.lora_A.weight` / `.lora_B.weight` -> tensor, for every adapted module."""
    out = {}
    for name, m in lora_modules(model):
        out[f"{name}.lora_A.weight"] = m.lora_A.weight.detach()
        out[f"{name}.lora_B.weight"] = m.lora_B.weight.detach()
    return out


@contextmanager
def adapters_disabled(model: nn.Module):
    """Run `model` as its base model (adapters off), e.g. DPO's reference log-probs, without a copy."""
    layers = [m for _, m in lora_modules(model)]
    previous = [m.disabled for m in layers]
    for m in layers:
        m.disabled = True
    try:
        yield model
    finally:
        for m, flag in zip(layers, previous):
            m.disabled = flag


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight and put the plain nn.Linear back, in place.

    The result has the base model's state-dict layout (`q_proj.weight`), so it saves, exports and generates
    like any pretrained model; all its parameters are trainable again, as after `model.build`."""
    for name, m in list(lora_modules(model)):
        m.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, m.base_layer)
    model.requires_grad_(True)
    return model
