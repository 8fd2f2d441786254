"""What DPO and GRPO share (align/policy.py): the final weights under FSDP (the gathered `state` that
train/callbacks/standard.py SaveFinalWeights passes) are what a LoRA or full alignment run directory gets."""

from __future__ import annotations

import torch
from conftest import tiny_finetune_values
from safetensors.torch import load_file

from align.policy import PolicyModel, align_config, start_policy
from train.rundir.adapter import ADAPTER_DIR


def test_save_final_weights_writes_the_gathered_state(tiny_corpus, tiny_sft_run, tmp_path):
    for method in ("lora", "full"):
        run_dir = tmp_path / method
        run_dir.mkdir()
        cfg = align_config(None, tiny_finetune_values(tiny_corpus, tmp_path, tiny_sft_run[1], {"method": method}))
        tokenizer, model, lora_cfg, _ = start_policy(cfg, run_dir)
        module = PolicyModel(cfg, [1] * tokenizer.get_vocab_size(), model, lora_cfg)
        state = {k: torch.full_like(v, 0.5) for k, v in model.state_dict().items()}  # FSDP's full state dict
        module.save_final_weights(run_dir, state=state)
        if method == "lora":
            saved = load_file(str(run_dir / ADAPTER_DIR / "adapter_model.safetensors"))
        else:
            saved = load_file(str(run_dir / "model.safetensors"))
        assert saved and all(torch.all(v == 0.5) for v in saved.values()), method  # from `state`, not the model
