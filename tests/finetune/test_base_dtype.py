"""finetune.lora.base_dtype=bfloat16: the adapted layers' frozen weights stored in bf16 compute exactly what
bf16 autocast computes from fp32 weights, train end to end, and are refused without bf16-mixed."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_finetune_values, tiny_model_config

from finetune.config import FinetuneTree, adapt, finetune_config
from finetune.sft import finetune
from model.lora import lora_modules, lora_parameters
from model.transformer import Transformer
from train.config import ConfigError


def config(precision: str, base_dtype: str):
    cfg = FinetuneTree()
    cfg.train.precision, cfg.finetune.lora.base_dtype = precision, base_dtype
    return cfg


def test_bf16_base_equals_autocast_of_fp32_base():
    torch.manual_seed(0)
    fp32 = Transformer(tiny_model_config())
    bf16 = copy.deepcopy(fp32)
    adapt(fp32, config("bf16-mixed", "float32"))
    adapt(bf16, config("bf16-mixed", "bfloat16"))
    for (_, a), (_, b) in zip(lora_modules(fp32), lora_modules(bf16)):
        assert a.base_layer.weight.dtype == torch.float32 and b.base_layer.weight.dtype == torch.bfloat16
        assert b.lora_A.weight.dtype == torch.float32  # the adapters keep their own dtype
        with torch.no_grad():
            b.lora_A.weight.copy_(a.lora_A.weight)
            b.lora_B.weight.copy_(a.lora_B.weight.normal_())  # a non-zero update, the same in both
    idx = torch.randint(0, tiny_model_config().vocab_size, (2, 16))
    grads = []
    for model in (fp32, bf16):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, _ = model(idx)
        logits.float().square().mean().backward()
        grads.append([p.grad for p in lora_parameters(model)])
        assert logits.dtype == torch.bfloat16
        if model is fp32:
            reference = logits
    torch.testing.assert_close(logits, reference, atol=0, rtol=0)  # bf16 casts of the same weights
    for g_fp32, g_bf16 in zip(*grads):
        torch.testing.assert_close(g_bf16, g_fp32)


def test_bf16_base_needs_bf16_mixed():
    with pytest.raises(ConfigError, match="bf16-mixed"):
        adapt(Transformer(tiny_model_config()), config("32", "bfloat16"))


@pytest.mark.slow
def test_sft_with_a_bf16_base_trains_samples_and_evaluates(tiny_sft_run, tiny_corpus, tmp_path):
    base, _ = tiny_sft_run
    values = tiny_finetune_values(tiny_corpus, tmp_path, base, {"eval_prompts": 2, "eval_tokens": 8,
                                                                "lora": {"base_dtype": "bfloat16"}},
                                  **{"train.name": "bf16", "train.precision": "bf16-mixed", "train.max_steps": 4})
    run = finetune(finetune_config(None, values))  # samples at validation (autocast) and evaluates (fp32)
    assert (run / "adapter" / "adapter_model.safetensors").is_file() and (run / "samples.md").is_file()
