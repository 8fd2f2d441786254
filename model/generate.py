"""Autoregressive sampling with the model's cache: one prefill over the prompt, then one token per step.

Each step turns the last logits (B, V) into a distribution: divide by `temperature` (0 = greedy), keep the
`top_k` largest (0 = all), keep the smallest set whose probability reaches `top_p` in (0, 1] (nucleus sampling,
Holtzman et al. 2019), sample; other settings are refused (`check_sampling`). A sequence that emits `eos_id` is
finished: it keeps emitting `eos_id` (so the batch stays rectangular) and generation stops when every sequence is
finished. A model whose position declares a largest position (`max_positions`, model/positions/learned.py: a table has
one; RoPE and sinusoids have none) generates at most up to it: `max_new_tokens` is capped at that context minus the
prompt (`context_room`); commands say so when they cap a user's request.

`return_logprobs=True` also returns each new token's log-probability (B, n), float32, from the step's cached logits:
log_softmax(logits / temperature) at that token, the tempered full distribution BEFORE top-k / top-p filtering. That
is the distribution a trainer scores (`token_logprobs(logits / T, labels)` over prompt + completion in one forward,
align/grpo.py, as TRL does), so the two agree up to the forward's rounding (tests/model/test_logprob_parity.py);
with filtering on, the sampler drew from the renormalised filtered distribution instead. Greedy decoding records
the untempered distribution (T = 1). A finished sequence's `eos_id` padding gets the log-probability the model gives
it there, as a forward over the padded rows does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """ValueError naming the first setting no distribution comes from (`name=value: why`)."""
    if not 0 <= temperature < math.inf:
        raise ValueError(f"temperature={temperature!r}: must be 0 (greedy) or a positive finite number")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k={top_k!r}: must be 0 (all tokens) or positive")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p!r}: must be in (0, 1] (1 = all tokens)")


def context_room(model, prompt_tokens: int) -> int | None:
    """New tokens that fit the model's context after a prompt (None: its position has no largest position)."""
    context = model.position.max_positions
    return None if context is None else max(0, context - prompt_tokens)


def filter_logits(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None) -> Tensor:
    """Logits (B, V) -> scaled logits with the excluded tokens at -inf."""
    logits = logits.float() / max(temperature, 1e-8)
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum - sorted_logits.softmax(-1) >= top_p  # mass before this token already >= p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@torch.no_grad()
def generate(model, idx: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, eos_id: int | None = None, generator: torch.Generator | None = None,
             return_logprobs: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """idx (B, T) prompt tokens, T >= 1 -> (B, T + n) with n <= max_new_tokens new tokens (and n <= the room left in
    the model's context, `context_room`); with `return_logprobs`, also their log-probabilities (B, n) float32
    (module docstring)."""
    check_sampling(temperature, top_k, top_p)
    if idx.ndim != 2 or idx.shape[1] == 0:
        raise ValueError(f"a prompt of shape {tuple(idx.shape)}: give (batch, tokens) with at least one token")
    room = context_room(model, idx.shape[1])
    max_new_tokens = max_new_tokens if room is None else min(max_new_tokens, room)
    state = model.init_state(idx.shape[0])
    logits, state = model(idx, state)
    out, finished = [idx], torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    logprobs = [torch.zeros(idx.shape[0], 0, dtype=torch.float32, device=idx.device)]  # (B, 0), then (B, 1) per step
    for _ in range(max_new_tokens):
        last = logits[:, -1, :]  # (B, V)
        if temperature == 0:
            nxt = last.argmax(-1, keepdim=True)  # (B, 1)
        else:
            probs = filter_logits(last, temperature, top_k, top_p).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
        if eos_id is not None:
            nxt = nxt.masked_fill(finished[:, None], eos_id)
            finished |= nxt[:, 0] == eos_id
        out.append(nxt)
        if return_logprobs:
            scaled = last.float() / (temperature or 1.0)  # (B, V)
            logprobs.append(scaled.gather(-1, nxt) - scaled.logsumexp(-1, keepdim=True))  # (B, 1)
        if eos_id is not None and bool(finished.all()):
            break
        logits, state = model(nxt, state)
    tokens = torch.cat(out, dim=1)  # (B, T + n)
    return (tokens, torch.cat(logprobs, dim=1)) if return_logprobs else tokens
