"""Every registered mixer through the later stages' model-side path: LoRA on its declared targets (default
`target_modules: auto`), a DPO step and a GRPO step (completions sampled with the mixer's cache, scored by a full
forward) that train the adapters only. The stages' Lightning runs are tested with softmax in test_dpo/test_grpo;
this asks each mixer for what those runs need."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model_config

from align.losses import dpo_loss, grpo_advantages, grpo_loss, sequence_logprobs, token_logprobs
from model.lora import LoRAConfig, adapters_disabled, apply_lora, lora_parameters
from model.mixers import MIXERS
from model.transformer import Transformer


def lora_model(mixer: str) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(tiny_model_config(mixer=[mixer, "softmax"], d_model=64, n_heads=4,
                                          ffn="auto" if MIXERS[mixer].replaces_ffn else "swiglu"))
    adapted = apply_lora(model, LoRAConfig(r=4, alpha=8, target_modules=model.lora_targets()))
    assert any(name.startswith("layers.0.") for name in adapted), f"{mixer}: no LoRA target in its layer"
    for p in lora_parameters(model):  # B = 0 at init: give the adapters a non-zero update to differentiate
        torch.nn.init.normal_(p, std=0.02)
    return model


def logprobs(model, seqs: torch.Tensor) -> torch.Tensor:
    logits, _ = model(seqs[:, :-1])
    return token_logprobs(logits, seqs[:, 1:])  # (B, T - 1)


def only_adapters_have_gradients(model) -> None:
    trained = {id(p) for p in lora_parameters(model)}
    for name, p in model.named_parameters():
        if id(p) in trained:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


@pytest.mark.parametrize("mixer", list(MIXERS))
def test_dpo_step_trains_the_adapters_of_every_mixer(mixer):
    model = lora_model(mixer)
    gen = torch.Generator().manual_seed(1)
    chosen, rejected = (torch.randint(0, 97, (2, 24), generator=gen) for _ in range(2))
    mask = torch.ones(2, 23)
    mask[:, :8] = 0  # the prompt
    with torch.no_grad(), adapters_disabled(model):  # the reference: the base weights
        ref_c, ref_r = (sequence_logprobs(model(s[:, :-1])[0], s[:, 1:], mask) for s in (chosen, rejected))
    pol_c, pol_r = (sequence_logprobs(model(s[:, :-1])[0], s[:, 1:], mask) for s in (chosen, rejected))
    assert not torch.allclose(pol_c, ref_c)  # the adapters change the policy
    loss, _, _ = dpo_loss(pol_c, pol_r, ref_c, ref_r, beta=0.1)
    loss.mean().backward()
    only_adapters_have_gradients(model)


@pytest.mark.parametrize("mixer", list(MIXERS))
def test_grpo_step_samples_with_the_cache_and_trains_the_adapters(mixer):
    model = lora_model(mixer).eval()
    prompt = torch.randint(0, 97, (1, 6), generator=torch.Generator().manual_seed(2)).repeat(4, 1)
    torch.manual_seed(3)
    with torch.no_grad():
        seqs = model.generate(prompt, 10, temperature=1.0)  # (4, 16) through the mixer's cache
        old = logprobs(model, seqs)
    assert seqs.shape == (4, 16) and torch.equal(seqs[:, :6], prompt)
    mask = torch.zeros(4, 15)
    mask[:, 5:] = 1  # the sampled tokens
    rewards = seqs[:, 6:].float().mean(1)  # any reward that differs between the group's completions
    loss, _ = grpo_loss(logprobs(model, seqs), old, None, grpo_advantages(rewards, 4), mask, beta=0.0,
                        eps_low=0.2)
    loss.backward()
    only_adapters_have_gradients(model)
