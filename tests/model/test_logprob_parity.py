"""Log-prob parity between sampling and training, for every registered mixer: the log-probabilities `generate`
records as it samples with the cache (`return_logprobs=True`) equal those the trainer computes for the same tokens
in one forward over prompt + completion (`token_logprobs(logits / T, labels)`, as align/grpo.py scores them).

They are not bitwise equal: the cache decodes token by token (recurrent or cached forms, one query at a time) and the
forward computes all positions at once (chunked or parallel forms, batched matmuls), so the same sums are taken in a
different order (even softmax attention differs in the last bits between 1 and T queries). The tolerances below are
the measured maxima over six seeds (model, prompt and sampling; CPU, x86_64) with a margin:

    float32      every config <= 2.4e-6 nats                                        -> FP32_TOL 1e-5
    bf16         (autocast or bf16 weights) single mixers and MoE <= 0.024 nats      -> 0.05
                 the 13-layer hybrid of every mixer 0.090 (the error grows with depth) -> 0.2
    MoE in bf16  a token whose two best experts score within bf16 rounding of each other may be routed differently
                 by the two forms, and its log-prob then differs by far more (0.49 nats on one token of 768 in bf16
                 weights): up to ROUTE_FLIPS of its tokens may exceed the tolerance

The init std 0.1 (not the model's 0.02) spreads the log-probs over about 1 nat, so the tolerances are small against
what an off-by-one position or a wrong temperature would change.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import tiny_model_config

from align.losses.logprobs import token_logprobs
from model.mixers import MIXERS
from model.transformer import Transformer

CONFIGS = {**{name: dict(mixer=name) for name in MIXERS},
           "hybrid": dict(mixer=list(MIXERS), n_layers=len(MIXERS)),  # every mixer, one layer each
           "moe": dict(ffn="moe")}
FP32_TOL = 1e-5
BF16_TOL = {"hybrid": 0.2}  # else BF16_DEFAULT_TOL (module docstring)
BF16_DEFAULT_TOL = 0.05
ROUTED = {"moe"}  # configs whose bf16 routing may flip on a few tokens
ROUTE_FLIPS = 1 / 32  # share of a routed config's bf16 tokens allowed past the tolerance
PRECISIONS = ("32", "bf16-mixed", "bf16-true")  # as train.precision: fp32, bf16 autocast, bf16 weights
TEMPERATURE = 0.7


def build(precision: str = "32", **overrides) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(tiny_model_config(init_std=0.1, **overrides)).eval()
    return model.to(torch.bfloat16) if precision == "bf16-true" else model


def compute(precision: str):
    """The context generation and scoring run in: bf16 autocast for bf16-mixed, else none (the weights' dtype)."""
    if precision == "bf16-mixed":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def trainer_logprobs(model, tokens: torch.Tensor, prompt_len: int, temperature: float) -> torch.Tensor:
    """(B, n + m) prompt + completion -> (B, m) the completion's log-probs from one forward, as align/grpo.py."""
    with torch.no_grad():
        logits, _ = model(tokens[:, :-1])  # (B, n + m - 1, V)
    return token_logprobs(logits / temperature, tokens[:, 1:])[:, prompt_len - 1:]  # (B, m)


def sample(model, prompt: torch.Tensor, temperature: float = TEMPERATURE, **sampling):
    generator = torch.Generator().manual_seed(1)
    return model.generate(prompt, 16, temperature=temperature, generator=generator, return_logprobs=True, **sampling)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("config", CONFIGS)
def test_sampled_logprobs_equal_the_training_forward(config, precision):
    model = build(precision, **CONFIGS[config])
    prompt = torch.randint(0, 97, (4, 7))
    with compute(precision):
        tokens, logprobs = sample(model, prompt)
        expected = trainer_logprobs(model, tokens, prompt.shape[1], TEMPERATURE)
    assert tokens.shape == (4, 23) and logprobs.shape == (4, 16) and logprobs.dtype == torch.float32
    if precision == "32":
        torch.testing.assert_close(logprobs, expected, atol=FP32_TOL, rtol=0)
    else:
        beyond = (logprobs - expected).abs() > BF16_TOL.get(config, BF16_DEFAULT_TOL)  # (4, 16)
        allowed = ROUTE_FLIPS * beyond.numel() if config in ROUTED else 0
        assert beyond.sum() <= allowed, f"{config}: {(logprobs - expected).abs().max():.3g} nats apart"
    if precision == "32":  # recording leaves the sampling as it was
        generator = torch.Generator().manual_seed(1)
        assert torch.equal(model.generate(prompt, 16, temperature=TEMPERATURE, generator=generator), tokens)


def test_finished_rows_and_filtering_keep_parity():
    """Six rows through every mixer (the hybrid), with top-k / top-p filtering and an end token that some rows emit
    before the last step: each completion token up to its first end token, inclusive, has the training forward's
    log-prob under the tempered FULL distribution, and so does the end-token padding after it."""
    model = build(**CONFIGS["hybrid"])
    prompt = torch.randint(0, 97, (6, 5))
    eos = int(sample(model, prompt, top_k=10, top_p=0.9)[0][0, 7])  # what row 0 samples third
    tokens, logprobs = sample(model, prompt, top_k=10, top_p=0.9, eos_id=eos)
    completion = tokens[:, 5:]  # (6, m)
    ended = (completion == eos).cumsum(-1) > 0  # (6, m) from the first end token on
    assert ended[:, :-1].any(), "no row finished before the last step: the padding case is not exercised"
    torch.testing.assert_close(logprobs, trainer_logprobs(model, tokens, 5, TEMPERATURE), atol=FP32_TOL, rtol=0)


def test_greedy_records_the_untempered_distribution():
    model = build()
    tokens, logprobs = sample(model, torch.randint(0, 97, (2, 4)), temperature=0)
    torch.testing.assert_close(logprobs, trainer_logprobs(model, tokens, 4, 1.0), atol=FP32_TOL, rtol=0)
