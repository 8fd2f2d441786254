"""Log-probs of completion tokens: what every alignment loss is written in.

Shapes: B sequences, T positions, V vocabulary. ``logits[:, t]`` is the model's prediction for ``labels[:, t]``:
labels are already shifted (``labels[:, t] = input_ids[:, t + 1]``), and ``mask[:, t] = 1`` marks the completion
tokens that count.

    token_logprobs    log pi(labels[b, t] | ...)                         (B, T)
    sequence_logprobs sum_t mask[b, t] * token_logprobs[b, t]             (B,)
"""

from __future__ import annotations

import torch
from torch import Tensor


def token_logprobs(logits: Tensor, labels: Tensor) -> Tensor:
    """(B, T, V), (B, T) -> (B, T) log-prob of each label, computed in at least fp32 (bf16/fp16 upcast).

    Labels below 0 (e.g. -100 ignore markers) are read as token 0; mask those positions out."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    picked = logits.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked - torch.logsumexp(logits, dim=-1)  # (B, T)


def sequence_logprobs(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """(B, T, V), (B, T), (B, T) -> (B,) sum of the masked completion tokens' log-probs."""
    logp = token_logprobs(logits, labels)  # (B, T)
    return (logp * mask.to(logp.dtype)).sum(-1)
