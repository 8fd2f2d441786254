"""Expert load of MoE layers during training: logged per interval and plotted for the whole run.

Every MoE FFN (`model/ffn/moe.py`) leaves `expert_share` (E,) after each forward: f_i, the share of the
routed token slots that went to expert i (sums to 1). `ExpertShare` reads it after every training batch and

- every `log_every` optimizer steps logs the mean share over that interval as `moe/layer{i}/expert{j}`
  (i = block index in `model.layers`, j = expert), so `metrics.csv` shows collapse or balance over time;
- at the end of training writes `expert_share.png` into the run directory: one bar chart per MoE layer of
  the mean share per expert over the whole run, with the uniform 1/E line.

The run-wide sums are kept in the callback's state (saved in checkpoints), so a resumed run plots them all.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import Tensor


def moe_layers(model) -> dict[int, torch.nn.Module]:
    """Block index -> its MoE FFN, for every block whose FFN reports `expert_share`."""
    return {i: layer.ffn for i, layer in enumerate(getattr(model, "layers", []))
            if hasattr(getattr(layer, "ffn", None), "expert_share")}


class ExpertShare(L.Callback):
    def __init__(self, run_dir: Path, log_every: int):
        self.path, self.log_every = Path(run_dir) / "expert_share.png", log_every
        self.interval: dict[int, Tensor] = {}  # layer -> summed shares (E,) since the last log
        self.interval_batches = 0
        self.total: dict[int, Tensor] = {}  # layer -> summed shares (E,) over the run
        self.total_batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        layers = moe_layers(pl_module.model)
        for i, moe in layers.items():
            if moe.expert_share is None:
                continue
            share = moe.expert_share.detach().float().cpu()  # (E,)
            self.interval[i] = self.interval.get(i, 0) + share
            self.total[i] = self.total.get(i, 0) + share
        if layers:
            self.interval_batches += 1
            self.total_batches += 1
        if (batch_idx + 1) % (self.log_every * trainer.accumulate_grad_batches) or not self.interval_batches:
            return
        logs = {f"moe/layer{i}/expert{j}": float(v) / self.interval_batches
                for i, shares in sorted(self.interval.items()) for j, v in enumerate(shares.tolist())}
        pl_module.log_dict(logs, rank_zero_only=True)
        self.interval, self.interval_batches = {}, 0

    def state_dict(self) -> dict:
        return {"total": {i: t.clone() for i, t in self.total.items()}, "total_batches": self.total_batches}

    def load_state_dict(self, state_dict: dict) -> None:
        self.total = {int(i): t for i, t in state_dict["total"].items()}
        self.total_batches = state_dict["total_batches"]

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero and self.total_batches:
            plot_expert_share({i: (t / self.total_batches).tolist() for i, t in sorted(self.total.items())},
                              self.path)


def plot_expert_share(shares: dict[int, list[float]], path: Path) -> None:
    """One bar chart per MoE layer (layer index -> mean share per expert), dashed line at 1/E."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(shares)
    fig, axes = plt.subplots(1, n, figsize=(2.2 + 2.0 * n, 3.2), sharey=True, squeeze=False)
    for ax, (layer, values) in zip(axes[0], shares.items()):
        ax.bar(range(len(values)), values, color="tab:blue")
        ax.axhline(1 / len(values), color="black", linestyle="--", linewidth=1, label="uniform 1/E")
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("expert")
        ax.set_xticks(range(len(values)))
    axes[0][0].set_ylabel("share of routed tokens")
    axes[0][0].legend(loc="best", fontsize=8)
    fig.suptitle("MoE expert share over the run")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
