"""The Lightning callbacks a run adds for the components its layers use.

What a run logs about a component is the training side's business, so the map lives here, not in the component's
file (model/ names nothing above it). A key is a component class; a layer whose component is that class or a
subclass of it gets the callbacks, each built as `Callback(run_dir, log_every)`, once per run however many layers
use it.
"""

from __future__ import annotations

from pathlib import Path

from model.ffn.moe import MoE
from train.callbacks.expert_share import ExpertShare

CALLBACKS: dict[type, tuple[type, ...]] = {
    MoE: (ExpertShare,),  # each expert's share of the routed tokens, logged and plotted
}


def component_callbacks(cfg, run_dir: Path) -> list:
    """The callbacks for the components of `cfg.model`'s layers, each once, in CALLBACKS order."""
    used = cfg.model.components()
    wanted = [cb for base, cbs in CALLBACKS.items() if any(issubclass(c, base) for c in used) for cb in cbs]
    return [cb(run_dir, cfg.train.log_every) for cb in dict.fromkeys(wanted)]
