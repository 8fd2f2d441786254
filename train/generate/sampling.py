"""Stories sampled from a model and its tokenizer: the prompt encoded, `model.generate` (model/generate.py), the
rows decoded. Shared by `python -m train.generate` and the samples a run writes at each validation."""

from __future__ import annotations

import torch

from data.tokenizer import eot_id


def sample_stories(model, tokenizer, prompt: str, num_samples: int = 1, max_new_tokens: int = 200,
                   temperature: float = 0.8, top_k: int | None = 50, top_p: float | None = None,
                   seed: int = 0) -> list[str]:
    """`num_samples` continuations of `prompt` (each decoded with the prompt), stopping at end-of-text."""
    device = model.embed_tokens.weight.device
    ids = torch.tensor([tokenizer.encode(prompt).ids] * num_samples, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    out = model.generate(ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                         eos_id=eot_id(tokenizer), generator=generator)
    return [tokenizer.decode(row.tolist()) for row in out]
