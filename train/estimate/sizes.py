"""A run's model as its config alone describes it, before any data is read: the one resolution of the sizes where
0 means "follow the data", and the one parameter counter.

    model.vocab_size = 0   ->  data.vocab_size, the size of the run's tokenizer: data/tokens.py trains the BPE to
                               that many tokens (fewer when a small corpus runs out of merges: rows no token uses)
                               and refuses a given tokenizer of another size. Below the byte alphabet (256 bytes
                               and <|endoftext|>) a trained tokenizer has more, which the run refuses.
    model.max_seq_len = 0  ->  data.seq_len

So the memory estimate (train/estimate/breakdown.py), `match: params` (train/ablate/param_match.py) and the run itself
(train/run.py, which also checks that its tokenizer fits) build the same model from the same config.
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from model.transformer import Transformer
from train.optim import param_groups


def model_config(cfg):
    """A copy of `cfg.model` (cfg: a run's Config) with the sizes that follow the data filled in."""
    m = copy.deepcopy(cfg.model)
    m.vocab_size = m.vocab_size or cfg.data.vocab_size
    m.max_seq_len = m.max_seq_len or cfg.data.seq_len
    return m


def count_params(m) -> dict[str, int]:
    """Parameters of the model of ModelConfig `m`, counted on the meta device (nothing allocated):
    total (a tied head counted once), non_embedding (total less the token embedding: what `match: params`
    equalises), block (the largest block), root (embeddings, head, final norm) and hidden_matrix (those in the
    hidden matrices train/optim.py tags, for an optimizer whose state differs there: Muon).

    Blocks of the same mixer are the same size, so the meta-device model holds one block per distinct mixer and the
    total multiplies each by its number of layers (`layer_counts`): counting costs the same at any depth."""
    counts = m.layer_counts()
    with torch.device("meta"):
        model = Transformer(dataclasses.replace(m, n_layers=len(counts), mixer=list(counts)))
    param_groups(model, 0.0)  # tags each parameter `_hidden_matrix` (train/optim.py)

    def numel(module, hidden_only: bool = False) -> int:
        return sum(p.numel() for p in module.parameters() if p._hidden_matrix or not hidden_only)

    def whole(hidden_only: bool = False) -> int:
        """The full model's count: the root once, each distinct block times its number of layers."""
        blocks = [numel(layer, hidden_only) for layer in model.layers]
        return numel(model, hidden_only) - sum(blocks) + sum(n * b for n, b in zip(counts.values(), blocks))

    total, blocks = whole(), [numel(layer) for layer in model.layers]
    return {"total": total, "non_embedding": total - model.embed_tokens.weight.numel(), "block": max(blocks),
            "root": numel(model) - sum(blocks), "hidden_matrix": whole(hidden_only=True)}
