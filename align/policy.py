"""What DPO and GRPO share: the config, the starting policy, its reference model and the run directory.

Alignment starts from a fine-tuned (SFT) run, `finetune.base`: a plain run directory or a LoRA run directory
(adapter on a base, train/rundir/adapter.py). The reference model pi_ref is that SFT model, frozen:

    finetune.method=lora  the SFT adapter (if any) is merged into its base, W_sft = W + s B_sft A_sft, and a new
                          adapter trains on top: pi_theta = W_sft + s B A.  pi_ref is the same model with the
                          adapter switched off (model.lora.adapters_disabled): no second copy in memory.
                          The run directory is a LoRA run directory (adapter/ + config.yaml); the adapter's
                          base is the SFT run itself when it is plain, else the merged SFT weights written to
                          <run>/reference/ (finetune.merge), which config.yaml's finetune.base then names.
    finetune.method=full  every parameter trains; pi_ref is a frozen copy (2x the weights in memory); the run
                          directory is a plain one (model.safetensors).

Either way `train.rundir.load.load_run(run)`, `align.evaluate` and `train.generate` read the result.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path

from align.config import AlignTree, refuse_moved
from finetune.config import adapt, finetune_config
from finetune.merge import merge_run
from finetune.sft import LoRALanguageModel
from inputs.yaml import read_yaml
from model.lora import LoRAConfig, adapters_disabled, merge_lora
from train.config import Config, ConfigError, merge, parse_overrides
from train.rundir.adapter import resolve
from train.rundir.load import load_run

REFERENCE_DIR = "reference"


def align_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> Config:
    """finetune.config.finetune_config, where finetune.base (the SFT run) may also be a LoRA run directory:
    model.* and the tokenizer's sizes are inherited from the weights under it."""
    user = read_yaml(path, fix="see configs/align/ for examples") if path is not None else {}
    user = merge(user, overrides if isinstance(overrides, dict) else parse_overrides(list(overrides or [])))
    refuse_moved(user)
    start = str((user.get("finetune") or {}).get("base", "")) if isinstance(user.get("finetune"), dict) else ""
    if start and (Path(start) / "config.yaml").is_file():
        weights_dir, _ = resolve(start)  # a LoRA run -> its base run (CheckpointError if missing)
        user = merge(user, {"finetune": {"base": str(weights_dir)}})
    train = user.get("train") or {}
    if path is not None and isinstance(train, dict) and not train.get("name"):  # else load_config names the problem
        user = merge(user, {"train": {"name": Path(path).stem}})
    cfg = finetune_config(None, user, tree=AlignTree)  # align.* is checked there (align/config.py)
    cfg.finetune.base = start or cfg.finetune.base
    run_dir = (Path(cfg.train.out_dir) / cfg.train.name).resolve()
    if run_dir in (Path(cfg.finetune.base).resolve(), resolve(cfg.finetune.base)[0].resolve()):
        raise ConfigError(f"train.out_dir/train.name = {run_dir} is the SFT run finetune.base={cfg.finetune.base} "
                          "(or its base); aligning into it would replace its config.yaml and weights: choose another "
                          "--train.name")
    return cfg


def start_policy(cfg: Config, run_dir: Path) -> tuple[object, object, LoRAConfig | None, object]:
    """Load the SFT run as one plain model and prepare it for alignment -> (tokenizer, model, lora_cfg or None,
    run_files: what `fit` writes into the run directory once its inputs are checked, or None).

    For LoRA on a LoRA SFT run, the SFT adapter is merged in memory and cfg.finetune.base set to
    <run_dir>/reference, which `run_files` writes (finetune.merge) after the run's checks, so the saved run
    directory names the weights its adapter applies to and a refused start writes nothing. On resume the
    reference already there is used."""
    weights_dir, adapter_dir = resolve(cfg.finetune.base)
    run_files = None
    if cfg.finetune.method == "lora" and adapter_dir is not None:
        reference, sft = run_dir / REFERENCE_DIR, cfg.finetune.base
        if (reference / "model.safetensors").is_file():
            weights_dir, adapter_dir = reference, None
        else:
            def run_files(run_dir: Path) -> None:
                merge_run(sft, run_dir / REFERENCE_DIR, own=run_dir)
        cfg.finetune.base = str(reference)
    _, tokenizer, model = load_run(weights_dir, "cpu", adapter_dir)
    if adapter_dir is not None:
        merge_lora(model)  # start from W_sft
    model.train()
    if cfg.finetune.method == "full":
        return tokenizer, model.requires_grad_(True), None, None
    return tokenizer, model, adapt(model, cfg), run_files


class PolicyModel(LoRALanguageModel):
    """A policy with a frozen reference policy (when `uses_reference`); DPO and GRPO subclass it and implement
    compute_loss (train/module.py's stage contract). Final weights: the adapter (LoRA) or the weights (full)."""

    def __init__(self, cfg: Config, token_bytes: list[int], model, lora_cfg: LoRAConfig | None):
        super().__init__(cfg, token_bytes, model, lora_cfg)
        # full fine-tuning keeps a frozen copy; LoRA turns its adapter off instead (no copy)
        frozen_copy = self.uses_reference() and lora_cfg is None
        self.reference = copy.deepcopy(model).requires_grad_(False).eval() if frozen_copy else None

    def uses_reference(self) -> bool:
        """Whether the loss reads the reference policy (a stage without one holds no copy of it)."""
        return True

    @contextmanager
    def reference_model(self):
        """The reference policy in eval mode: the policy with its adapter off (LoRA), or the frozen copy."""
        if not self.uses_reference():
            raise RuntimeError(f"{type(self).__name__} was built without a reference model")
        if self.reference is not None:
            self.reference.eval()
            yield self.reference
            return
        was_training = self.model.training
        self.model.eval()
        try:
            with adapters_disabled(self.model) as reference:
                yield reference
        finally:
            self.model.train(was_training)
